//! Shared pieces of the fuzz targets: fixed grants, synthetic FHIR resources built from fuzz
//! input, and the invariants every response check must keep.

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fhirgate_policy::verify::Expect;
use fhirgate_policy::{FilteredBundle, Grant, ResponseCheck, ScopeSet, VerifyError};
use serde_json::{Value, json};

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

/// Runs `check` on `body` the way the proxy does and asserts the check's invariants.
pub fn run_check(check: &ResponseCheck, body: &[u8]) {
    match check.expect {
        Expect::Resource => {
            if fhirgate_policy::verify_resource(check, body).is_ok() {
                let value: Value = serde_json::from_slice(body).expect("accepted body is JSON");
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
    let input: Value = serde_json::from_slice(body).expect("accepted bundle is JSON");
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
