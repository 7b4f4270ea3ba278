use super::*;
use crate::options::PolicyOptions;

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

#[test]
fn every_rest_form_has_an_interaction() {
    use Interaction as I;
    let cases: &[(&str, &str, Option<&str>, I)] = &[
        ("GET", "Observation/o1", None, I::Read),
        ("HEAD", "Observation/o1", None, I::Read),
        ("GET", "Observation/o1/_history/2", None, I::Vread),
        (
            "GET",
            "Observation/o1/_history",
            Some("_count=5"),
            I::HistoryInstance,
        ),
        (
            "GET",
            "Observation/_history",
            Some("_since=2020-01-01"),
            I::HistoryType,
        ),
        ("GET", "_history", Some("_at=2020"), I::HistorySystem),
        ("GET", "Observation", Some("code=x"), I::SearchType),
        (
            "GET",
            "",
            Some("_type=Observation,Condition"),
            I::SearchSystem,
        ),
        ("GET", "Patient/1/Observation", None, I::SearchCompartment),
        ("GET", "Patient/1/*", None, I::SearchCompartment),
        ("DELETE", "Observation/o1", None, I::Delete),
        ("DELETE", "Observation", Some("code=x"), I::Delete),
        ("PATCH", "Observation", Some("code=x"), I::Patch),
        ("GET", "metadata", None, I::Capabilities),
        ("GET", "$export", None, I::Operation),
        ("GET", "Patient/$export", None, I::Operation),
        ("GET", "Group/g1/$export", None, I::Operation),
        ("POST", "$graphql", None, I::Operation),
        ("GET", "Patient/1/$graphql", Some("query=x"), I::Operation),
        ("GET", "Observation/$lastn", None, I::Operation),
        (
            "GET",
            "",
            Some("_getpages=abc&_getpagesoffset=20"),
            I::PageContinuation,
        ),
    ];
    for (method, path, query, expected) in cases {
        let r = classify(&RequestParts {
            method,
            path,
            query: *query,
            ..RequestParts::default()
        })
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.interaction, *expected, "{method} {path}");
    }
}

#[test]
fn compartment_post_search_reads_url_and_body() {
    let r = classify(&RequestParts {
        method: "POST",
        path: "Patient/1/Observation/_search",
        query: Some("code=x"),
        content_type: Some("application/x-www-form-urlencoded"),
        body: Some(b"status=final"),
        if_none_exist: None,
    })
    .unwrap();
    assert_eq!(r.interaction, Interaction::SearchCompartment);
    assert_eq!(r.compartment, Some(("Patient".to_owned(), "1".to_owned())));
    assert_eq!(r.params.len(), 2);
}

#[test]
fn patch_documents_are_classified() {
    let json = classify(&RequestParts {
        method: "PATCH",
        path: "Observation/o1",
        content_type: Some("application/json-patch+json"),
        body: Some(br#"[{"op":"replace","path":"/subject/reference","value":"Patient/2"}]"#),
        ..RequestParts::default()
    })
    .unwrap();
    assert!(json.patch.as_ref().unwrap().touches(&["subject"]));
    let bad = classify(&RequestParts {
        method: "PATCH",
        path: "Observation/o1",
        content_type: Some("application/json-patch+json"),
        body: Some(b"{}"),
        ..RequestParts::default()
    });
    assert_eq!(bad, Err(ClassifyError::BadBody));
}

#[test]
fn bundle_entry_urls_relative_absolute_and_urn() {
    let options = PolicyOptions {
        base_urls: vec!["https://gw.test/fhir/".to_owned()],
        ..PolicyOptions::default()
    };
    let bundle = |url: &str, method: &str| {
        format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"fullUrl":"urn:uuid:6f1d3b1e-9a0e-4a51-8f4c-0d6f4e2b7a10","resource":{{"resourceType":"Observation","id":"o1"}},"request":{{"method":"{method}","url":"{url}"}}}}]}}"#
        )
    };
    let run = |url: &str, method: &str| {
        let body = bundle(url, method);
        classify_with(
            &RequestParts {
                method: "POST",
                path: "",
                content_type: Some("application/fhir+json"),
                body: Some(body.as_bytes()),
                ..RequestParts::default()
            },
            &options,
        )
    };
    let abs = run("https://gw.test/fhir/Observation/o1", "PUT").unwrap();
    assert_eq!(abs.entries[0].interaction, Interaction::Update);
    assert_eq!(abs.entries[0].id.as_deref(), Some("o1"));
    let query_colon = run("Observation?identifier=http://x|1", "PUT").unwrap();
    assert!(query_colon.entries[0].conditional);
    for foreign in [
        "https://gw.test/fhirx/Observation/o1",
        "https://other.test/fhir/Observation/o1",
        "urn:uuid:6f1d3b1e-9a0e-4a51-8f4c-0d6f4e2b7a10",
        "/Observation/o1",
    ] {
        assert!(run(foreign, "PUT").is_err(), "{foreign}");
    }
    // A patch entry: FHIRPath Patch as Parameters, JSON Patch as a Binary.
    let binary = r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Binary","contentType":"application/json-patch+json","data":"W3sib3AiOiJyZW1vdmUiLCJwYXRoIjoiL3N1YmplY3QifV0="},"request":{"method":"PATCH","url":"Observation/o1"}}]}"#;
    let r = classify(&RequestParts {
        method: "POST",
        path: "",
        content_type: Some("application/fhir+json"),
        body: Some(binary.as_bytes()),
        ..RequestParts::default()
    })
    .unwrap();
    assert!(r.entries[0].patch.as_ref().unwrap().touches(&["subject"]));
    assert!(!r.entries[0].patch.as_ref().unwrap().touches(&["status"]));
}
