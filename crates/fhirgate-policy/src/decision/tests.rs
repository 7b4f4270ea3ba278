use super::*;
use crate::options::{OperationLevel, OperationPolicy, OperationRule, PolicyOptions, ReadRefusal};
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
        "user/Observation.rs user/Practitioner.r",
        None,
        "GET",
        "Observation?_include=Observation:performer:Practitioner",
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
    assert!(matches!(ob.precheck, Some(Precheck::Target(_))));
    assert!(ob.response_check.is_none());
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
    let cond = denial(run(
        "patient/Observation.d",
        Some("123"),
        "DELETE",
        "Observation?code=x",
        None,
    ));
    assert_eq!(cond.reason, DenyReason::UnenforceableQuery);
    let del = allow(run(
        "patient/Observation.d",
        Some("123"),
        "DELETE",
        "Observation/o1",
        None,
    ));
    assert!(matches!(del.precheck, Some(Precheck::Target(_))));
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
    let either = "user/Observation.rs?category=a user/Observation.rs?category=b";
    let ob = allow(run(either, None, "GET", "Observation", None));
    assert_eq!(
        ob.add_params,
        vec![("category".to_owned(), "a,b".to_owned())]
    );
    let moot = "patient/Observation.rs patient/Observation.rs?category=a";
    let ob = allow(run(moot, Some("123"), "GET", "Observation", None));
    assert_eq!(
        ob.add_params,
        vec![("subject".to_owned(), "Patient/123".to_owned())]
    );
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
    // Under patient/ scopes the read is allowed with its response check, carried into the
    // Bundle as an entry obligation.
    let ob = allow(run("patient/*.rs", Some("1"), "POST", "", Some(batch)));
    assert_eq!(ob.entries.len(), 1);
    assert_eq!(ob.entries[0].index, 0);
    assert!(ob.entries[0].add_params.is_empty());
    assert_eq!(
        ob.entries[0].response_check.as_ref().map(|c| c.expect),
        Some(crate::verify::Expect::Resource)
    );
}

fn bundle(kind: &str, entries: &[(&str, &str, Option<&str>)]) -> String {
    let entries: Vec<String> = entries
        .iter()
        .map(|(method, url, resource)| match resource {
            Some(r) => {
                format!(r#"{{"resource":{r},"request":{{"method":"{method}","url":"{url}"}}}}"#)
            }
            None => format!(r#"{{"request":{{"method":"{method}","url":"{url}"}}}}"#),
        })
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{}]}}"#,
        entries.join(",")
    )
}

fn decide_bundle_with(body: &str, scopes: &str, options: &PolicyOptions) -> Decision {
    let parts = RequestParts {
        method: "POST",
        path: "",
        query: None,
        content_type: Some("application/fhir+json"),
        body: Some(body.as_bytes()),
        if_none_exist: None,
    };
    run_with(scopes, Some("A"), parts, options)
}

const MIXED: &[(&str, &str, Option<&str>)] = &[
    ("GET", "Patient/A", None),
    ("GET", "Patient/B", None),
    ("GET", "Observation?code=8867-4", None),
    ("GET", "Condition/c1", None),
];

#[test]
fn a_batch_with_a_refused_entry_is_refused_whole_by_default() {
    let body = bundle("batch", MIXED);
    let d = denial(decide_bundle_with(
        &body,
        "patient/*.rs",
        &PolicyOptions::default(),
    ));
    assert_eq!(d.reason, DenyReason::OtherPatient);
    assert_eq!(d.expression, ["Bundle.entry[1]"]);
}

