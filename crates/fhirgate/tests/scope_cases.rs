//! The SMART scope cases (G*, I*, U*, S*) of `scope-cases.json` sent through a running gateway
//! to an upstream that records what reaches it.
//!
//! - `allow`: the upstream receives the request; with no `patient/` scope it receives it
//!   unchanged (same method, path and query).
//! - `allow-with-filter`: the upstream receives the request (possibly narrowed) and nothing of
//!   the other patient comes back.
//! - `deny`: the upstream receives nothing; the client gets the case's status and issue code as
//!   an OperationOutcome, with `error="insufficient_scope"` on a 403.
//!
//! Bodies described in prose in the case file, and fhirgate's documented policy choices where
//! they differ from the case file, come from `scope-case-inputs.json`, shared with the policy
//! crate's own run of the same cases.

mod support;

use bytes::Bytes;
use serde_json::Value;
use support::*;

const CASES: &str = include_str!("../../fhirgate-policy/tests/data/scope-cases.json");
const INPUTS: &str = include_str!("../../fhirgate-policy/tests/data/scope-case-inputs.json");

const PATIENT_123: &str = r#"{"resourceType":"Patient","id":"123","name":[{"family":"Ahlberg"}]}"#;
const PATIENT_456: &str = r#"{"resourceType":"Patient","id":"456","name":[{"family":"Brennan"}]}"#;
const OBS_1: &str = r#"{"resourceType":"Observation","id":"obs1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},"subject":{"reference":"Patient/123"}}"#;
const OBS_2: &str = r#"{"resourceType":"Observation","id":"obs2","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1234-5"}]},"subject":{"reference":"Patient/456"}}"#;
const COND_2: &str =
    r#"{"resourceType":"Condition","id":"cond2","subject":{"reference":"Patient/456"}}"#;
const PRACTITIONER: &str =
    r#"{"resourceType":"Practitioner","id":"prac1","name":[{"family":"Osei"}]}"#;

/// Text that only the other patient's data contains.
const OTHER_PATIENT_MARKERS: &[&str] = &["Brennan", "obs2", "cond2", "Patient/456\""];

