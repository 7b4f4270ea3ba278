use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::*;

const ISSUER: &str = "https://idp.example.test";

fn source() -> EventSource {
    EventSource {
        observer: "gw-test-1".into(),
        site: Some("example-site".into()),
        public_base: "https://gateway.example.test/fhir".into(),
    }
}

/// A patient-scoped app reading its patient, allowed.
fn patient_read() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        instance: "gw-test-1".into(),
        time: "2024-05-01T10:00:00.250Z".into(),
        started: "2024-05-01T10:00:00.200Z".into(),
        request_id: "req-0001".into(),
        route: Some("default".into()),
        client_id: Some("growth-chart".into()),
        issuer: Some(ISSUER.into()),
        subject: Some("user-42".into()),
        fhir_user: Some("Practitioner/pr-7".into()),
        patient: Some("p-123".into()),
        encounter: None,
        fhir_context: None,
        token_id: Some("jti-5f2c".into()),
        scopes: Some("launch/patient patient/Patient.r patient/Observation.rs".into()),
        source: "203.0.113.9".into(),
        method: "GET".into(),
        path: "/fhir/Patient/p-123".into(),
        query: None,
        interaction: Some("read".into()),
        resource_type: Some("Patient".into()),
        resource_id: Some("p-123".into()),
        target_patient: Some("p-123".into()),
        decision: AuditDecision::Allow,
        reason: "allowed".into(),
        rule: Some("patient-read".into()),
        status: 200,
        upstream_status: Some(200),
        withheld: None,
        latency_ms: 50.0,
        upstream_latency_ms: Some(30.0),
        purpose_of_use: None,
        break_glass: false,
    }
}

fn search() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a8058".into(),
        request_id: "req-0002".into(),
        path: "/fhir/Observation".into(),
        query: Some("patient=p-123&code=8302-2".into()),
        interaction: Some("search-type".into()),
        resource_type: Some("Observation".into()),
        resource_id: None,
        rule: Some("patient-search".into()),
        ..patient_read()
    }
}

fn create() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a8059".into(),
        request_id: "req-0003".into(),
        method: "POST".into(),
        path: "/fhir/Observation".into(),
        interaction: Some("create".into()),
        resource_type: Some("Observation".into()),
        resource_id: None,
        target_patient: None,
        rule: Some("patient-create".into()),
        status: 201,
        upstream_status: Some(201),
        ..patient_read()
    }
}

fn insufficient_scope() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805a".into(),
        request_id: "req-0004".into(),
        path: "/fhir/MedicationRequest/mr-1".into(),
        interaction: Some("read".into()),
        resource_type: Some("MedicationRequest".into()),
        resource_id: Some("mr-1".into()),
        target_patient: None,
        decision: AuditDecision::Deny,
        reason: "insufficient_scope".into(),
        rule: Some("no-covering-scope".into()),
        status: 403,
        upstream_status: None,
        upstream_latency_ms: None,
        ..patient_read()
    }
}

fn missing_token() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805b".into(),
        request_id: "req-0005".into(),
        client_id: None,
        issuer: None,
        subject: None,
        fhir_user: None,
        patient: None,
        token_id: None,
        scopes: None,
        interaction: None,
        resource_type: None,
        resource_id: None,
        target_patient: None,
        decision: AuditDecision::Deny,
        reason: "no_token".into(),
        rule: None,
        status: 401,
        upstream_status: None,
        upstream_latency_ms: None,
        ..patient_read()
    }
}

fn upstream_failure() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805c".into(),
        request_id: "req-0006".into(),
        reason: "upstream_unavailable".into(),
        status: 502,
        upstream_status: None,
        ..patient_read()
    }
}

fn filtered_search() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805d".into(),
        request_id: "req-0007".into(),
        query: Some("patient=p-123&_include=Observation:performer".into()),
        decision: AuditDecision::Filter,
        withheld: Some(3),
        ..search()
    }
}

/// A clinician with `user/` scopes reading a patient's conditions, with no patient in the
/// token's context, stating a purpose of use that changed nothing.
fn user_target_patient() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805e".into(),
        request_id: "req-0008".into(),
        client_id: Some("ward-app".into()),
        patient: None,
        scopes: Some("openid fhirUser user/Condition.rs".into()),
        path: "/fhir/Condition".into(),
        query: Some("subject=Patient/p-456".into()),
        interaction: Some("search-type".into()),
        resource_type: Some("Condition".into()),
        resource_id: None,
        target_patient: Some("p-456".into()),
        rule: Some("user-search".into()),
        purpose_of_use: Some("TREAT".into()),
        ..patient_read()
    }
}