#[test]
fn per_entry_batches_forward_the_rest_with_their_obligations() {
    let options = PolicyOptions {
        batch_refusal: crate::options::BatchRefusal::PerEntry,
        ..PolicyOptions::default()
    };
    let ob = allow(decide_bundle_with(
        &bundle("batch", MIXED),
        "patient/*.rs",
        &options,
    ));
    let refused: Vec<usize> = ob.refused_entries.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, [1]);
    assert_eq!(ob.refused_entries[0].1.expression, ["Bundle.entry[1]"]);
    let indexes: Vec<usize> = ob.entries.iter().map(|e| e.index).collect();
    assert_eq!(
        indexes,
        [2, 3],
        "Patient/A needs nothing; the others need checks"
    );
    assert_eq!(
        ob.entries[0].add_params,
        vec![("subject".to_owned(), "Patient/A".to_owned())],
        "a search entry is narrowed like the search sent alone"
    );
    assert!(ob.entries.iter().all(|e| e.response_check.is_some()));

    // A transaction stays all-or-nothing whatever the option says.
    let d = denial(decide_bundle_with(
        &bundle("transaction", MIXED),
        "patient/*.cruds",
        &options,
    ));
    assert_eq!(d.expression, ["Bundle.entry[1]"]);

    // Nothing left to forward: refused as a whole.
    let all_refused = bundle(
        "batch",
        &[("GET", "Patient/B", None), ("GET", "Patient/C", None)],
    );
    let d = denial(decide_bundle_with(&all_refused, "patient/*.rs", &options));
    assert_eq!(d.expression, ["Bundle.entry[0]", "Bundle.entry[1]"]);
}

#[test]
fn entries_that_need_a_request_of_their_own_are_refused() {
    let obs = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}"#;
    // An update under patient/ scopes checks its current target first: not inside a Bundle.
    let body = bundle("transaction", &[("PUT", "Observation/o1", Some(obs))]);
    let d = denial(decide_bundle_with(
        &body,
        "patient/*.cruds",
        &PolicyOptions::default(),
    ));
    assert_eq!(d.reason, DenyReason::NotSupported);
    assert_eq!(d.rule, "bundle-entry-refused");
    assert!(d.message.contains("send it on its own"), "{}", d.message);
    // A create needs only its body checked, which the decision does itself.
    let body = bundle("transaction", &[("POST", "Observation", Some(obs))]);
    assert!(
        allow(decide_bundle_with(
            &body,
            "patient/*.cruds",
            &PolicyOptions::default()
        ))
        .is_empty()
    );
}

#[test]
fn narrowed_query_appends_encoded_pairs() {
    let add = vec![("subject".to_owned(), "Patient/1".to_owned())];
    assert_eq!(
        narrowed_query(Some("code=a|b"), &add),
        "code=a|b&subject=Patient%2F1"
    );
}

fn run_with(
    scopes: &str,
    patient: Option<&str>,
    parts: RequestParts<'_>,
    options: &PolicyOptions,
) -> Decision {
    let grant = Grant::new(ScopeSet::parse(scopes), patient.map(str::to_owned));
    decide_with(
        &grant,
        &crate::request::classify_with(&parts, options).unwrap(),
        options,
    )
}

fn parts<'a>(method: &'a str, url: &'a str) -> RequestParts<'a> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    RequestParts {
        method,
        path,
        query,
        ..RequestParts::default()
    }
}

// Class of B21/B22: includes of types the grant cannot read.
#[test]
fn includes_need_read_on_every_type_they_can_return() {
    let p = Some("123");
    for url in [
        "Observation?patient=123&_include=Observation:subject",
        "Observation?patient=123&_include=Observation:performer",
        "Observation?patient=123&_include=*",
        "Observation?patient=123&_include:iterate=Observation:has-member",
        "Observation?patient=123&_include=Observation",
        "Patient?_id=123&_revinclude=*",
        "Patient?_id=123&_revinclude=Provenance:target",
        "Patient?_id=123&_revinclude:iterate=Condition:subject",
    ] {
        let d = denial(run(
            "patient/Observation.rs patient/Patient.rs",
            p,
            "GET",
            url,
            None,
        ));
        assert_eq!(d.reason.status(), 403, "{url}");
    }
    for url in [
        "Observation?patient=123&_include=Observation:subject:Patient",
        "Patient?_id=123&_revinclude=Observation:subject",
        "Observation?patient=123&_include:iterate=Observation:subject:Patient",
    ] {
        let ob = allow(run(
            "patient/Observation.rs patient/Patient.rs",
            p,
            "GET",
            url,
            None,
        ));
        assert!(ob.response_check.is_some(), "{url}");
    }
    let ob = allow(run(
        "patient/*.rs",
        p,
        "GET",
        "Patient?_id=123&_revinclude=*",
        None,
    ));
    assert!(ob.response_check.is_some());
    let d = denial(run(
        "user/Observation.rs",
        None,
        "GET",
        "?_type=Observation&_include=*",
        None,
    ));
    assert_eq!(d.rule, "include-type-not-granted");
}

