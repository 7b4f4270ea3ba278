use super::*;
use crate::scope::ScopeSet;

fn check(scopes: &str, patient: Option<&str>) -> ResponseCheck {
    let grant = Grant::new(ScopeSet::parse(scopes), patient.map(str::to_owned));
    ResponseCheck::new(&grant, Perms::R.union(Perms::S), Expect::Bundle)
}

const BUNDLE: &str = r#"{"resourceType":"Bundle","id":"b1","type":"searchset","total":3,"link":[{"relation":"self","url":"http://x/Observation?a=1"}],"entry":[
 {"fullUrl":"http://x/Observation/1","resource":{"resourceType":"Observation","id":"1","valueQuantity":{"value":1.50,"unit":"mg"},"subject":{"reference":"Patient/123"}},"search":{"mode":"match"}},
 {"fullUrl":"http://x/Observation/2","resource":{"resourceType":"Observation","id":"2","subject":{"reference":"Patient/456"}},"search":{"mode":"match"}},
 {"fullUrl":"http://x/Practitioner/p","resource":{"resourceType":"Practitioner","id":"p"},"search":{"mode":"include"}}]}"#;

#[test]
fn keeps_kept_entries_byte_for_byte() {
    let out = filter_bundle(
        &check("patient/Observation.rs", Some("123")),
        BUNDLE.as_bytes(),
    )
    .unwrap();
    assert_eq!((out.kept, out.withheld, out.unchanged), (1, 2, false));
    let text = String::from_utf8(out.body).unwrap();
    assert!(text.starts_with(r#"{"resourceType":"Bundle","id":"b1","type":"searchset","link":[{"relation":"self","url":"http://x/Observation?a=1"}],"entry":[{"fullUrl":"http://x/Observation/1","resource":{"resourceType":"Observation","id":"1","valueQuantity":{"value":1.50,"unit":"mg"},"subject":{"reference":"Patient/123"}},"search":{"mode":"match"}},"#), "{text}");
    assert!(text.contains(
        r#""diagnostics":"2 entries withheld by access policy"}]},"search":{"mode":"outcome"}}]}"#
    ));
    assert!(!text.contains("456") && !text.contains("Practitioner") && !text.contains("total"));
    let _: Value = serde_json::from_str(&text).unwrap();
}

#[test]
fn unchanged_bundle_is_returned_as_is() {
    let out = filter_bundle(&check("user/*.rs", None), BUNDLE.as_bytes()).unwrap();
    assert!(out.unchanged);
    assert_eq!(out.body, BUNDLE.as_bytes());
    assert_eq!(out.kept, 3);
}

#[test]
fn non_compartment_types_pass_under_patient_wildcard() {
    let out = filter_bundle(&check("patient/*.rs", Some("123")), BUNDLE.as_bytes()).unwrap();
    assert_eq!((out.kept, out.withheld), (2, 1));
}

#[test]
fn outcome_entries_kept_and_resourceless_entries_withheld() {
    let b = r#"{"resourceType":"Bundle","type":"history","entry":[{"request":{"method":"DELETE","url":"Observation/9"}},{"resource":{"resourceType":"OperationOutcome","issue":[]},"search":{"mode":"outcome"}}]}"#;
    let out = filter_bundle(&check("patient/Observation.rs", Some("123")), b.as_bytes()).unwrap();
    assert_eq!((out.kept, out.withheld), (1, 1));
}

#[test]
fn not_a_bundle_is_an_error() {
    let c = check("user/*.rs", None);
    assert!(filter_bundle(&c, b"[1]").is_err());
    assert!(filter_bundle(&c, br#"{"resourceType":"Patient"}"#).is_err());
    assert!(filter_bundle(&c, br#"{"resourceType":"Bundle","entry":[1]}"#).is_err());
    assert!(filter_bundle(&c, br#"{"resourceType":"Bundle","entry":[],"entry":[]}"#).is_err());
    assert!(
        filter_bundle(&c, br#"{"resourceType":"OperationOutcome","issue":[]}"#)
            .unwrap()
            .unchanged
    );
}

#[test]
fn single_resource_checks() {
    let mut c = check("patient/Observation.rs", Some("123"));
    c.expect = Expect::Resource;
    assert!(
        verify_resource(
            &c,
            br#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#
        )
        .is_ok()
    );
    assert!(matches!(
        verify_resource(
            &c,
            br#"{"resourceType":"Observation","subject":{"reference":"Patient/456"}}"#
        ),
        Err(VerifyError::NotCovered { .. })
    ));
    assert!(verify_resource(&c, br#"{"resourceType":"OperationOutcome","issue":[]}"#).is_ok());
    assert!(verify_resource(&c, b"<xml/>").is_err());
}

#[test]
fn granular_scopes_filter_by_category() {
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category";
    let c = check(
        &format!("user/Observation.rs?category={lab}|laboratory"),
        None,
    );
    let b = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{{"resourceType":"Observation","category":[{{"coding":[{{"system":"{lab}","code":"laboratory"}}]}}]}}}},{{"resource":{{"resourceType":"Observation","category":[{{"coding":[{{"system":"{lab}","code":"vital-signs"}}]}}]}}}}]}}"#
    );
    let out = filter_bundle(&c, b.as_bytes()).unwrap();
    assert_eq!((out.kept, out.withheld), (1, 1));
}

/// The check parses only the members it reads; these are the ones that decide, each in a
/// Bundle that also carries members it skips.
#[test]
fn members_the_check_reads_decide_in_a_bundle() {
    let bundle = |resources: &[&str]| {
        let entries: Vec<String> = resources
            .iter()
            .map(|r| format!(r#"{{"fullUrl":"urn:x","resource":{r},"search":{{"mode":"match"}}}}"#))
            .collect();
        format!(
            r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes()
    };
    let narrative = r#""text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}"#;

    // Security labels (on meta) under a granular `_security` scope.
    let confidential = check("user/Observation.rs?_security=R", None);
    let labelled = format!(
        r#"{{"resourceType":"Observation",{narrative},"meta":{{"security":[{{"code":"R"}}]}},"status":"final"}}"#
    );
    let unlabelled = format!(r#"{{"resourceType":"Observation",{narrative},"status":"final"}}"#);
    let out = filter_bundle(&confidential, &bundle(&[&labelled, &unlabelled])).unwrap();
    assert_eq!((out.kept, out.withheld), (1, 1));

    // The compartment: a subject after many skipped members, and a performer.
    let own = check("patient/Observation.rs", Some("123"));
    let late_subject = format!(
        r#"{{"resourceType":"Observation",{narrative},"code":{{"text":"x"}},"valueQuantity":{{"value":1}},"subject":{{"reference":"Patient/123"}}}}"#
    );
    let performer = r#"{"resourceType":"Observation","performer":[{"reference":"Patient/123"}]}"#;
    let other = r#"{"resourceType":"Observation","subject":{"reference":"Patient/999"}}"#;
    let out = filter_bundle(&own, &bundle(&[&late_subject, performer, other])).unwrap();
    assert_eq!((out.kept, out.withheld), (2, 1));

    // A Patient is in its own compartment by its id.
    let patient = check("patient/Patient.rs", Some("123"));
    let me = r#"{"resourceType":"Patient","name":[{"family":"X"}],"id":"123"}"#;
    let not_me = r#"{"resourceType":"Patient","id":"124"}"#;
    let out = filter_bundle(&patient, &bundle(&[me, not_me])).unwrap();
    assert_eq!((out.kept, out.withheld), (1, 1));

    // A member named twice is not guessed at: the Bundle cannot be checked.
    let twice = r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"},"subject":{"reference":"Patient/999"}}"#;
    assert!(filter_bundle(&own, &bundle(&[twice])).is_err());
    assert!(verify_resource(&own, twice.as_bytes()).is_err());
    // Nor is a reference naming its target twice, at whatever depth.
    let reference_twice = r#"{"resourceType":"Observation","subject":{"reference":"Patient/999","reference":"Patient/123"}}"#;
    assert!(filter_bundle(&own, &bundle(&[reference_twice])).is_err());
    assert!(verify_resource(&own, reference_twice.as_bytes()).is_err());
    let performer_twice = r#"{"resourceType":"Observation","performer":[{"reference":"Patient/999","reference":"Patient/123"}]}"#;
    assert!(filter_bundle(&own, &bundle(&[performer_twice])).is_err());
    // Nor is a Bundle naming its entries twice.
    let entries_twice = format!(
        r#"{{"resourceType":"Bundle","entry":[{{"resource":{performer}}}],"entry":[{{"resource":{other}}}]}}"#
    );
    assert!(filter_bundle(&own, entries_twice.as_bytes()).is_err());
}