/// A clinician whose scopes do not cover observations reading one under break-the-glass,
/// stating two purposes of use.
fn break_glass_read() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a8061".into(),
        request_id: "req-0011".into(),
        client_id: Some("ward-app".into()),
        patient: None,
        scopes: Some("openid fhirUser user/Patient.rs".into()),
        path: "/fhir/Observation/obs-9".into(),
        resource_type: Some("Observation".into()),
        resource_id: Some("obs-9".into()),
        target_patient: None,
        reason: "break_glass".into(),
        rule: Some("break-glass".into()),
        purpose_of_use: Some("TREAT BTG".into()),
        break_glass: true,
        ..patient_read()
    }
}

/// A patient-scoped app naming another patient than its own: refused, both patients named.
fn other_patient() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a805f".into(),
        request_id: "req-0009".into(),
        path: "/fhir/Patient/p-999".into(),
        resource_id: Some("p-999".into()),
        target_patient: Some("p-999".into()),
        decision: AuditDecision::Deny,
        reason: "other_patient".into(),
        status: 403,
        upstream_status: None,
        ..patient_read()
    }
}

/// A backend service (`system/` scopes, no user) deleting a resource.
fn backend_delete() -> AuditRecord {
    AuditRecord {
        record_id: "01890a5d-ac96-774b-bcce-b302099a8060".into(),
        request_id: "req-0010".into(),
        client_id: Some("nightly-cleanup".into()),
        subject: None,
        fhir_user: None,
        patient: None,
        scopes: Some("system/Observation.d".into()),
        method: "DELETE".into(),
        path: "/fhir/Observation/o-5".into(),
        interaction: Some("delete".into()),
        resource_type: Some("Observation".into()),
        resource_id: Some("o-5".into()),
        target_patient: None,
        rule: Some("system-delete".into()),
        status: 204,
        upstream_status: Some(204),
        ..patient_read()
    }
}

/// Every case, named, for the samples the R4 validator checks.
fn cases() -> Vec<(&'static str, AuditRecord)> {
    vec![
        ("patient-read", patient_read()),
        ("search", search()),
        ("create", create()),
        ("insufficient-scope", insufficient_scope()),
        ("missing-token", missing_token()),
        ("upstream-failure", upstream_failure()),
        ("filtered-search", filtered_search()),
        ("user-target-patient", user_target_patient()),
        ("break-glass-read", break_glass_read()),
        ("other-patient", other_patient()),
        ("backend-delete", backend_delete()),
    ]
}

fn event(record: &AuditRecord) -> Value {
    audit_event(record, &source())
}

/// The agent whose type has this code.
fn agent<'a>(event: &'a Value, code: &str) -> &'a Value {
    event["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no agent of type {code} in {event:#}"))
}

fn requestors(event: &Value) -> Vec<&Value> {
    let agents = event["agent"].as_array().unwrap();
    agents.iter().filter(|a| a["requestor"] == true).collect()
}

/// The entities whose role (or, for the exchange, type) has this code.
fn entities<'a>(event: &'a Value, code: &str) -> Vec<&'a Value> {
    let all = event["entity"].as_array().unwrap();
    all.iter()
        .filter(|e| e["role"]["code"] == code || e["type"]["code"] == code)
        .collect()
}

fn detail<'a>(event: &'a Value, kind: &str) -> Option<&'a str> {
    let exchange = entities(event, "XrequestId")[0];
    let details = exchange["detail"].as_array().unwrap();
    let found = details.iter().find(|d| d["type"] == kind)?;
    found["valueString"].as_str()
}

#[test]
fn patient_read_is_a_successful_rest_read() {
    let event = event(&patient_read());
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["id"], "01890a5d-ac96-774b-bcce-b302099a8057");
    assert_eq!(event["type"]["code"], "rest");
    assert_eq!(event["subtype"][0]["system"], RESTFUL_INTERACTION);
    assert_eq!(event["subtype"][0]["code"], "read");
    assert_eq!(event["action"], "R");
    assert_eq!(event["outcome"], "0");
    assert_eq!(event["recorded"], "2024-05-01T10:00:00.250Z");
    assert_eq!(event["period"]["start"], "2024-05-01T10:00:00.200Z");
    assert_eq!(event["period"]["end"], "2024-05-01T10:00:00.250Z");
    assert_eq!(
        event["outcomeDesc"],
        "allowed: forwarded to the FHIR server; rule patient-read"
    );
}

