//! Property tests: parsers never panic, a scope set never grants more than its members, and
//! Bundle filtering never adds entries nor keeps another patient's compartment resources.

use fhirgate_policy::compartment::{in_patient_compartment, is_compartment_type};
use fhirgate_policy::scope::Perms;
use fhirgate_policy::verify::{Expect, ResponseCheck};
use fhirgate_policy::{Decision, Grant, RequestParts, ScopeSet, classify, decide, filter_bundle};
use proptest::prelude::*;
use serde_json::Value;

const SCOPES: &[&str] = &[
    "patient/Observation.rs",
    "patient/Observation.r",
    "patient/Observation.s",
    "patient/*.rs",
    "patient/Patient.read",
    "patient/Observation.cud",
    "user/Observation.rs",
    "user/*.cruds",
    "system/Condition.read",
    "patient/Observation.rs?category=laboratory",
    "user/Observation.rs?status=final",
    "patient/Medication.r",
    "patient/Observation.sr",
    "openid",
];

/// Requests that need a single (type, letter) pair, so one member must cover them.
const REQUESTS: &[(&str, &str, Option<&str>)] = &[
    ("GET", "Observation/1", None),
    ("GET", "Observation", Some("patient=123")),
    ("GET", "Observation", Some("subject=Patient/456")),
    ("GET", "Observation", None),
    ("GET", "Patient/123", None),
    ("GET", "Patient/456", None),
    ("GET", "Patient", Some("_id=123")),
    ("GET", "Patient/123/Observation", None),
    ("GET", "Condition", None),
    ("GET", "Medication/m1", None),
    ("DELETE", "Observation/1", None),
    ("DELETE", "Observation", Some("code=x")),
    ("PATCH", "Observation/1", None),
    ("GET", "_history", None),
    ("GET", "Observation/_history", None),
];

fn is_allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allow(_))
}

proptest! {
    #[test]
    fn scope_parsing_never_panics(s in "\\PC*") {
        let set = ScopeSet::parse(&s);
        let _ = set.malformed();
    }

    #[test]
    fn scope_like_strings_never_panic(s in "(patient|user|system|launch)/[A-Za-z*]{0,12}\\.[a-z*]{0,6}(\\?[a-z_=|%0-9A-F&,:.]{0,20})?") {
        let _ = ScopeSet::parse(&s);
    }

    #[test]
    fn classify_never_panics(method in "(GET|POST|PUT|HEAD|DELETE|PATCH|FOO)", path in "[A-Za-z0-9/$_.%*-]{0,40}", query in proptest::option::of("[a-z=&%0-9A-F+:|,._]{0,30}")) {
        let parts = RequestParts { method: &method, path: &path, query: query.as_deref(), ..RequestParts::default() };
        if let Ok(req) = classify(&parts) {
            let grant = Grant::new(ScopeSet::parse("patient/*.cruds user/Observation.rs"), Some("1".to_owned()));
            let _ = decide(&grant, &req);
        }
    }

    #[test]
    fn a_set_grants_no_more_than_its_members(
        picks in proptest::collection::vec(0..SCOPES.len(), 0..5),
        req_idx in 0..REQUESTS.len(),
        patient in proptest::option::of(Just("123".to_owned())),
    ) {
        let text: Vec<&str> = picks.iter().map(|i| SCOPES[*i]).collect();
        let (method, path, query) = REQUESTS[req_idx];
        let req = classify(&RequestParts { method, path, query, ..RequestParts::default() }).unwrap();
        let set = Grant::new(ScopeSet::parse(&text.join(" ")), patient.clone());
        if is_allowed(&decide(&set, &req)) {
            let some_member = text.iter().any(|s| {
                is_allowed(&decide(&Grant::new(ScopeSet::parse(s), patient.clone()), &req))
            });
            prop_assert!(some_member, "{:?} allowed {} {} but no single member does", text, method, path);
        }
    }

    #[test]
    fn filter_bundle_never_adds_or_leaks(
        entries in proptest::collection::vec((0..4usize, 0..4usize), 0..12),
        scope_idx in 0..4usize,
    ) {
        let scopes = ["patient/*.rs", "patient/Observation.rs", "patient/Patient.rs patient/Medication.r", "patient/Observation.rs?status=final"][scope_idx];
        let grant = Grant::new(ScopeSet::parse(scopes), Some("1".to_owned()));
        let check = ResponseCheck::new(&grant, Perms::R.union(Perms::S), Expect::Bundle);
        let rendered: Vec<String> = entries.iter().map(|(kind, pat)| match kind {
            0 => format!(r#"{{"resource":{{"resourceType":"Observation","status":"final","valueQuantity":{{"value":1.50}},"subject":{{"reference":"Patient/{pat}"}}}}}}"#),
            1 => format!(r#"{{"resource":{{"resourceType":"Patient","id":"{pat}"}}}}"#),
            2 => r#"{"resource":{"resourceType":"Medication","id":"m"}}"#.to_owned(),
            _ => format!(r#"{{"resource":{{"resourceType":"Condition","subject":{{"reference":"Patient/{pat}"}}}}}}"#),
        }).collect();
        let body = format!(r#"{{"resourceType":"Bundle","type":"searchset","total":9,"entry":[{}]}}"#, rendered.join(","));
        let out = filter_bundle(&check, body.as_bytes()).unwrap();
        prop_assert!(out.kept <= entries.len());
        prop_assert_eq!(out.kept + out.withheld, entries.len());
        let parsed: Value = serde_json::from_slice(&out.body).unwrap();
        let kept = parsed["entry"].as_array().cloned().unwrap_or_default();
        for e in kept {
            let r = &e["resource"];
            let ty = r["resourceType"].as_str().unwrap();
            if ty != "OperationOutcome" && is_compartment_type(ty) {
                prop_assert!(in_patient_compartment(r, "1"), "leaked {}", r);
            }
        }
        if out.unchanged {
            prop_assert_eq!(out.body, body.into_bytes());
        }
    }
}
