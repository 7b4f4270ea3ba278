use super::*;
use crate::request::{RequestParts, classify};
use crate::scope::ScopeSet;

fn run(
    scopes: &str,
    patient: Option<&str>,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Decision {
    let grant = Grant::new(ScopeSet::parse(scopes), patient.map(str::to_owned));
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let parts = RequestParts {
        method,
        path,
        query,
        content_type: body.map(|_| "application/fhir+json"),
        body: body.map(str::as_bytes),
        if_none_exist: None,
    };
    decide(&grant, &classify(&parts).unwrap())
}

fn allow(d: Decision) -> Obligations {
    match d {
        Decision::Allow(ob) => ob,
        Decision::Deny(d) => panic!("denied: {d:?}"),
    }
}

fn denial(d: Decision) -> Denial {
    match d {
        Decision::Deny(d) => d,
        Decision::Allow(ob) => panic!("allowed: {ob:?}"),
    }
}

#[test]
fn patient_search_without_criterion_is_narrowed() {
    let ob = allow(run(
        "patient/Observation.rs",
        Some("123"),
        "GET",
        "Observation",
        None,
    ));
    assert_eq!(
        ob.add_params,
        vec![("subject".to_owned(), "Patient/123".to_owned())]
    );
    assert!(ob.response_check.is_some());
    let ob = allow(run(
        "patient/Patient.rs",
        Some("123"),
        "GET",
        "Patient?name=x",
        None,
    ));
    assert_eq!(ob.add_params, vec![("_id".to_owned(), "123".to_owned())]);
    let ob = allow(run(
        "patient/Encounter.rs",
        Some("123"),
        "GET",
        "Encounter",
        None,
    ));
    assert_eq!(ob.add_params[0].0, "patient");
}

#[test]
fn patient_criteria_forms() {
    for q in [
        "subject=Patient/123",
        "subject:Patient=123",
        "patient=123",
        "subject=http://h/fhir/Patient/123",
    ] {
        let ob = allow(run(
            "patient/Observation.rs",
            Some("123"),
            "GET",
            &format!("Observation?{q}"),
            None,
        ));
        assert!(ob.add_params.is_empty(), "{q}");
        assert!(ob.response_check.is_some(), "{q}");
    }
    for q in [
        "subject=Patient/456",
        "patient=123,456",
        "subject:Patient=456",
        "performer=https://x/Patient/9",
    ] {
        let d = denial(run(
            "patient/Observation.rs",
            Some("123"),
            "GET",
            &format!("Observation?{q}"),
            None,
        ));
        assert_eq!(d.reason, DenyReason::OtherPatient, "{q}");
    }
    let d = denial(run(
        "patient/Patient.rs",
        Some("123"),
        "GET",
        "Patient?_id=456",
        None,
    ));
    assert_eq!(d.reason, DenyReason::OtherPatient);
    let d = denial(run(
        "patient/Observation.rs",
        Some("123"),
        "GET",
        "Observation?_has:Group:member:_id=1",
        None,
    ));
    assert_eq!(d.reason, DenyReason::UnenforceableQuery);
}

#[test]
fn user_scope_beats_patient_scope() {
    let ob = allow(run(
        "patient/Observation.rs user/Observation.rs",
        Some("123"),
        "GET",
        "Observation?patient=456",
        None,
    ));
    assert!(ob.is_empty());
    let ob = allow(run(
        "user/Observation.rs",
        None,
        "GET",
        "Observation?_include=Observation:performer",
        None,
    ));
    assert!(ob.response_check.is_some());
}

#[test]
fn reads_under_patient_scopes() {
    assert!(
        allow(run(
            "patient/Patient.r",
            Some("123"),
            "GET",
            "Patient/123",
            None
        ))
        .is_empty()
    );
    assert_eq!(
        denial(run(
            "patient/Patient.r",
            Some("123"),
            "GET",
            "Patient/456",
            None
        ))
        .reason,
        DenyReason::OtherPatient
    );
    let ob = allow(run(
        "patient/Observation.r",
        Some("123"),
        "GET",
        "Observation/1",
        None,
    ));
    assert_eq!(ob.response_check.unwrap().expect, Expect::Resource);
    assert!(
        allow(run(
            "patient/Medication.r",
            Some("123"),
            "GET",
            "Medication/m",
            None
        ))
        .is_empty()
    );
    assert_eq!(
        denial(run(
            "patient/Observation.rs",
            None,
            "GET",
            "Observation/1",
            None
        ))
        .reason,
        DenyReason::NoPatientContext
    );
}

#[test]
fn writes_under_patient_scopes() {
    let body = r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/123"}}"#;
    let ob = allow(run(
        "patient/Observation.u",
        Some("123"),
        "PUT",
        "Observation/o1",
        Some(body),
    ));
    assert!(ob.precheck_target && ob.response_check.is_some());
    let d = denial(run(
        "patient/Observation.u",
        Some("123"),
        "PUT",
        "Observation/o2",
        Some(body),
    ));
    assert_eq!(d.reason, DenyReason::BadRequest);
    let d = denial(run(
        "patient/Observation.rs",
        Some("123"),
        "PUT",
        "Observation/o1",
        Some(body),
    ));
    assert_eq!(d.reason, DenyReason::InsufficientScope);
    let cond = allow(run(
        "patient/Observation.d",
        Some("123"),
        "DELETE",
        "Observation?code=x",
        None,
    ));
    assert_eq!(cond.add_params[0].1, "Patient/123");
    let del = allow(run(
        "patient/Observation.d",
        Some("123"),
        "DELETE",
        "Observation/o1",
        None,
    ));
    assert!(del.precheck_target);
}

#[test]
fn granular_search_params_are_anded_in() {
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let ob = allow(run(
        &format!("user/Observation.rs?category={lab}"),
        None,
        "GET",
        "Observation",
        None,
    ));
    assert_eq!(ob.add_params, vec![("category".to_owned(), lab.to_owned())]);
    let two = "user/Observation.rs?category=a user/Observation.rs?status=final";
    let ob = allow(run(two, None, "GET", "Observation", None));
    assert!(ob.add_params.is_empty() && ob.response_check.is_some());
}

#[test]
fn operations_and_bundles() {
    assert!(allow(run("user/*.rs", None, "GET", "Patient/1/$everything", None)).is_empty());
    assert_eq!(
        denial(run(
            "patient/*.rs",
            Some("123"),
            "GET",
            "Patient/9/$everything",
            None
        ))
        .reason,
        DenyReason::OtherPatient
    );
    assert_eq!(
        denial(run(
            "user/*.*",
            None,
            "POST",
            "Patient/1/$meta-delete",
            None
        ))
        .reason,
        DenyReason::OperationNotPermitted
    );
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1"}}]}"#;
    assert!(allow(run("user/*.rs", None, "POST", "", Some(batch))).is_empty());
    let d = denial(run("patient/*.rs", Some("1"), "POST", "", Some(batch)));
    assert_eq!(d.reason, DenyReason::NotSupported);
    assert!(d.message.contains("Bundle.entry[0]"));
}

#[test]
fn narrowed_query_appends_encoded_pairs() {
    let add = vec![("subject".to_owned(), "Patient/1".to_owned())];
    assert_eq!(
        narrowed_query(Some("code=a|b"), &add),
        "code=a|b&subject=Patient%2F1"
    );
}