#[test]
fn read_makes_the_client_the_destination_and_the_user_the_requestor() {
    let event = event(&patient_read());
    let client = agent(&event, "110152");
    assert_eq!(
        client["who"]["identifier"],
        json!({ "system": ISSUER, "value": "growth-chart" })
    );
    assert_eq!(
        client["network"],
        json!({ "address": "203.0.113.9", "type": "2" })
    );
    assert_eq!(client["requestor"], false);
    assert!(client.get("policy").is_none());

    let server = agent(&event, "110153");
    assert_eq!(server["who"]["identifier"]["value"], "gw-test-1");
    assert_eq!(
        server["network"],
        json!({ "address": "https://gateway.example.test/fhir", "type": "5" })
    );

    let user = agent(&event, "IRCP");
    assert_eq!(user["requestor"], true);
    assert_eq!(
        user["who"]["identifier"],
        json!({ "system": ISSUER, "value": "user-42" })
    );
    assert_eq!(user["who"]["reference"], "Practitioner/pr-7");
    assert_eq!(user["name"], "Practitioner/pr-7");
    assert_eq!(
        user["policy"],
        json!(["urn:ietf:params:oauth:jti:jti-5f2c"])
    );
    assert!(user.get("network").is_none());
    assert_eq!(requestors(&event).len(), 1);
}

#[test]
fn read_names_the_patient_once_the_resource_and_the_request_id() {
    let event = event(&patient_read());
    let patients = entities(&event, "1");
    assert_eq!(patients.len(), 1, "context and target are the same patient");
    assert_eq!(patients[0]["what"]["reference"], "Patient/p-123");
    assert_eq!(patients[0]["type"]["code"], "1");

    let data = entities(&event, "4");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["what"]["reference"], "Patient/p-123");
    assert_eq!(data[0]["type"]["code"], "2");
    assert!(data[0].get("description").is_none());

    let exchange = entities(&event, "XrequestId");
    assert_eq!(exchange.len(), 1);
    assert_eq!(
        exchange[0]["type"]["system"],
        "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
    );
    assert_eq!(exchange[0]["what"]["identifier"]["value"], "req-0001");
    assert_eq!(detail(&event, "decision"), Some("allow"));
    assert_eq!(detail(&event, "status"), Some("200"));
    assert_eq!(detail(&event, "request"), Some("GET /fhir/Patient/p-123"));
}

#[test]
fn source_is_the_gateway_instance_as_a_security_server() {
    let event = event(&patient_read());
    assert_eq!(
        event["source"]["observer"]["identifier"]["value"],
        "gw-test-1"
    );
    assert_eq!(event["source"]["observer"]["display"], "fhirgate gw-test-1");
    assert_eq!(event["source"]["site"], "example-site");
    assert_eq!(event["source"]["type"][0]["system"], SOURCE_TYPE);
    assert_eq!(event["source"]["type"][0]["code"], "6");
}

