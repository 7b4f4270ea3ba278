//! Shared pieces of the fuzz targets: fixed grants, synthetic FHIR resources built from fuzz
//! input, and the invariants every response check must keep.

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fhirgate::token::{Binding, ClaimMapping, Identity, purpose};
use fhirgate_policy::verify::Expect;
use fhirgate_policy::{FilteredBundle, Grant, ResponseCheck, ScopeSet, VerifyError};
use serde_json::{Map, Value, json};

/// The context patient of the fixed grants.
pub const PATIENT: &str = "p1";

/// Grants the request target decides against: patient-scoped (v1, v2, granular), user, system,
/// a patient scope without context, and no data scope at all (always last).
pub static GRANTS: LazyLock<Vec<Grant>> = LazyLock::new(|| {
    let grant = |scopes: &str, patient: Option<&str>| {
        Grant::new(ScopeSet::parse(scopes), patient.map(str::to_owned))
    };
    vec![
        grant(
            "launch/patient openid fhirUser patient/*.read",
            Some(PATIENT),
        ),
        grant(
            "patient/Patient.r patient/Observation.rs?category=laboratory \
             patient/Condition.cruds patient/Encounter.rs",
            Some(PATIENT),
        ),
        grant("patient/*.cruds", Some(PATIENT)),
        grant(
            "user/Observation.rs?code=http://loinc.org|1234-5 user/Patient.read user/Practitioner.r",
            None,
        ),
        grant("system/*.rs", None),
        grant("patient/*.rs", None),
        grant("openid fhirUser launch", Some(PATIENT)),
    ]
});

/// Resource types of synthetic resources.
const TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "Practitioner",
    "Organization",
    "AllergyIntolerance",
    "OperationOutcome",
    "Bundle",
    "Group",
    "Binary",
];

/// How a synthetic resource points at a patient.
#[derive(Arbitrary, Debug)]
pub enum PatientRef<'a> {
    None,
    Own,
    Other,
    AbsoluteOwn,
    VersionedOwn,
    Contained,
    IdentifierOnly,
    Raw(&'a str),
}

/// A FHIR resource described by fuzz input.
#[derive(Arbitrary, Debug)]
pub struct SynthResource<'a> {
    pub type_index: u8,
    pub id: &'a str,
    pub subject: PatientRef<'a>,
    pub patient_field: PatientRef<'a>,
    pub category: Option<&'a str>,
    pub code: Option<(&'a str, &'a str)>,
    pub extra_member: Option<(&'a str, &'a str)>,
}

fn reference(r: &PatientRef<'_>) -> Option<Value> {
    Some(match r {
        PatientRef::None => return None,
        PatientRef::Own => json!({ "reference": format!("Patient/{PATIENT}") }),
        PatientRef::Other => json!({ "reference": "Patient/p2" }),
        PatientRef::AbsoluteOwn => {
            json!({ "reference": format!("https://ehr.example/fhir/Patient/{PATIENT}") })
        }
        PatientRef::VersionedOwn => {
            json!({ "reference": format!("Patient/{PATIENT}/_history/3") })
        }
        PatientRef::Contained => json!({ "reference": "#p" }),
        PatientRef::IdentifierOnly => {
            json!({ "identifier": { "system": "urn:mrn", "value": PATIENT } })
        }
        PatientRef::Raw(text) => json!({ "reference": text }),
    })
}

impl SynthResource<'_> {
    /// The resource as JSON.
    pub fn to_value(&self) -> Value {
        let ty = TYPES[usize::from(self.type_index) % TYPES.len()];
        let mut map = serde_json::Map::new();
        map.insert("resourceType".into(), ty.into());
        map.insert("id".into(), self.id.into());
        if let Some(subject) = reference(&self.subject) {
            map.insert("subject".into(), subject);
        }
        if let Some(patient) = reference(&self.patient_field) {
            map.insert("patient".into(), patient);
        }
        if let Some(category) = self.category {
            map.insert(
                "category".into(),
                json!([{ "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": category
                }] }]),
            );
        }
        if let Some((system, code)) = self.code {
            map.insert(
                "code".into(),
                json!({ "coding": [{ "system": system, "code": code }] }),
            );
        }
        if let Some((key, value)) = self.extra_member {
            map.entry(key.to_owned()).or_insert_with(|| value.into());
        }
        Value::Object(map)
    }
}

/// A body described by fuzz input: raw bytes, one resource, or a searchset Bundle.
#[derive(Arbitrary, Debug)]
pub enum SynthBody<'a> {
    Raw(&'a [u8]),
    Resource(SynthResource<'a>),
    Bundle {
        entries: Vec<(SynthResource<'a>, bool)>,
        total: Option<u32>,
    },
}

impl SynthBody<'_> {
    /// The body bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Raw(bytes) => bytes.to_vec(),
            Self::Resource(r) => r.to_value().to_string().into_bytes(),
            Self::Bundle { entries, total } => {
                let entries: Vec<Value> = entries
                    .iter()
                    .map(|(r, outcome)| {
                        let mode = if *outcome { "outcome" } else { "match" };
                        json!({ "resource": r.to_value(), "search": { "mode": mode } })
                    })
                    .collect();
                let mut bundle =
                    json!({ "resourceType": "Bundle", "type": "searchset", "entry": entries });
                if let Some(total) = total {
                    bundle["total"] = (*total).into();
                }
                bundle.to_string().into_bytes()
            }
        }
    }
}

