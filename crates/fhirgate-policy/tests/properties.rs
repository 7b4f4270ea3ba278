//! Property tests: parsers never panic; a scope set grants exactly the union of its members
//! (never more, and everything any member grants); Bundle filtering never adds entries, keeps
//! exactly what some member's check keeps, and never keeps another patient's compartment
//! resources under `patient/` scopes.

use fhirgate_policy::compartment::{in_patient_compartment, is_compartment_type};
use fhirgate_policy::scope::{Perms, ResourceScope, Scope};
use fhirgate_policy::verify::{Expect, ResponseCheck};
use fhirgate_policy::{
    Decision, FhirRequest, Grant, Interaction, RequestParts, ScopeSet, classify, decide,
    filter_bundle,
};
use proptest::prelude::*;
use serde_json::Value;

const SCOPES: &[&str] = &[
    "patient/Observation.rs",
    "patient/Observation.r",
    "patient/Observation.s",
    "patient/*.rs",
    "patient/*.r",
    "patient/*.s",
    "patient/Patient.read",
    "patient/Observation.cud",
    "patient/Observation.u",
    "patient/Observation.cruds",
    "user/Observation.rs",
    "user/*.cruds",
    "user/*.rs",
    "system/*.rs",
    "system/Observation.rs",
    "system/Condition.read",
    "patient/Observation.rs?category=laboratory",
    "user/Observation.rs?status=final",
    "user/Observation.u?status=final",
    "user/Observation.cruds?category=laboratory",
    "patient/Medication.r",
    "patient/Practitioner.rs",
    "patient/Observation.sr",
    "user/Patient.r",
    "openid",
];

const OBS_123: &str = r#"{"resourceType":"Observation","id":"1","status":"final","subject":{"reference":"Patient/123"}}"#;
const OBS_NEW: &str =
    r#"{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/123"}}"#;
const PATCH_STATUS: &str = r#"[{"op":"replace","path":"/status","value":"amended"}]"#;
const PATCH_SUBJECT: &str = r#"[{"op":"replace","path":"/subject/reference","value":"Patient/9"}]"#;
const BATCH: &str = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/123"}},{"request":{"method":"GET","url":"Medication/m1"}},{"request":{"method":"DELETE","url":"Observation/1"}}]}"#;

/// (method, path, query, content type, body, If-None-Exist).
type Req = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

const fn get(path: &'static str, query: Option<&'static str>) -> Req {
    ("GET", path, query, None, None, None)
}

const JSON: Option<&str> = Some("application/fhir+json");
const JSON_PATCH: Option<&str> = Some("application/json-patch+json");

const REQUESTS: &[Req] = &[
    get("Observation/1", None),
    get("Observation/1/_history/2", None),
    get("Observation/1/_history", None),
    get("Observation", Some("patient=123")),
    get("Observation", Some("subject=Patient/456")),
    get("Observation", None),
    get("Observation", Some("subject.name=x")),
    get(
        "Observation",
        Some("patient=123&_include=Observation:subject:Patient"),
    ),
    get(
        "Observation",
        Some("patient=123&_include=Observation:subject"),
    ),
    get("Patient", Some("_id=123&_revinclude=Observation:subject")),
    get("Patient", Some("_id=123&_revinclude=*")),
    get("Patient/123", None),
    get("Patient/456", None),
    get("Patient", Some("_id=123")),
    get("Patient/123/Observation", None),
    get("Patient/456/Observation", None),
    get("Patient/123/*", None),
    get("Condition", None),
    get("Medication/m1", None),
    get("_history", None),
    get("Observation/_history", None),
    get("", Some("_type=Observation")),
    get("", Some("_type=Observation,Patient")),
    get("", Some("_getpages=abc")),
    get("Patient/123/$everything", None),
    get("Patient/456/$everything", None),
    get("$export", Some("_type=Observation")),
    get("$export", None),
    get("Patient/123/$graphql", Some("query=x")),
    ("DELETE", "Observation/1", None, None, None, None),
    ("DELETE", "Observation", Some("code=x"), None, None, None),
    (
        "DELETE",
        "Observation",
        Some("patient=123&code=x"),
        None,
        None,
        None,
    ),
    ("PUT", "Observation/1", None, JSON, Some(OBS_123), None),
    (
        "PUT",
        "Observation",
        Some("patient=123&identifier=a|1"),
        JSON,
        Some(OBS_NEW),
        None,
    ),
    ("POST", "Observation", None, JSON, Some(OBS_NEW), None),
    (
        "POST",
        "Observation",
        None,
        JSON,
        Some(OBS_NEW),
        Some("identifier=a|1"),
    ),
    (
        "PATCH",
        "Observation/1",
        None,
        JSON_PATCH,
        Some(PATCH_STATUS),
        None,
    ),
    (
        "PATCH",
        "Observation/1",
        None,
        JSON_PATCH,
        Some(PATCH_SUBJECT),
        None,
    ),
    ("POST", "", None, JSON, Some(BATCH), None),
];