#[test]
fn search_records_the_query_in_base64_and_as_text() {
    let event = event(&search());
    assert_eq!(event["subtype"][0]["code"], "search-type");
    assert_eq!(event["action"], "E");
    assert_eq!(
        agent(&event, "110153")["who"]["identifier"]["value"],
        "growth-chart"
    );
    assert_eq!(
        agent(&event, "110152")["who"]["identifier"]["value"],
        "gw-test-1"
    );

    let query = entities(&event, "24");
    assert_eq!(query.len(), 1);
    let raw = STANDARD
        .decode(query[0]["query"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, b"GET /fhir/Observation?patient=p-123&code=8302-2");
    assert_eq!(
        query[0]["description"],
        "/fhir/Observation?patient=p-123&code=8302-2"
    );
    assert_eq!(query[0]["type"]["code"], "2");
    for absent in ["what", "name", "detail"] {
        assert!(query[0].get(absent).is_none(), "query entity has {absent}");
    }
    assert!(entities(&event, "4").is_empty());
}

#[test]
fn create_names_the_type_and_makes_the_client_the_source() {
    let event = event(&create());
    assert_eq!(event["subtype"][0]["code"], "create");
    assert_eq!(event["action"], "C");
    assert_eq!(
        agent(&event, "110153")["who"]["identifier"]["value"],
        "growth-chart"
    );
    let data = entities(&event, "4");
    assert_eq!(data[0]["what"], json!({ "type": "Observation" }));
    assert_eq!(data[0]["description"], "/fhir/Observation");
    assert_eq!(
        entities(&event, "1")[0]["what"]["reference"],
        "Patient/p-123"
    );
}

#[test]
fn insufficient_scope_is_a_minor_failure_with_reason_and_rule() {
    let event = event(&insufficient_scope());
    assert_eq!(event["outcome"], "4");
    assert_eq!(
        event["outcomeDesc"],
        "insufficient_scope: the token's scopes do not cover the request; rule no-covering-scope"
    );
    assert_eq!(event["action"], "R");
    assert_eq!(
        entities(&event, "4")[0]["what"]["reference"],
        "MedicationRequest/mr-1"
    );
    assert_eq!(detail(&event, "decision"), Some("deny"));
    assert_eq!(detail(&event, "rule"), Some("no-covering-scope"));
    assert_eq!(detail(&event, "status"), Some("403"));
    assert!(detail(&event, "upstream-status").is_none());
}

#[test]
fn missing_token_keeps_a_client_known_by_its_address_alone() {
    let event = event(&missing_token());
    assert_eq!(event["outcome"], "4");
    assert!(event.get("subtype").is_none(), "unclassified: no subtype");
    assert_eq!(event["action"], "R", "a GET, judged by its method");
    let agents = event["agent"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "client and server, no user");
    let client = agent(&event, "110152");
    assert!(client.get("who").is_none());
    assert!(client.get("policy").is_none());
    assert_eq!(client["network"]["address"], "203.0.113.9");
    assert_eq!(client["requestor"], true);
    assert_eq!(requestors(&event).len(), 1);
    assert!(entities(&event, "1").is_empty());
    assert!(detail(&event, "scope").is_none());
    assert_eq!(detail(&event, "request"), Some("GET /fhir/Patient/p-123"));
}

#[test]
fn upstream_failure_is_a_serious_failure_although_allowed() {
    let event = event(&upstream_failure());
    assert_eq!(event["outcome"], "8");
    assert!(
        event["outcomeDesc"]
            .as_str()
            .unwrap()
            .starts_with("upstream_unavailable: the FHIR server was unavailable")
    );
    assert_eq!(detail(&event, "decision"), Some("allow"));
    assert_eq!(detail(&event, "status"), Some("502"));
}

#[test]
fn upstream_error_status_is_named_in_the_outcome_text() {
    let record = AuditRecord {
        status: 503,
        upstream_status: Some(503),
        ..patient_read()
    };
    let event = event(&record);
    assert_eq!(event["outcome"], "8");
    assert_eq!(
        event["outcomeDesc"],
        "allowed: forwarded to the FHIR server; the FHIR server answered 503; rule patient-read"
    );
    assert_eq!(detail(&event, "upstream-status"), Some("503"));
}

#[test]
fn filtered_search_says_how_many_entries_were_withheld() {
    let event = event(&filtered_search());
    assert_eq!(event["outcome"], "0");
    assert_eq!(
        event["outcomeDesc"],
        "allowed: forwarded to the FHIR server; 3 entries withheld from the response; rule patient-search"
    );
    assert_eq!(detail(&event, "decision"), Some("filter"));
    assert_eq!(detail(&event, "withheld"), Some("3"));
}

#[test]
fn user_access_names_the_target_patient_and_the_purpose() {
    let event = event(&user_target_patient());
    let patients = entities(&event, "1");
    assert_eq!(patients.len(), 1);
    assert_eq!(patients[0]["what"]["reference"], "Patient/p-456");
    let purpose = json!([{ "coding": [{ "system": ACT_REASON, "code": "TREAT" }] }]);
    assert_eq!(event["purposeOfEvent"], purpose);
    assert_eq!(agent(&event, "IRCP")["purposeOfUse"], purpose);
    assert!(agent(&event, "110153").get("purposeOfUse").is_none());
    assert_eq!(detail(&event, "break-glass"), None);
}

#[test]
fn break_the_glass_is_marked_and_carries_every_purpose() {
    let event = event(&break_glass_read());
    assert_eq!(event["outcome"], "0");
    assert_eq!(
        event["outcomeDesc"],
        "break_glass: forwarded to the FHIR server under break-the-glass: the token's scopes \
         did not cover it, an emergency purpose of use did; rule break-glass"
    );
    let purposes = json!([
        { "coding": [{ "system": ACT_REASON, "code": "TREAT" }] },
        { "coding": [{ "system": ACT_REASON, "code": "BTG" }] },
    ]);
    assert_eq!(event["purposeOfEvent"], purposes);
    assert_eq!(agent(&event, "IRCP")["purposeOfUse"], purposes);
    assert_eq!(detail(&event, "break-glass"), Some("true"));
    assert_eq!(detail(&event, "reason"), Some("break_glass"));
    assert_eq!(detail(&event, "rule"), Some("break-glass"));
    // Without a user the client is the requestor and carries the purposes.
    let app_only = AuditRecord {
        subject: None,
        fhir_user: None,
        ..break_glass_read()
    };
    let event = audit_event(&app_only, &source());
    assert_eq!(agent(&event, "110152")["purposeOfUse"], purposes);
}

#[test]
fn a_patient_other_than_the_one_in_context_makes_two_patient_entities() {
    let event = event(&other_patient());
    let patients: Vec<_> = entities(&event, "1")
        .iter()
        .map(|e| e["what"]["reference"].clone())
        .collect();
    assert_eq!(
        patients,
        vec![json!("Patient/p-123"), json!("Patient/p-999")]
    );
    assert_eq!(event["outcome"], "4");
}

#[test]
fn backend_delete_uses_the_delete_roles_and_the_client_as_requestor() {
    let event = event(&backend_delete());
    assert_eq!(event["action"], "D");
    let client = agent(&event, "110150");
    assert_eq!(client["requestor"], true);
    assert_eq!(
        client["policy"],
        json!(["urn:ietf:params:oauth:jti:jti-5f2c"])
    );
    assert_eq!(agent(&event, "custodian")["requestor"], false);
    assert_eq!(requestors(&event).len(), 1);
    assert_eq!(detail(&event, "scope"), Some("system/Observation.d"));
}

#[test]
fn scopes_and_token_ids_stay_out_of_the_free_text() {
    for (name, record) in cases() {
        let event = event(&record);
        let desc = event["outcomeDesc"].as_str().unwrap();
        assert!(
            !desc.contains("patient/") && !desc.contains("jti"),
            "{name}: {desc}"
        );
    }
}

#[test]
fn token_ids_outside_a_urn_are_percent_encoded() {
    let record = AuditRecord {
        token_id: Some("a b%c/d".into()),
        ..patient_read()
    };
    let policy = &event(&record)["agent"][2]["policy"][0];
    assert_eq!(policy, "urn:ietf:params:oauth:jti:a%20b%25c/d");
}

#[test]
fn interactions_map_to_actions_and_subtypes() {
    let cases = [
        ("vread", false, "R", Some("vread")),
        ("history-instance", true, "R", Some("history-instance")),
        ("update", true, "U", Some("update")),
        ("patch", true, "U", Some("patch")),
        ("search-system", false, "E", Some("search-system")),
        ("search-compartment", false, "E", Some("search")),
        ("history-type", false, "E", Some("history-type")),
        ("page-continuation", false, "E", None),
        ("operation", true, "E", Some("operation")),
        ("batch", false, "E", Some("batch")),
        ("transaction", false, "E", Some("transaction")),
        ("capabilities", false, "R", Some("capabilities")),
        ("smart-configuration", false, "R", None),
    ];
    for (code, instance, action, subtype) in cases {
        let kind = Kind::of_interaction(code, instance).unwrap();
        assert_eq!((kind.action, kind.subtype), (action, subtype), "{code}");
    }
    assert!(Kind::of_interaction("unheard-of", false).is_none());
}

#[test]
fn unknown_interactions_are_judged_by_method() {
    for (method, action) in [
        ("POST", "C"),
        ("PUT", "U"),
        ("DELETE", "D"),
        ("OPTIONS", "E"),
    ] {
        let record = AuditRecord {
            method: method.into(),
            interaction: Some("unheard-of".into()),
            ..missing_token()
        };
        assert_eq!(event(&record)["action"], action, "{method}");
    }
}

#[test]
fn batch_bundle_puts_each_event_at_its_id() {
    let events: Vec<Value> = [patient_read(), search()].iter().map(event).collect();
    let bundle = batch_bundle(&events);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "batch");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0]["request"],
        json!({ "method": "PUT", "url": "AuditEvent/01890a5d-ac96-774b-bcce-b302099a8057" })
    );
    assert_eq!(entries[1]["resource"], events[1]);
    assert!(entries[0].get("fullUrl").is_none());
}