/// A body the checks accepted, as a `Value`; `None` only when it holds a number beyond the
/// range of `f64`, which is JSON but which serde_json keeps in no `Value` (the checks read
/// only the members they need and pass the body on untouched).
fn accepted_json(body: &[u8]) -> Option<Value> {
    match serde_json::from_slice(body) {
        Ok(value) => Some(value),
        Err(error) if error.to_string().starts_with("number out of range") => None,
        Err(error) => panic!("an accepted body is not JSON: {error}"),
    }
}

/// Runs `check` on `body` the way the proxy does and asserts the check's invariants.
pub fn run_check(check: &ResponseCheck, body: &[u8]) {
    match check.expect {
        Expect::Resource => {
            if fhirgate_policy::verify_resource(check, body).is_ok() {
                let Some(value) = accepted_json(body) else {
                    return;
                };
                let ty = value["resourceType"]
                    .as_str()
                    .expect("accepted body has a type");
                assert!(
                    ty == "OperationOutcome" || check.covers(&value),
                    "verify_resource let an uncovered {ty} through"
                );
            }
        }
        Expect::Bundle => {
            let result = fhirgate_policy::filter_bundle(check, body);
            assert_bundle_invariants(check, body, &result);
        }
    }
}

/// What must hold for every `filter_bundle` result.
pub fn assert_bundle_invariants(
    check: &ResponseCheck,
    body: &[u8],
    result: &Result<FilteredBundle, VerifyError>,
) {
    let Ok(filtered) = result else {
        return;
    };
    if filtered.unchanged {
        assert_eq!(filtered.body, body, "unchanged bundle was altered");
        assert_eq!(filtered.withheld, 0);
    } else {
        assert!(filtered.withheld > 0, "changed bundle withheld nothing");
    }
    let Some(input) = accepted_json(body) else {
        return;
    };
    if input["resourceType"] == "OperationOutcome" {
        assert!(filtered.unchanged, "an OperationOutcome was changed");
        return;
    }
    let out: Value = serde_json::from_slice(&filtered.body).expect("filtered bundle is JSON");
    assert_eq!(out["resourceType"], "Bundle");
    let in_entries = input["entry"].as_array().map_or(0, Vec::len);
    assert_eq!(
        filtered.kept + filtered.withheld,
        in_entries,
        "kept + withheld is not the number of entries"
    );
    let out_entries = out["entry"].as_array().map_or(&[][..], Vec::as_slice);
    let suppressed = usize::from(!filtered.unchanged);
    assert_eq!(out_entries.len(), filtered.kept + suppressed, "entry count");
    if !filtered.unchanged {
        assert!(out.get("total").is_none(), "total kept after withholding");
    }
    for entry in out_entries {
        let resource = &entry["resource"];
        let outcome =
            entry["search"]["mode"] == "outcome" && resource["resourceType"] == "OperationOutcome";
        assert!(
            outcome || check.covers(resource),
            "filter_bundle let an uncovered entry through: {entry}"
        );
    }
}

/// Claim mappings the token targets normalise with: the default, an Okta-style mapping
/// (`scp`, `cid`, a custom patient claim), one naming the same claim for several roles, and
/// one that reads nothing.
pub static MAPPINGS: LazyLock<Vec<ClaimMapping>> = LazyLock::new(|| {
    let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let none = ClaimMapping {
        scope: Vec::new(),
        patient: Vec::new(),
        fhir_user: Vec::new(),
        client_id: Vec::new(),
        subject: Vec::new(),
        encounter: Vec::new(),
        fhir_context: Vec::new(),
        purpose_of_use: Vec::new(),
    };
    vec![
        ClaimMapping::default(),
        ClaimMapping {
            scope: names(&["scp"]),
            patient: names(&["launch_patient", "patient"]),
            client_id: names(&["cid"]),
            purpose_of_use: names(&["pou", "purpose_of_use"]),
            ..ClaimMapping::default()
        },
        ClaimMapping {
            scope: names(&["ctx", "scope"]),
            patient: names(&["ctx", "sub"]),
            encounter: names(&["ctx"]),
            fhir_user: names(&["sub"]),
            fhir_context: names(&["ctx"]),
            purpose_of_use: names(&["ctx"]),
            ..ClaimMapping::default()
        },
        none,
    ]
});

/// The first of `names` whose claim is a string.
fn first_text<'c>(claims: &'c Map<String, Value>, names: &[String]) -> Option<&'c str> {
    names
        .iter()
        .find_map(|name| claims.get(name).and_then(Value::as_str))
}

