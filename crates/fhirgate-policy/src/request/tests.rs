use super::*;

fn get(path: &str, query: Option<&str>) -> Result<FhirRequest, ClassifyError> {
    classify(&RequestParts {
        method: "GET",
        path,
        query,
        ..RequestParts::default()
    })
}

#[test]
fn instance_and_type_level_reads() {
    let r = get("Patient/123", None).unwrap();
    assert_eq!(
        (r.interaction, r.resource_type.as_deref(), r.id.as_deref()),
        (Interaction::Read, Some("Patient"), Some("123"))
    );
    let v = get("Patient/1/_history/2", None).unwrap();
    assert_eq!(
        (v.interaction, v.version_id.as_deref()),
        (Interaction::Vread, Some("2"))
    );
    assert_eq!(
        get("Patient/1/_history", None).unwrap().interaction,
        Interaction::HistoryInstance
    );
    assert_eq!(
        get("Patient/_history", None).unwrap().interaction,
        Interaction::HistoryType
    );
    assert_eq!(
        get("_history", None).unwrap().interaction,
        Interaction::HistorySystem
    );
    assert_eq!(
        get("metadata", None).unwrap().interaction,
        Interaction::Capabilities
    );
    assert_eq!(
        get("", Some("_type=Observation")).unwrap().interaction,
        Interaction::SearchSystem
    );
}

#[test]
fn searches_decode_parameters() {
    let s = get(
        "Observation",
        Some("Observation%3Asubject=Patient%2F1&code=a|b&x=a+b"),
    )
    .unwrap();
    assert_eq!(s.interaction, Interaction::SearchType);
    assert_eq!(
        s.params[0],
        ("Observation:subject".into(), "Patient/1".into())
    );
    assert_eq!(s.params[1].1, "a|b");
    assert_eq!(s.params[2].1, "a b");
}

#[test]
fn compartment_search_and_operations() {
    let c = get("Patient/123/Observation", None).unwrap();
    assert_eq!(c.interaction, Interaction::SearchCompartment);
    assert_eq!(c.compartment, Some(("Patient".into(), "123".into())));
    assert_eq!(c.resource_type.as_deref(), Some("Observation"));
    assert_eq!(
        get("Patient/123/*", None).unwrap().resource_type.as_deref(),
        Some("*")
    );
    let e = get("Patient/123/$everything", None).unwrap();
    assert_eq!(
        (e.interaction, e.operation.as_deref()),
        (Interaction::Operation, Some("everything"))
    );
    assert_eq!(
        get("$export", None).unwrap().operation.as_deref(),
        Some("export")
    );
    assert_eq!(
        get("Patient/$export", None)
            .unwrap()
            .resource_type
            .as_deref(),
        Some("Patient")
    );
}

#[test]
fn non_canonical_paths_are_refused() {
    for bad in [
        "Patient/../Observation",
        "Patient/./1",
        "Patient//1",
        "Patient/1%2F2",
        "Patient/1/",
        "Patient;x/1",
        "Patient/%2e%2e",
    ] {
        assert!(
            matches!(get(bad, None), Err(ClassifyError::NonCanonicalPath(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        get("patient/1", None),
        Err(ClassifyError::UnknownResourceType(_))
    ));
    assert!(matches!(
        get("Patient/a b", None),
        Err(ClassifyError::InvalidId(_))
    ));
    assert!(matches!(
        get("Patient/1/_history/2/x", None),
        Err(ClassifyError::MethodNotAllowed { .. })
    ));
}

#[test]
fn methods() {
    let parts = |method, path| RequestParts {
        method,
        path,
        ..RequestParts::default()
    };
    assert_eq!(
        classify(&parts("HEAD", "Patient/1")).unwrap().interaction,
        Interaction::Read
    );
    assert_eq!(
        classify(&parts("DELETE", "Patient/1")).unwrap().interaction,
        Interaction::Delete
    );
    assert_eq!(
        classify(&parts("PATCH", "Patient/1")).unwrap().interaction,
        Interaction::Patch
    );
    assert!(matches!(
        classify(&parts("TRACE", "Patient/1")),
        Err(ClassifyError::UnsupportedMethod(_))
    ));
    assert!(classify(&parts("DELETE", "Patient")).is_err());
    let cond = classify(&RequestParts {
        method: "DELETE",
        path: "Observation",
        query: Some("code=x"),
        ..RequestParts::default()
    })
    .unwrap();
    assert!(cond.conditional);
}

#[test]
fn post_search_reads_form_body() {
    let parts = RequestParts {
        method: "POST",
        path: "Observation/_search",
        query: Some("_count=5"),
        content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
        body: Some(b"patient=123&code=http%3A%2F%2Floinc.org|1"),
        if_none_exist: None,
    };
    let r = classify(&parts).unwrap();
    assert_eq!(r.interaction, Interaction::SearchType);
    assert_eq!(r.params.len(), 3);
    assert_eq!(r.params[2].1, "http://loinc.org|1");
    let no_ct = RequestParts {
        content_type: None,
        ..parts
    };
    assert_eq!(classify(&no_ct), Err(ClassifyError::BadFormBody));
}

#[test]
fn create_parses_json_body() {
    let body = br#"{"resourceType":"Observation","subject":{"reference":"Patient/1"}}"#;
    let parts = RequestParts {
        method: "POST",
        path: "Observation",
        content_type: Some("application/fhir+json"),
        body: Some(body),
        if_none_exist: Some("identifier=a%7Cb"),
        ..RequestParts::default()
    };
    let r = classify(&parts).unwrap();
    assert_eq!(r.interaction, Interaction::Create);
    assert!(r.resource.is_some() && r.conditional);
    assert_eq!(r.if_none_exist[0].1, "a|b");
    let bad = RequestParts {
        body: Some(b"{not json"),
        ..parts
    };
    assert_eq!(classify(&bad), Err(ClassifyError::BadBody));
}

#[test]
fn bundles_classify_each_entry() {
    let body = br#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Observation?patient=123"}},
        {"request":{"method":"DELETE","url":"Observation/obs1"}},
        {"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation"}}]}"#;
    let parts = RequestParts {
        method: "POST",
        path: "",
        content_type: Some("application/fhir+json"),
        body: Some(body),
        ..RequestParts::default()
    };
    let r = classify(&parts).unwrap();
    assert_eq!(r.interaction, Interaction::Batch);
    let kinds: Vec<_> = r.entries.iter().map(|e| e.interaction).collect();
    assert_eq!(
        kinds,
        [
            Interaction::SearchType,
            Interaction::Delete,
            Interaction::Create
        ]
    );
    assert!(r.entries[2].resource.is_some());
    let bad = br#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"http://evil/Patient/1"}}]}"#;
    let err = classify(&RequestParts {
        body: Some(bad),
        ..parts
    })
    .unwrap_err();
    assert!(matches!(err, ClassifyError::BadEntry { index: 0, .. }));
}