#[test]
fn batch_bundle_posts_an_event_without_id() {
    let bundle = batch_bundle(&[json!({ "resourceType": "AuditEvent" })]);
    assert_eq!(
        bundle["entry"][0]["request"],
        json!({ "method": "POST", "url": "AuditEvent" })
    );
}

fn batch_response(statuses: &[Value]) -> Vec<u8> {
    let entries: Vec<Value> = statuses.iter().map(|r| json!({ "response": r })).collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": entries });
    serde_json::to_vec(&bundle).unwrap()
}

#[test]
fn batch_acknowledged_accepts_every_entry_stored() {
    let body = batch_response(&[
        json!({ "status": "201 Created" }),
        json!({ "status": "200" }),
    ]);
    batch_acknowledged(&body, 2).unwrap();
    batch_acknowledged(&batch_response(&[]), 0).unwrap();
}

#[test]
fn batch_acknowledged_refuses_a_short_answer() {
    let body = batch_response(&[json!({ "status": "201 Created" })]);
    let error = batch_acknowledged(&body, 2).unwrap_err();
    assert!(
        matches!(error, BatchError::EntryCount { sent: 2, found: 1 }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "the batch response has 1 entries for 2 sent"
    );
}

#[test]
fn batch_acknowledged_refuses_other_bundle_types_and_resources() {
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction-response" });
    let error = batch_acknowledged(&serde_json::to_vec(&bundle).unwrap(), 0).unwrap_err();
    assert!(matches!(&error, BatchError::WrongType { found } if found == "transaction-response"));

    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": "security", "diagnostics": "not allowed" }],
    });
    let error = batch_acknowledged(&serde_json::to_vec(&outcome).unwrap(), 1).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the batch response is OperationOutcome, not a Bundle: not allowed"
    );

    let error = batch_acknowledged(b"<html>bad gateway</html>", 1).unwrap_err();
    assert!(matches!(error, BatchError::NotJson(_)));
    let error = batch_acknowledged(b"[]", 1).unwrap_err();
    assert!(matches!(&error, BatchError::NotABundle { found, .. } if found == "not a JSON object"));
}