/// Every string in `value`, an array's or an object's members included (one level deep).
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => vec![text],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(members) => members.values().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// What a context id (`patient`, `encounter`) read from `claim` must be: absent when the
/// claim holds no string, a valid id the claim ends with otherwise, and the claim itself
/// when it is already a plain id.
fn assert_context_id(id: Option<&str>, claim: Option<&str>, resource_type: &str) {
    let plain = |text: &str| {
        (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    match (id, claim) {
        (Some(id), None) => panic!("{resource_type} {id:?} invented from no claim"),
        (Some(id), Some(claim)) => {
            assert!(plain(id), "{resource_type} {id:?} is not a plain id");
            assert!(
                claim == id || claim.ends_with(&format!("{resource_type}/{id}")),
                "{resource_type} {id:?} is not what the claim {claim:?} names"
            );
        }
        (None, Some(claim)) => assert!(
            !plain(claim),
            "the plain {resource_type} id {claim:?} was dropped"
        ),
        (None, None) => {}
    }
}

/// What `Identity::from_claims` must make of `claims` under `mapping`: nothing the named
/// claims do not say, a grant that is the caller's own, and malformed claims read as absent.
pub fn assert_identity(identity: &Identity, claims: &Map<String, Value>, mapping: &ClaimMapping) {
    let caller = &identity.caller;
    assert_context_id(
        caller.patient.as_deref(),
        first_text(claims, &mapping.patient),
        "Patient",
    );
    assert_context_id(
        caller.encounter.as_deref(),
        first_text(claims, &mapping.encounter),
        "Encounter",
    );
    assert_eq!(
        caller.subject.as_deref(),
        first_text(claims, &mapping.subject)
    );
    assert_eq!(
        caller.client_id.as_deref(),
        first_text(claims, &mapping.client_id)
    );
    assert_eq!(
        caller.fhir_user.as_deref(),
        first_text(claims, &mapping.fhir_user)
    );

    // The grant is the caller's: its scopes and its context, nothing else.
    assert_eq!(
        *identity.grant,
        caller.grant(),
        "grant differs from the caller's"
    );
    assert_eq!(identity.grant.patient, caller.patient);
    assert_eq!(identity.grant.encounter, caller.encounter);
    assert_eq!(identity.grant.fhir_user, caller.fhir_user);
    // Every scope granted is a word of a scope claim the mapping names.
    let words: Vec<&str> = mapping
        .scope
        .iter()
        .filter_map(|name| claims.get(name))
        .flat_map(strings)
        .flat_map(|text| text.split(' '))
        .collect();
    for scope in identity.grant.scopes.resource_scopes() {
        assert!(
            words.contains(&scope.text.as_str()),
            "scope {:?} invented",
            scope.text
        );
    }
    if let Some(scope) = &caller.scope {
        assert!(
            mapping
                .scope
                .iter()
                .filter_map(|name| claims.get(name))
                .any(|value| match value {
                    Value::String(text) => text == scope,
                    Value::Array(items) => {
                        items.iter().all(Value::is_string) && strings(value).join(" ") == *scope
                    }
                    _ => false,
                }),
            "scope {scope:?} is no named claim's string or list of strings"
        );
    }

    // fhirContext: the first named claim present, as compact JSON, unless null.
    let context = mapping
        .fhir_context
        .iter()
        .find_map(|name| claims.get(name));
    match (&caller.fhir_context, context) {
        (Some(text), Some(value)) => {
            let read: Value = serde_json::from_str(text).expect("fhirContext is JSON");
            assert_eq!(&read, value, "fhirContext changed");
        }
        (None, Some(value)) => assert!(value.is_null(), "fhirContext {value} dropped"),
        (Some(text), None) => panic!("fhirContext {text} invented"),
        (None, None) => {}
    }

    // Purposes of use: codes, each once, at most MAX_PURPOSES, all from the named claim.
    let purposes = &caller.purposes_of_use;
    assert!(purposes.len() <= purpose::MAX_PURPOSES);
    let source = mapping
        .purpose_of_use
        .iter()
        .find_map(|name| claims.get(name))
        .map(strings)
        .unwrap_or_default();
    for (index, code) in purposes.iter().enumerate() {
        assert!(purpose::is_code(code), "purpose of use {code:?} is no code");
        assert!(!purposes[..index].contains(code), "purpose {code:?} twice");
        assert!(
            source.iter().any(|text| text.contains(code.as_str())),
            "purpose {code:?} invented"
        );
    }

    // The binding is what `cnf` says, and unbound only without `cnf`.
    let cnf = claims.get("cnf");
    let member = |name: &str| cnf.and_then(|c| c.get(name)).and_then(Value::as_str);
    match &caller.binding {
        Binding::Unbound => assert!(cnf.is_none(), "a cnf claim left the token unbound"),
        Binding::Dpop(jkt) => {
            assert_eq!(Some(jkt.as_str()), member("jkt"));
            assert_eq!(member("x5t#S256"), None);
        }
        Binding::Certificate(x5t) => {
            assert_eq!(Some(x5t.as_str()), member("x5t#S256"));
            assert_eq!(member("jkt"), None);
        }
        Binding::Unsupported => assert!(cnf.is_some()),
    }

    assert_eq!(
        identity.token_id.as_deref(),
        claims.get("jti").and_then(Value::as_str)
    );
    assert_eq!(
        identity.expires_at,
        claims.get("exp").and_then(Value::as_f64)
    );
}
