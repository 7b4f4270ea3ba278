use super::*;
use crate::decision::denial;
use crate::options::{BatchRefusal, ReadRefusal};
use crate::request::{RequestParts, classify_with};
use crate::scope::ScopeSet;

/// Reads and searches on every type: the default emergency.
fn reads() -> Emergency {
    Emergency {
        permissions: Perms::R.union(Perms::S),
        resource_types: Vec::new(),
    }
}

fn grant(scopes: &str, patient: Option<&str>) -> Grant {
    Grant::new(ScopeSet::parse(scopes), patient.map(str::to_owned))
}

fn request(method: &str, url: &str, body: Option<&str>, options: &PolicyOptions) -> FhirRequest {
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
    classify_with(&parts, options).unwrap()
}

/// The ordinary decision for `scopes`, then break-the-glass on it.
fn attempt(
    scopes: &str,
    patient: Option<&str>,
    method: &str,
    url: &str,
    body: Option<&str>,
    options: &PolicyOptions,
    emergency: &Emergency,
) -> Result<Obligations, Unbroken> {
    let grant = grant(scopes, patient);
    let request = request(method, url, body, options);
    let decision = decide_with(&grant, &request, options);
    decide(&grant, &request, &decision, options, emergency)
}

fn get(scopes: &str, url: &str) -> Result<Obligations, Unbroken> {
    let options = PolicyOptions::default();
    attempt(scopes, None, "GET", url, None, &options, &reads())
}

const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;

#[test]
fn a_user_token_reads_what_its_scopes_do_not_cover() {
    let ob = get("openid fhirUser user/Patient.rs", "Observation/o1").unwrap();
    assert_eq!(ob.rule, RULE);
    assert_eq!(ob.scope.as_deref(), Some("user/*.rs"));
    assert!(ob.is_empty(), "{ob:?}");
    let ob = get("user/Patient.rs", "Observation?patient=p1").unwrap();
    assert_eq!(ob.rule, RULE);
}

#[test]
fn the_emergency_grants_only_its_letters() {
    let options = PolicyOptions::default();
    let write = attempt(
        "user/Patient.rs",
        None,
        "PUT",
        "Observation/o1",
        Some(OBSERVATION),
        &options,
        &reads(),
    );
    assert_eq!(write, Err(Unbroken::StillRefused));
    let delete = attempt(
        "user/Patient.rs",
        None,
        "DELETE",
        "Observation/o1",
        None,
        &options,
        &reads(),
    );
    assert_eq!(delete, Err(Unbroken::StillRefused));
    let read_only = Emergency {
        permissions: Perms::R,
        resource_types: Vec::new(),
    };
    let search = attempt(
        "user/Patient.rs",
        None,
        "GET",
        "Observation?patient=p1",
        None,
        &options,
        &read_only,
    );
    assert_eq!(search, Err(Unbroken::StillRefused));
    let writes = Emergency {
        permissions: Perms::C.union(Perms::R).union(Perms::U),
        resource_types: Vec::new(),
    };
    let update = attempt(
        "user/Patient.rs",
        None,
        "PUT",
        "Observation/o1",
        Some(OBSERVATION),
        &options,
        &writes,
    );
    assert_eq!(update.unwrap().rule, RULE);
}

#[test]
fn the_emergency_grants_only_its_types() {
    let options = PolicyOptions::default();
    let observations = Emergency {
        resource_types: vec!["Observation".into()],
        ..reads()
    };
    let run = |url: &str| {
        attempt(
            "user/Patient.rs",
            None,
            "GET",
            url,
            None,
            &options,
            &observations,
        )
    };
    let ob = run("Observation/o1").unwrap();
    assert_eq!(ob.scope.as_deref(), Some("user/Observation.rs"));
    assert_eq!(run("Condition/c1"), Err(Unbroken::StillRefused));
    // Included resources of a type outside the emergency are refused like any other.
    assert_eq!(
        run("Observation?_include=Observation:performer"),
        Err(Unbroken::StillRefused)
    );
    assert_eq!(
        run("Observation?patient=p1&_include=Observation:subject:Patient").map(|ob| ob.rule),
        Ok(RULE)
    );
}

#[test]
fn patient_and_system_tokens_never_break_the_glass() {
    let options = PolicyOptions::default();
    let patient = attempt(
        "launch/patient patient/Patient.rs",
        Some("p1"),
        "GET",
        "Observation?patient=p1",
        None,
        &options,
        &reads(),
    );
    assert_eq!(patient, Err(Unbroken::NotUserToken));
    assert_eq!(
        get("system/Patient.rs", "Observation/o1"),
        Err(Unbroken::NotUserToken)
    );
    assert_eq!(
        get("user/Patient.rs patient/Condition.rs", "Observation/o1"),
        Err(Unbroken::NotUserToken)
    );
    assert_eq!(
        get("user/Patient.rs system/Condition.rs", "Observation/o1"),
        Err(Unbroken::NotUserToken)
    );
    // No resource scope at all is no user's token either.
    assert_eq!(
        get("openid fhirUser", "Observation/o1"),
        Err(Unbroken::NotUserToken)
    );
    // A patient app granted user/ scopes: a launch patient, or a user who is a Patient.
    let options = PolicyOptions::default();
    let launched = attempt(
        "launch/patient user/Patient.rs",
        Some("p1"),
        "GET",
        "Observation?patient=p2",
        None,
        &options,
        &reads(),
    );
    assert_eq!(launched, Err(Unbroken::NotUserToken));
    for user in ["Patient/p1", "https://ehr.example/fhir/RelatedPerson/r1"] {
        let grant = grant("user/Patient.rs", None).with_context(None, Some(user.to_owned()));
        let req = request("GET", "Observation/o1", None, &options);
        let decision = decide_with(&grant, &req, &options);
        assert_eq!(
            decide(&grant, &req, &decision, &options, &reads()),
            Err(Unbroken::NotUserToken),
            "{user}"
        );
    }
}