fn classify_req(r: &Req) -> FhirRequest {
    let (method, path, query, content_type, body, if_none_exist) = *r;
    classify(&RequestParts {
        method,
        path,
        query,
        content_type,
        body: body.map(str::as_bytes),
        if_none_exist,
    })
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn is_allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allow(_))
}

fn allowed_plainly(d: &Decision) -> bool {
    matches!(d, Decision::Allow(ob) if ob.is_empty())
}

/// The set's members with scope equivalence applied: scopes that differ only in their letters
/// are one scope holding the union of the letters (`Observation.r` + `Observation.s` ==
/// `Observation.rs`).
fn merged_members(texts: &[&str]) -> Vec<ResourceScope> {
    let mut out: Vec<ResourceScope> = Vec::new();
    for text in texts.iter().flat_map(|t| t.split(' ')) {
        let Scope::Resource(scope) = Scope::parse(text) else {
            continue;
        };
        match out.iter_mut().find(|m| {
            m.context == scope.context
                && m.resource_type == scope.resource_type
                && m.params == scope.params
        }) {
            Some(m) => m.perms = m.perms.union(scope.perms),
            None => out.push(scope),
        }
    }
    out
}

fn member_grants(texts: &[&str], patient: &Option<String>) -> Vec<Grant> {
    merged_members(texts)
        .into_iter()
        .map(|s| Grant::new(ScopeSet::single(s), patient.clone()))
        .collect()
}

/// The types a search's includes can return, as far as these tests' requests go (`*` for the
/// forms that can return several types).
fn included_types(req: &FhirRequest) -> Vec<String> {
    req.params
        .iter()
        .filter_map(|(name, value)| {
            let parts: Vec<&str> = value.split(':').collect();
            match (name.split(':').next(), parts.as_slice()) {
                (Some("_revinclude"), [source, _, ..]) => Some((*source).to_owned()),
                (Some("_include"), [_, _, target]) => Some((*target).to_owned()),
                (Some("_include" | "_revinclude"), _) => Some("*".to_owned()),
                _ => None,
            }
        })
        .collect()
}

/// Does some member read (`r` or `s`) every resource of `ty` (`*`: of every type)?
fn member_reads(members: &[Grant], ty: &str) -> bool {
    members.iter().any(|m| {
        m.scopes.resource_scopes().iter().any(|s| {
            let type_ok = if ty == "*" {
                s.resource_type == fhirgate_policy::scope::TypeSel::Any
            } else {
                s.resource_type.covers(ty)
            };
            let context_ok =
                s.context != fhirgate_policy::scope::Context::Patient || m.patient.is_some();
            type_ok && context_ok && s.perms.intersects(Perms::R.union(Perms::S))
        })
    })
}

/// The parts a request decomposes into, each of which one member must allow on its own:
/// a Bundle's entries (plainly, as the Bundle rule needs), a system search's `_type` list,
/// a search without its includes (the included types are checked with `member_reads`).
fn parts_of(req: &FhirRequest) -> Vec<(FhirRequest, bool)> {
    if !included_types(req).is_empty() {
        let mut plain = req.clone();
        plain
            .params
            .retain(|(n, _)| !n.starts_with("_include") && !n.starts_with("_revinclude"));
        return parts_of(&plain);
    }
    if matches!(
        req.interaction,
        Interaction::Batch | Interaction::Transaction
    ) {
        return req.entries.iter().map(|e| (e.clone(), true)).collect();
    }
    if req.interaction == Interaction::SearchSystem
        && let Some(types) = req.param("_type")
    {
        return types
            .split(',')
            .map(|t| {
                let mut one = req.clone();
                one.params = vec![("_type".to_owned(), t.to_owned())];
                (one, false)
            })
            .collect();
    }
    vec![(req.clone(), false)]
}

