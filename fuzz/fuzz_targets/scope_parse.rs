//! `ScopeSet::parse` on arbitrary text: never panics, sorts every token into exactly one list,
//! and parsing again gives the same set.

#![no_main]

use fhirgate_policy::ScopeSet;
use fhirgate_policy::scope::{Perms, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = ScopeSet::parse(text);
    let tokens: Vec<&str> = text.split(' ').filter(|t| !t.is_empty()).collect();

    // Every token lands in exactly one list.
    let listed = set.resource_scopes().len()
        + set.malformed().len()
        + set.unsupported().len()
        + set.others().len();
    assert_eq!(listed, tokens.len(), "tokens lost or duplicated");

    // The claim forms agree: a string, a list, a list of space-joined pieces.
    assert_eq!(ScopeSet::from_list(&tokens), set);
    assert_eq!(ScopeSet::from_list([text]), set);

    // Re-parsing what was kept gives the same set.
    assert_eq!(ScopeSet::parse(&tokens.join(" ")), set);
    assert_eq!(ScopeSet::parse(&format!("  {text}  ")), set);

    for scope in set.resource_scopes() {
        assert!(
            !scope.perms.is_empty(),
            "resource scope without permissions"
        );
        assert!(tokens.contains(&scope.text.as_str()));
        assert_eq!(
            Scope::parse(&scope.text),
            Scope::Resource(scope.clone()),
            "re-parsing a scope's text changes it"
        );
        for (name, value) in &scope.params {
            assert!(
                !name.is_empty() && !value.is_empty(),
                "empty granular parameter"
            );
        }
        // The permission letters print in canonical order and read back the same.
        let letters = scope.perms.to_string();
        assert_eq!(Perms::parse(&letters), Some((scope.perms, true)));
    }
    for token in set
        .malformed()
        .iter()
        .chain(set.unsupported())
        .chain(set.others())
    {
        assert!(!token.is_empty() && !token.contains(' '));
        assert!(!matches!(Scope::parse(token), Scope::Resource(_)));
    }
});