fn searchset(resources: &[&str]) -> String {
    let entries: Vec<String> = resources
        .iter()
        .map(|r| format!(r#"{{"resource":{r},"search":{{"mode":"match"}}}}"#))
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
        entries.join(",")
    )
}

/// The upstream's data: patients 123 and 456, each with records, answering every GET a case
/// can lead to with both patients' data where a search would return both.
fn upstream_routes(fhir: &FakeFhir) {
    for (path, body) in [
        ("Patient/123", PATIENT_123),
        ("Patient/456", PATIENT_456),
        ("Observation/obs1", OBS_1),
        ("Observation/obs1/_history/3", OBS_1),
        ("Practitioner/prac1", PRACTITIONER),
    ] {
        fhir.route("GET", path, 200, body);
    }
    let mixed = searchset(&[OBS_1, OBS_2, COND_2, PATIENT_456]);
    for path in [
        "Observation",
        "Condition",
        "Patient",
        "",
        "_history",
        "Observation/obs1/_history",
        "Patient/123/*",
        "Patient/123/$everything",
    ] {
        fhir.route("GET", path, 200, &mixed);
    }
    fhir.route("POST", "Observation/_search", 200, &mixed);
    fhir.route(
        "POST",
        "",
        200,
        r#"{"resourceType":"Bundle","type":"batch-response","entry":[]}"#,
    );
}

struct Inputs {
    bodies: serde_json::Map<String, Value>,
    content_types: serde_json::Map<String, Value>,
    overrides: Vec<Value>,
}

impl Inputs {
    fn load() -> Self {
        let doc: Value = serde_json::from_str(INPUTS).unwrap();
        Self {
            bodies: doc["bodies"].as_object().unwrap().clone(),
            content_types: doc["content_types"].as_object().unwrap().clone(),
            overrides: doc["overrides"].as_array().unwrap().clone(),
        }
    }

    fn expected<'a>(&'a self, case: &'a Value) -> &'a str {
        let id = &case["id"];
        self.overrides
            .iter()
            .find(|o| o["id"] == *id)
            .map(|o| o["expected"].as_str().unwrap())
            .unwrap_or_else(|| case["expected"].as_str().unwrap())
    }
}

fn header_list(case: &Value, inputs: &Inputs, body: &Bytes) -> Vec<(String, String)> {
    let id = case["id"].as_str().unwrap();
    let mut headers: Vec<(String, String)> = case["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let has_type = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !has_type {
        let content_type = inputs.content_types.get(id).and_then(Value::as_str);
        headers.push((
            "content-type".into(),
            content_type.unwrap_or("application/fhir+json").into(),
        ));
    }
    headers
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

async fn run_case(
    case: &Value,
    inputs: &Inputs,
    idp: &FakeIdp,
    fhir: &FakeFhir,
    gateway: &TestGateway,
    failures: &mut Vec<String>,
) {
    let id = case["id"].as_str().unwrap();
    let expected = inputs.expected(case);
    let mut fail = |what: String| failures.push(format!("{id} (expected {expected}): {what}"));
    assert_eq!(
        case["token"], "valid",
        "{id}: only valid-token cases run here"
    );

    let scopes = case["scopes"].as_str().unwrap_or_default();
    let mut claims = claims(&idp.issuer, scopes);
    match case["patient"].as_str() {
        Some(patient) => claims["patient"] = patient.into(),
        None => {
            claims.as_object_mut().unwrap().remove("patient");
        }
    }
    let bearer = sign("rsa-a", Some("rsa-a"), &claims);
    let body = match inputs.bodies.get(id) {
        None => Bytes::new(),
        Some(Value::String(form)) => Bytes::from(form.clone()),
        Some(json) => Bytes::from(json.to_string()),
    };
    let mut headers = header_list(case, inputs, &body);
    headers.push(("authorization".into(), format!("Bearer {bearer}")));
    let method = case["method"].as_str().unwrap();
    let target = format!(
        "/fhir{}",
        case["path"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .replace('|', "%7C")
            .replace('{', "%7B")
            .replace('}', "%7D")
    );

    fhir.clear();
    let response = send_raw(&gateway.base, method, &target, &headers, body).await;
    let seen = fhir.seen();
    let text = String::from_utf8_lossy(&response.body);

    match expected {
        "deny" => {
            let status = case["status"].as_u64().unwrap_or(403) as u16;
            let code = case["issueCode"].as_str().unwrap_or("forbidden");
            if response.status != status {
                fail(format!("status {}: {text}", response.status));
            }
            let outcome: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            if outcome["issue"][0]["code"] != code {
                fail(format!(
                    "issue code {}, expected {code}",
                    outcome["issue"][0]["code"]
                ));
            }
            if status == 403 {
                let challenge = response
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !challenge.contains("error=\"insufficient_scope\"") {
                    fail(format!("challenge '{challenge}'"));
                }
            }
            if !seen.is_empty() {
                fail(format!(
                    "upstream reached: {:?}",
                    seen.iter()
                        .map(|s| format!("{} {}", s.method, s.uri))
                        .collect::<Vec<_>>()
                ));
            }
        }
        "allow" | "allow-with-filter" => {
            // A HEAD may be forwarded as a GET when the response must be checked.
            let forwarded: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.method == method || (method == "HEAD" && s.method == "GET"))
                .collect();
            if forwarded.is_empty() {
                fail(format!(
                    "request not forwarded (status {}): {text}",
                    response.status
                ));
            }
            if response.status == 401 || response.status == 403 {
                fail(format!("refused with {}: {text}", response.status));
            }
            let unconfined = !scopes.contains("patient/");
            if expected == "allow" && unconfined {
                let (path, query) = split_target(&target);
                for s in &forwarded {
                    let (seen_path, seen_query) = split_target(&s.uri);
                    if seen_path != path || seen_query != query {
                        fail(format!("forwarded as {} instead of {target}", s.uri));
                    }
                }
            }
            if case["patient"].is_string() && !unconfined {
                for marker in OTHER_PATIENT_MARKERS {
                    if text.contains(marker) {
                        fail(format!("response contains the other patient's '{marker}'"));
                    }
                }
            }
        }
        other => panic!("{id}: unknown expectation {other}"),
    }
}

#[tokio::test]
async fn scope_cases_hold_through_the_proxy() {
    let file: Value = serde_json::from_str(CASES).unwrap();
    let inputs = Inputs::load();
    let cases: Vec<&Value> = file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"].as_str().unwrap().starts_with(['G', 'I', 'U', 'S']))
        .collect();
    assert!(cases.len() >= 60, "only {} cases", cases.len());

    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    upstream_routes(&fhir);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;

    let mut failures = Vec::new();
    for case in &cases {
        run_case(case, &inputs, &idp, &fhir, &gateway, &mut failures).await;
    }
    let audit = gateway.stop().await;
    assert_eq!(audit.len(), cases.len(), "one audit record per case");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