proptest! {
    #[test]
    fn scope_parsing_never_panics(s in "\\PC*") {
        let set = ScopeSet::parse(&s);
        let _ = set.malformed();
    }

    #[test]
    fn scope_lists_never_panic(items in proptest::collection::vec("\\PC{0,40}", 0..6)) {
        let _ = ScopeSet::from_list(&items);
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
        let texts: Vec<&str> = picks.iter().map(|i| SCOPES[*i]).collect();
        let req = classify_req(&REQUESTS[req_idx]);
        let set = Grant::new(ScopeSet::parse(&texts.join(" ")), patient.clone());
        if is_allowed(&decide(&set, &req)) {
            let members = member_grants(&texts, &patient);
            for (part, plainly) in parts_of(&req) {
                let covered = members.iter().any(|m| {
                    let d = decide(m, &part);
                    if plainly { allowed_plainly(&d) } else { is_allowed(&d) }
                });
                prop_assert!(covered, "{:?} allowed {:?} but no member allows {:?}", texts, REQUESTS[req_idx], part.interaction);
            }
            for ty in included_types(&req) {
                prop_assert!(member_reads(&members, &ty), "{:?} allowed an include of {} no member reads", texts, ty);
            }
        }
    }

    #[test]
    fn a_set_grants_everything_a_member_grants(
        picks in proptest::collection::vec(0..SCOPES.len(), 1..5),
        req_idx in 0..REQUESTS.len(),
        patient in proptest::option::of(Just("123".to_owned())),
    ) {
        let texts: Vec<&str> = picks.iter().map(|i| SCOPES[*i]).collect();
        let req = classify_req(&REQUESTS[req_idx]);
        let member_allows = texts.iter().any(|t| {
            is_allowed(&decide(&Grant::new(ScopeSet::parse(t), patient.clone()), &req))
        });
        if member_allows {
            let set = Grant::new(ScopeSet::parse(&texts.join(" ")), patient.clone());
            prop_assert!(is_allowed(&decide(&set, &req)), "{:?} refuses {:?} that a member allows", texts, REQUESTS[req_idx]);
        }
    }

    #[test]
    fn filter_bundle_never_adds_or_leaks(
        entries in proptest::collection::vec((0..5usize, 0..4usize, 0..6usize), 0..12),
        picks in proptest::collection::vec(0..6usize, 1..4),
    ) {
        let pool = [
            "patient/*.rs",
            "patient/Observation.rs",
            "patient/Patient.rs patient/Medication.r",
            "patient/Observation.rs?status=final",
            "patient/Condition.s",
            "patient/Practitioner.r",
        ];
        let texts: Vec<&str> = picks.iter().map(|i| pool[*i]).collect();
        let patient = Some("1".to_owned());
        let grant = Grant::new(ScopeSet::parse(&texts.join(" ")), patient.clone());
        let check = ResponseCheck::new(&grant, Perms::R.union(Perms::S), Expect::Bundle);
        let rendered: Vec<String> = entries.iter().map(|(kind, pat, form)| {
            let reference = match form {
                0 => format!("Patient/{pat}"),
                1 => format!("https://gw.test/fhir/Patient/{pat}"),
                2 => format!("Patient/{pat}/_history/3"),
                3 => format!("#{pat}"),
                4 => format!("urn:uuid:{pat}"),
                _ => String::new(),
            };
            let subject = if reference.is_empty() {
                format!(r#"{{"identifier":{{"value":"{pat}"}}}}"#)
            } else {
                format!(r#"{{"reference":"{reference}"}}"#)
            };
            match kind {
                0 => format!(r#"{{"resource":{{"resourceType":"Observation","status":"final","valueQuantity":{{"value":1.50}},"subject":{subject}}}}}"#),
                1 => format!(r#"{{"resource":{{"resourceType":"Patient","id":"{pat}"}}}}"#),
                2 => r#"{"resource":{"resourceType":"Medication","id":"m"}}"#.to_owned(),
                3 => r#"{"resource":{"resourceType":"Practitioner","id":"p"}}"#.to_owned(),
                _ => format!(r#"{{"resource":{{"resourceType":"Condition","subject":{subject}}}}}"#),
            }
        }).collect();
        let body = format!(r#"{{"resourceType":"Bundle","type":"searchset","total":9,"entry":[{}]}}"#, rendered.join(","));
        let out = filter_bundle(&check, body.as_bytes()).unwrap();
        prop_assert_eq!(out.kept + out.withheld, entries.len());
        let parsed: Value = serde_json::from_slice(&out.body).unwrap();
        let kept = parsed["entry"].as_array().cloned().unwrap_or_default();
        let extra = usize::from(out.withheld > 0);
        prop_assert_eq!(kept.len(), out.kept + extra, "entries added");
        let members: Vec<ResponseCheck> = member_grants(&texts, &patient)
            .iter()
            .map(|g| ResponseCheck::new(g, Perms::R.union(Perms::S), Expect::Bundle))
            .collect();
        for e in &kept {
            let r = &e["resource"];
            let ty = r["resourceType"].as_str().unwrap();
            if ty == "OperationOutcome" {
                continue;
            }
            if is_compartment_type(ty) {
                prop_assert!(in_patient_compartment(r, "1"), "leaked {}", r);
            }
            prop_assert!(members.iter().any(|m| m.covers(r)), "kept {} that no member covers", r);
        }
        let member_kept = rendered
            .iter()
            .filter(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                members.iter().any(|m| m.covers(&v["resource"]))
            })
            .count();
        prop_assert_eq!(out.kept, member_kept, "the set keeps what its members keep");
        if out.unchanged {
            prop_assert_eq!(out.body, body.into_bytes());
        }
    }
}