// Class of B29: history that cannot be bounded to the patient.
#[test]
fn type_and_system_history_need_more_than_patient_scopes() {
    for url in [
        "_history",
        "Observation/_history",
        "_history?_type=Observation",
    ] {
        let d = denial(run("patient/*.rs", Some("123"), "GET", url, None));
        assert_eq!(d.reason, DenyReason::UnenforceableQuery, "{url}");
    }
    assert!(allow(run("user/*.rs", None, "GET", "_history", None)).is_empty());
    let ob = allow(run(
        "user/Observation.rs?status=final",
        None,
        "GET",
        "Observation/_history",
        None,
    ));
    assert!(ob.response_check.is_some());
    let ob = allow(run(
        "patient/Observation.rs",
        Some("123"),
        "GET",
        "Observation/o1/_history",
        None,
    ));
    assert_eq!(ob.response_check.unwrap().expect, Expect::Bundle);
}

// Class of B36/B38: conditional writes under patient/ scopes.
#[test]
fn conditional_writes_must_name_the_patient_and_check_matches() {
    let p = Some("123");
    let body = r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#;
    let patch = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.status"}]}]}"#;
    for (method, url, body) in [
        ("DELETE", "Observation?code=x", None),
        ("DELETE", "Observation?_id=o9", None),
        ("PUT", "Observation?identifier=s|1", Some(body)),
        ("PATCH", "Observation?identifier=s|1", Some(patch)),
    ] {
        let d = denial(run("patient/Observation.cruds", p, method, url, body));
        assert_eq!(d.reason.status(), 403, "{method} {url}");
    }
    assert_eq!(
        denial(run(
            "patient/Observation.cruds",
            p,
            "DELETE",
            "Observation?patient=456",
            None
        ))
        .reason,
        DenyReason::OtherPatient
    );
    for (method, url, body) in [
        ("DELETE", "Observation?patient=123&code=x", None),
        (
            "PUT",
            "Observation?subject=Patient/123&identifier=s|1",
            Some(body),
        ),
    ] {
        let ob = allow(run("patient/Observation.cruds", p, method, url, body));
        assert!(matches!(ob.precheck, Some(Precheck::Matches(_))), "{url}");
        assert!(ob.response_check.is_none());
    }
    let ob = allow(run(
        "user/Observation.cruds?category=lab",
        None,
        "DELETE",
        "Observation?code=x",
        None,
    ));
    assert_eq!(
        ob.add_params,
        vec![("category".to_owned(), "lab".to_owned())]
    );
    assert!(
        allow(run(
            "user/Observation.d",
            None,
            "DELETE",
            "Observation?code=x",
            None
        ))
        .is_empty()
    );
}

#[test]
fn conditional_create_narrows_its_existence_test() {
    let body = r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#;
    let create = |criteria| RequestParts {
        content_type: Some("application/fhir+json"),
        body: Some(body.as_bytes()),
        if_none_exist: Some(criteria),
        ..parts("POST", "Observation")
    };
    let options = PolicyOptions::default();
    let ob = allow(run_with(
        "patient/Observation.c",
        Some("123"),
        create("identifier=s|1"),
        &options,
    ));
    assert_eq!(
        ob.add_if_none_exist,
        vec![("subject".to_owned(), "Patient/123".to_owned())]
    );
    let d = denial(run_with(
        "patient/Observation.c",
        Some("123"),
        create("patient=456"),
        &options,
    ));
    assert_eq!(d.reason, DenyReason::OtherPatient);
    let d = denial(run_with(
        "patient/Observation.c",
        Some("123"),
        create("subject.name=x"),
        &options,
    ));
    assert_eq!(d.reason, DenyReason::UnenforceableQuery);
}