#[test]
fn operations_are_never_opened() {
    assert_eq!(
        get("user/Patient.rs", "Patient/p1/$everything"),
        Err(Unbroken::Operation)
    );
    let options = PolicyOptions::default();
    let bundle = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Observation/o1"}},
        {"request":{"method":"GET","url":"Patient/p1/$everything"}}]}"#;
    let batch = attempt(
        "user/Patient.rs",
        None,
        "POST",
        "",
        Some(bundle),
        &options,
        &reads(),
    );
    assert_eq!(batch, Err(Unbroken::Operation));
}

#[test]
fn only_refusals_for_missing_scope_are_reopened() {
    let grant = grant("user/Patient.rs", None);
    let options = PolicyOptions::default();
    let request = request("GET", "Observation/o1", None, &options);
    for reason in [
        DenyReason::NoPatientContext,
        DenyReason::OtherPatient,
        DenyReason::UnenforceableQuery,
        DenyReason::OperationNotPermitted,
        DenyReason::NotSupported,
        DenyReason::BodyNotCheckable,
        DenyReason::BadRequest,
    ] {
        let refused = Decision::Deny(denial(reason, "r", "m"));
        let result = decide(&grant, &request, &refused, &options, &reads());
        assert_eq!(result, Err(Unbroken::NotForScope), "{reason:?}");
    }
    let allowed = decide_with(&grant, &request, &options);
    let allowed = match allowed {
        Decision::Deny(_) => Decision::Allow(Obligations::default()),
        allow => allow,
    };
    assert_eq!(
        decide(&grant, &request, &allowed, &options, &reads()),
        Err(Unbroken::NotForScope)
    );
    let missing_scope = Decision::Deny(denial(DenyReason::InsufficientScope, "r", "m"));
    assert!(decide(&grant, &request, &missing_scope, &options, &reads()).is_ok());
}

#[test]
fn a_read_refused_as_not_found_is_judged_by_what_it_stands_for() {
    let options = PolicyOptions {
        read_refusal: ReadRefusal::NotFound,
        ..PolicyOptions::default()
    };
    let grant = grant("user/Patient.rs", None);
    let request = request("GET", "Observation/o1", None, &options);
    let decision = decide_with(&grant, &request, &options);
    assert!(
        matches!(&decision, Decision::Deny(d) if d.reason == DenyReason::NotFound),
        "{decision:?}"
    );
    let ob = decide(&grant, &request, &decision, &options, &reads()).unwrap();
    assert_eq!(ob.rule, RULE);
}

#[test]
fn batch_entries_are_decided_under_the_emergency_grant() {
    let bundle = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient/p1"}},
        {"request":{"method":"GET","url":"Observation?patient=p1"}}]}"#;
    let whole = PolicyOptions::default();
    let ob = attempt(
        "user/Patient.rs",
        None,
        "POST",
        "",
        Some(bundle),
        &whole,
        &reads(),
    )
    .unwrap();
    assert_eq!(ob.rule, RULE);
    assert!(ob.refused_entries.is_empty());

    let in_place = PolicyOptions {
        batch_refusal: BatchRefusal::PerEntry,
        ..PolicyOptions::default()
    };
    let ob = attempt(
        "user/Patient.rs",
        None,
        "POST",
        "",
        Some(bundle),
        &in_place,
        &reads(),
    )
    .unwrap();
    assert_eq!(ob.rule, RULE);
    assert!(ob.refused_entries.is_empty(), "{:?}", ob.refused_entries);

    // A write entry stays refused under reads only: nothing is gained, the batch stands.
    let with_write = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[
        {{"request":{{"method":"GET","url":"Patient/p1"}}}},
        {{"request":{{"method":"PUT","url":"Observation/o1"}},"resource":{OBSERVATION}}}]}}"#
    );
    let unchanged = attempt(
        "user/Patient.rs",
        None,
        "POST",
        "",
        Some(&with_write),
        &in_place,
        &reads(),
    );
    assert_eq!(unchanged, Err(Unbroken::StillRefused));
}

#[test]
fn the_emergency_grant_keeps_the_token_and_adds_its_scopes() {
    let token = grant("openid user/Patient.rs", Some("p1"));
    let emergency = Emergency {
        resource_types: vec!["Observation".into(), "Condition".into()],
        ..reads()
    };
    let widened = emergency.grant(&token);
    let texts: Vec<&str> = widened
        .scopes
        .resource_scopes()
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "user/Patient.rs",
            "user/Observation.rs",
            "user/Condition.rs"
        ]
    );
    assert_eq!(widened.scopes.others(), ["openid"]);
    assert_eq!(widened.patient.as_deref(), Some("p1"));
    for scope in emergency.scopes() {
        assert_eq!(ScopeSet::parse(&scope.text).resource_scopes(), [scope]);
    }
}
