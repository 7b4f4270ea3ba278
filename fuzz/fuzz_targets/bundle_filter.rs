//! `filter_bundle` and `verify_resource` on arbitrary bytes under every fixed grant: never
//! panic, never add an entry, never let an uncovered resource through.

#![no_main]

use fhirgate_fuzz::{GRANTS, assert_bundle_invariants};
use fhirgate_policy::ResponseCheck;
use fhirgate_policy::scope::Perms;
use fhirgate_policy::verify::Expect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let grant = &GRANTS[usize::from(selector) % GRANTS.len()];
    let perms = if selector & 0x80 == 0 {
        Perms::R
    } else {
        Perms::R.union(Perms::S)
    };
    let check = ResponseCheck::new(grant, perms, Expect::Bundle);
    let result = fhirgate_policy::filter_bundle(&check, body);
    assert_bundle_invariants(&check, body, &result);
    let single = ResponseCheck::new(grant, perms, Expect::Resource);
    fhirgate_fuzz::run_check(&single, body);
});