#[test]
fn patches_may_not_touch_what_binds_the_resource() {
    let patch = |ct: &'static str, body: &'static str| RequestParts {
        content_type: Some(ct),
        body: Some(body.as_bytes()),
        ..parts("PATCH", "Observation/o1")
    };
    let options = PolicyOptions::default();
    let json = "application/json-patch+json";
    let moves = r#"[{"op":"replace","path":"/subject/reference","value":"Patient/456"}]"#;
    let value = r#"[{"op":"replace","path":"/valueQuantity/value","value":2}]"#;
    let d = denial(run_with(
        "patient/Observation.u",
        Some("123"),
        patch(json, moves),
        &options,
    ));
    assert_eq!(d.rule, "patch-touches-binding");
    let ob = allow(run_with(
        "patient/Observation.u",
        Some("123"),
        patch(json, value),
        &options,
    ));
    assert!(matches!(ob.precheck, Some(Precheck::Target(_))));
    let fhirpath = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.performer"}]}]}"#;
    let d = denial(run_with(
        "patient/Observation.u",
        Some("123"),
        patch("application/fhir+json", fhirpath),
        &options,
    ));
    assert_eq!(d.rule, "patch-touches-binding");
    let granular = r#"[{"op":"replace","path":"/status","value":"amended"}]"#;
    let d = denial(run_with(
        "user/Observation.u?status=final",
        None,
        patch(json, granular),
        &options,
    ));
    assert_eq!(d.rule, "patch-touches-binding");
    let xml = patch("application/xml-patch+xml", "<diff/>");
    assert_eq!(
        denial(run_with(
            "patient/Observation.u",
            Some("123"),
            xml,
            &options
        ))
        .reason,
        DenyReason::BodyNotCheckable
    );
    assert!(
        allow(run_with(
            "user/Observation.u",
            None,
            patch(json, moves),
            &options
        ))
        .is_empty()
    );
}

#[test]
fn free_text_filters_are_refused_under_patient_scopes() {
    for q in [
        "_filter=subject.name%20eq%20x",
        "_query=everyone",
        "subject:Patient.name=x",
    ] {
        let d = denial(run(
            "patient/*.rs",
            Some("123"),
            "GET",
            &format!("Observation?{q}"),
            None,
        ));
        assert_eq!(d.reason, DenyReason::UnenforceableQuery, "{q}");
    }
}

#[test]
fn graphql_export_and_the_operation_table() {
    let options = PolicyOptions {
        operations: OperationPolicy {
            rules: vec![OperationRule {
                name: "validate".to_owned(),
                level: OperationLevel::Type,
                resource_type: Some("Observation".to_owned()),
                requires: Perms::C,
            }],
        },
        ..PolicyOptions::default()
    };
    let d = denial(run("patient/*.rs", Some("123"), "POST", "$graphql", None));
    assert_eq!(d.reason, DenyReason::OperationNotPermitted);
    assert!(
        allow(run(
            "user/*.rs",
            None,
            "GET",
            "Patient/1/$graphql?query=x",
            None
        ))
        .is_empty()
    );
    let ob = allow(run("system/*.rs", None, "GET", "$export", None));
    assert!(ob.bind_export_to_client);
    let d = denial(run(
        "system/Observation.rs",
        None,
        "GET",
        "$export?_type=Observation,Condition",
        None,
    ));
    assert_eq!(d.reason, DenyReason::InsufficientScope);
    let validate = parts("POST", "Observation/$validate");
    assert!(allow(run_with("user/Observation.c", None, validate, &options)).is_empty());
    let d = denial(run_with(
        "patient/Observation.c",
        Some("1"),
        validate,
        &options,
    ));
    assert_eq!(d.rule, "operation-needs-unrestricted-scope");
    let d = denial(run_with(
        "user/*.*",
        None,
        parts("POST", "Condition/$validate"),
        &options,
    ));
    assert_eq!(d.reason, DenyReason::OperationNotPermitted);
    let d = denial(run_with("user/Patient.r", None, validate, &options));
    assert_eq!(d.reason, DenyReason::InsufficientScope);
}

