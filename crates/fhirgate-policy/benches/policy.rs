//! Costs on the request path: parsing a token's scope string, deciding a patient-scoped read
//! (classification and decision, the grant already built from verified claims), checking the
//! resource it returns, and checking a 20-entry searchset Bundle against the compartment.
//!
//! Run with `cargo bench -p fhirgate-policy --bench policy`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate_policy::scope::Perms;
use fhirgate_policy::verify::Expect;
use fhirgate_policy::{
    Decision, Grant, RequestParts, ResponseCheck, ScopeSet, classify, decide, filter_bundle,
    verify_resource,
};
use serde_json::{Value, json};

/// A SMART standalone-launch patient app's scopes, as an identity provider issues them.
const SCOPES: &str = "launch/patient openid fhirUser offline_access patient/Patient.r \
    patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs \
    patient/AllergyIntolerance.rs patient/Encounter.rs patient/Immunization.rs \
    patient/DiagnosticReport.rs?category=LAB user/Practitioner.r";

const PATIENT: &str = "pat-7f3a";

const LOINC: &[(&str, &str, &str, f64)] = &[
    ("8867-4", "Heart rate", "/min", 72.0),
    ("8310-5", "Body temperature", "Cel", 36.8),
    ("29463-7", "Body weight", "kg", 81.4),
    ("8302-2", "Body height", "cm", 178.0),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 97.0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 14.1),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mg/dL",
        188.0,
    ),
    ("9279-1", "Respiratory rate", "/min", 15.0),
];

/// A vital-signs or laboratory Observation of `patient`, as a FHIR server returns it.
fn observation(n: usize, patient: &str) -> Value {
    let (code, display, unit, value) = LOINC[n % LOINC.len()];
    let category = if n.is_multiple_of(3) {
        "laboratory"
    } else {
        "vital-signs"
    };
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{n:04}"),
        "meta": {
            "versionId": "1",
            "lastUpdated": "2026-11-20T09:14:03.512+00:00",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs"]
        },
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category,
            "display": category
        }] }],
        "code": {
            "coding": [{ "system": "http://loinc.org", "code": code, "display": display }],
            "text": display
        },
        "subject": { "reference": format!("Patient/{patient}") },
        "encounter": { "reference": format!("Encounter/enc-{}", n / 4) },
        "effectiveDateTime": format!("2026-11-{:02}T08:{:02}:00+00:00", 1 + n % 28, n % 60),
        "issued": "2026-11-20T09:14:03.512+00:00",
        "performer": [{ "reference": "Practitioner/prac-12", "display": "Dr. Ana Ruiz" }],
        "valueQuantity": {
            "value": value + n as f64 / 10.0,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit
        },
        "interpretation": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "N",
            "display": "Normal"
        }] }]
    })
}

/// A 20-entry searchset Bundle; entries whose index is in `others` belong to another patient.
fn searchset(others: &[usize]) -> Vec<u8> {
    let entries: Vec<Value> = (0..20)
        .map(|n| {
            let patient = if others.contains(&n) {
                "pat-9b21"
            } else {
                PATIENT
            };
            json!({
                "fullUrl": format!("https://ehr.example/fhir/Observation/obs-{n:04}"),
                "resource": observation(n, patient),
                "search": { "mode": "match" }
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": "b5d0c4a2-5d1e-4c7b-9a4c-2f6e3d8a1b90",
        "meta": { "lastUpdated": "2026-11-20T09:15:00.000+00:00" },
        "type": "searchset",
        "total": 20,
        "link": [
            { "relation": "self", "url": "https://ehr.example/fhir/Observation?_count=20" },
            { "relation": "next", "url": "https://ehr.example/fhir?_getpages=7c1e&_getpagesoffset=20&_count=20" }
        ],
        "entry": entries
    })
    .to_string()
    .into_bytes()
}

fn grant() -> Grant {
    Grant::new(ScopeSet::parse(SCOPES), Some(PATIENT.to_owned()))
}

fn bench_scope_parse(c: &mut Criterion) {
    c.bench_function("scope_parse/13_scopes", |b| {
        b.iter(|| ScopeSet::parse(black_box(SCOPES)));
    });
}

fn bench_decide_read(c: &mut Criterion) {
    let grant = grant();
    let parts = RequestParts {
        method: "GET",
        path: "Observation/obs-0007",
        query: None,
        content_type: None,
        body: None,
        if_none_exist: None,
    };
    c.bench_function("decide/patient_read", |b| {
        b.iter(|| {
            let req = classify(black_box(&parts)).expect("a read");
            let decision = decide(black_box(&grant), &req);
            assert!(matches!(decision, Decision::Allow(_)));
            decision
        });
    });

    let body = observation(7, PATIENT).to_string().into_bytes();
    let check = ResponseCheck::new(&grant, Perms::R, Expect::Resource);
    c.bench_function("verify/read_response", |b| {
        b.iter(|| verify_resource(black_box(&check), black_box(&body)).expect("covered"));
    });
}

fn bench_bundle(c: &mut Criterion) {
    let grant = grant();
    let check = ResponseCheck::new(&grant, Perms::R.union(Perms::S), Expect::Bundle);
    let all_own = searchset(&[]);
    let three_others = searchset(&[4, 11, 17]);
    let mut group = c.benchmark_group("filter_bundle");
    group.bench_function("20_entries_all_kept", |b| {
        b.iter(|| {
            let out = filter_bundle(black_box(&check), black_box(&all_own)).expect("a Bundle");
            assert_eq!(out.kept, 20);
            out
        });
    });
    group.bench_function("20_entries_3_withheld", |b| {
        b.iter(|| {
            let out = filter_bundle(black_box(&check), black_box(&three_others)).expect("a Bundle");
            assert_eq!(out.withheld, 3);
            out
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_scope_parse, bench_decide_read, bench_bundle
}
criterion_main!(benches);