#[test]
fn batch_acknowledged_names_the_failed_entry_and_its_diagnostics() {
    let failed = json!({
        "status": "400 Bad Request",
        "outcome": {
            "resourceType": "OperationOutcome",
            "issue": [
                { "severity": "error", "code": "invalid", "diagnostics": "AuditEvent.agent: minimum required = 1" },
                { "severity": "error", "code": "invalid", "details": { "text": "bad period" } },
            ],
        },
    });
    let body = batch_response(&[json!({ "status": "201 Created" }), failed, json!({})]);
    let error = batch_acknowledged(&body, 3).unwrap_err();
    match &error {
        BatchError::EntryFailed {
            index,
            status,
            diagnostics,
        } => {
            assert_eq!((*index, status.as_str()), (1, "400 Bad Request"));
            assert_eq!(
                diagnostics.as_deref(),
                Some("AuditEvent.agent: minimum required = 1; bad period")
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        error
            .to_string()
            .starts_with("Bundle.entry[1] was not stored: status 400")
    );

    let body = batch_response(&[json!({ "status": "201 Created" }), json!({})]);
    let error = batch_acknowledged(&body, 2).unwrap_err();
    assert_eq!(
        error.to_string(),
        "Bundle.entry[1] was not stored: status (none)"
    );
}

/// Where the samples go: `FHIRGATE_AUDIT_EVENT_SAMPLES` when set (kept for the R4
/// validator), a fresh folder under the system's temporary folder otherwise (removed).
fn samples_folder() -> (PathBuf, bool) {
    match std::env::var_os("FHIRGATE_AUDIT_EVENT_SAMPLES") {
        Some(dir) => (PathBuf::from(dir), true),
        None => {
            let name = format!("fhirgate-audit-events-{}", std::process::id());
            (std::env::temp_dir().join(name), false)
        }
    }
}

fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap();
    std::fs::write(path, text + "\n").unwrap();
}

#[test]
fn writes_one_sample_per_case_and_their_batch() {
    let (folder, keep) = samples_folder();
    std::fs::create_dir_all(&folder).unwrap();
    let mut events = Vec::new();
    for (name, record) in cases() {
        let event = event(&record);
        write_json(&folder.join(format!("{name}.json")), &event);
        events.push(event);
    }
    write_json(&folder.join("batch.json"), &batch_bundle(&events));

    for (name, _) in cases() {
        let text = std::fs::read_to_string(folder.join(format!("{name}.json"))).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["resourceType"], "AuditEvent", "{name}");
    }
    if !keep {
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