#[test]
fn refused_reads_can_answer_not_found() {
    let options = PolicyOptions {
        read_refusal: ReadRefusal::NotFound,
        ..PolicyOptions::default()
    };
    let d = denial(run_with(
        "patient/*.rs",
        Some("123"),
        parts("GET", "Patient/456"),
        &options,
    ));
    assert_eq!(
        (d.reason.status(), d.reason.issue_code()),
        (404, IssueCode::NotFound)
    );
    let ob = allow(run_with(
        "patient/*.rs",
        Some("123"),
        parts("GET", "Observation/o1"),
        &options,
    ));
    assert!(ob.withheld_as_not_found);
    let d = denial(run_with(
        "patient/*.rs",
        Some("123"),
        parts("DELETE", "Patient/456"),
        &options,
    ));
    assert_eq!(d.reason.status(), 403);
}

#[test]
fn bundle_refusals_name_entries_and_absolute_urls_must_match_the_base() {
    let options = PolicyOptions {
        base_urls: vec!["https://gw.test/fhir".to_owned()],
        ..PolicyOptions::default()
    };
    let bundle = |url: &str| {
        format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"request":{{"method":"GET","url":"Patient/123"}}}},{{"request":{{"method":"GET","url":"{url}"}}}}]}}"#
        )
    };
    let run_bundle = |url: &str| {
        let body = bundle(url);
        let req = crate::request::classify_with(
            &RequestParts {
                content_type: Some("application/fhir+json"),
                body: Some(body.as_bytes()),
                ..parts("POST", "")
            },
            &options,
        );
        req.map(|r| {
            decide_with(
                &Grant::new(ScopeSet::parse("patient/*.rs"), Some("123".to_owned())),
                &r,
                &options,
            )
        })
    };
    let d = denial(run_bundle("https://gw.test/fhir/Patient/456").unwrap());
    assert_eq!(d.expression, vec!["Bundle.entry[1]".to_owned()]);
    assert_eq!(d.reason, DenyReason::OtherPatient);
    assert!(allow(run_bundle("https://gw.test/fhir/Patient/123").unwrap()).is_empty());
    for foreign in [
        "https://evil.test/fhir/Patient/123",
        "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
    ] {
        assert!(run_bundle(foreign).is_err(), "{foreign}");
    }
}

#[test]
fn page_continuations_are_checked() {
    let ob = allow(run(
        "patient/Observation.rs",
        Some("123"),
        "GET",
        "?_getpages=abc&_getpagesoffset=10",
        None,
    ));
    assert!(ob.response_check.is_some());
    assert!(allow(run("user/*.rs", None, "GET", "?_getpages=abc", None)).is_empty());
    let d = denial(run(
        "patient/Observation.c",
        Some("123"),
        "GET",
        "?_getpages=abc",
        None,
    ));
    assert_eq!(d.reason, DenyReason::InsufficientScope);
}

#[test]
fn a_bundle_of_public_reads_needs_no_data_scope_and_one_data_entry_does() {
    // Found by fuzzing: a transaction whose only entry reads the capability statement. That is
    // public, so allowing it without data scopes is right; any data entry needs a scope.
    let public = bundle("transaction", &[("GET", "metadata", None)]);
    assert!(
        allow(decide_bundle_with(
            &public,
            "openid fhirUser",
            &PolicyOptions::default()
        ))
        .is_empty()
    );
    let mixed = bundle(
        "batch",
        &[("GET", "metadata", None), ("GET", "Patient/A", None)],
    );
    let d = denial(decide_bundle_with(
        &mixed,
        "openid fhirUser",
        &PolicyOptions::default(),
    ));
    assert_eq!(d.expression, ["Bundle.entry[1]"]);
}
