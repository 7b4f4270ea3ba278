//! The attack and regression cases of `attack-cases.json` (FHIR interaction, path and method
//! override kinds) sent through a running gateway to an upstream that records what reaches it.
//!
//! Every expectation of a case is asserted: status (or the accepted alternatives), content
//! type, the OperationOutcome's first issue code, the `WWW-Authenticate` content, whether the
//! upstream was reached, what the body must not contain, the audit decision, and the case's
//! invariants. Failures are collected so one run reports every case that does not hold.

mod support;

use bytes::Bytes;
use serde_json::Value;
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const PATIENT_B: &str = r#"{"resourceType":"Patient","id":"pat-B","name":[{"family":"Bravo"}]}"#;
const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/pat-A"},"valueQuantity":{"value":72}}"#;
const OBS_B1: &str = r#"{"resourceType":"Observation","id":"obs-B1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/pat-B"},"valueQuantity":{"value":91}}"#;

/// The upstream's data: two patients and one Observation each, plus the searches over them.
fn upstream_routes(fhir: &FakeFhir) {
    for (path, body) in [
        ("Patient/pat-A", PATIENT_A),
        ("Patient/pat-B", PATIENT_B),
        ("Observation/obs-A1", OBS_A1),
        ("Observation/obs-B1", OBS_B1),
        ("Patient/pat-A/_history/1", PATIENT_A),
        ("Patient/pat-B/_history/1", PATIENT_B),
    ] {
        fhir.route("GET", path, 200, body);
    }
    let searchset = |entries: &[&str]| {
        let entries: Vec<String> = entries
            .iter()
            .map(|r| format!(r#"{{"resource":{r},"search":{{"mode":"match"}}}}"#))
            .collect();
        format!(
            r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
            entries.join(",")
        )
    };
    fhir.route("GET", "Observation", 200, &searchset(&[OBS_A1, OBS_B1]));
    fhir.route("GET", "Patient", 200, &searchset(&[PATIENT_A, PATIENT_B]));
    fhir.route(
        "GET",
        "Patient/pat-B/Observation",
        200,
        &searchset(&[OBS_B1]),
    );
    fhir.route("GET", "_history", 200, &searchset(&[OBS_A1, OBS_B1]));
}

/// The request target as a client would send it: `|` percent-encoded, all else verbatim.
fn target_of(path: &str) -> String {
    path.replace('|', "%7C")
}

struct Outcome {
    request_id: String,
    expected_decision: Option<String>,
}

/// Sends one case and checks everything but the audit trail; returns what the audit must show.
async fn run_case(
    case: &Value,
    conventions: &Value,
    idp: &FakeIdp,
    fhir: &FakeFhir,
    gateway: &TestGateway,
    failures: &mut Vec<String>,
) -> Outcome {
    let id = case["id"].as_str().unwrap();
    let request = &case["request"];
    let expected = &case["expected"];
    let mut fail = |what: String| failures.push(format!("{id} ({}): {what}", case["kind"]));

    let token = &request["token"];
    let signing = token["signing"].as_str().unwrap_or_default();
    assert!(
        signing.starts_with("signed with test key k1"),
        "{id}: this suite signs with the test key only, not '{signing}'"
    );
    let claims = claims_for(
        token["claims"].as_object().unwrap(),
        conventions["issuer"].as_str().unwrap(),
        &idp.issuer,
    );
    let bearer = sign("rsa-a", Some("rsa-a"), &claims);

    let request_id = format!("{id}-{}", uuid::Uuid::new_v4());
    let mut headers: Vec<(String, String)> = request["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    headers.push(("authorization".into(), format!("Bearer {bearer}")));
    headers.push(("x-request-id".into(), request_id.clone()));
    let body = match &request["body"] {
        Value::Null => Bytes::new(),
        Value::String(text) => Bytes::from(text.clone()),
        other => Bytes::from(other.to_string()),
    };

    fhir.clear();
    let method = request["method"].as_str().unwrap();
    let target = target_of(request["path"].as_str().unwrap());
    let response = send_raw(&gateway.base, method, &target, &headers, body).await;
    let seen = fhir.seen();

    for problem in check_answer(expected, &response) {
        fail(problem);
    }

    match &expected["upstream_reached"] {
        Value::Bool(false) if !seen.is_empty() => fail(format!(
            "upstream reached: {:?}",
            seen.iter()
                .map(|s| format!("{} {}", s.method, s.uri))
                .collect::<Vec<_>>()
        )),
        Value::Bool(true) if seen.is_empty() => fail("upstream not reached".into()),
        _ => {}
    }

    let text = String::from_utf8_lossy(&response.body);
    for forbidden in expected["response_body_must_not_contain"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let forbidden = forbidden.as_str().unwrap();
        if text.contains(forbidden) {
            fail(format!("response body contains '{forbidden}'"));
        }
    }

    if case["kind"] == "http.method_override" {
        for s in &seen {
            for name in [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ] {
                if s.headers.contains_key(name) {
                    fail(format!("upstream received {name}"));
                }
            }
            if s.method != method {
                fail(format!("upstream saw {} instead of {method}", s.method));
            }
        }
        if response.status == 200 && seen.iter().any(|s| s.method != "GET") {
            fail("200 although the upstream did not see a plain GET".into());
        }
    }

    Outcome {
        request_id,
        expected_decision: expected["audit_decision"].as_str().map(str::to_owned),
    }
}

#[tokio::test]
async fn fhir_path_and_method_override_cases_hold_through_the_proxy() {
    let file = corpus::corpus();
    let conventions = &file["conventions"]["default_token"]["claims"]
        .as_object()
        .map(|claims| serde_json::json!({"issuer": claims["iss"]}))
        .unwrap();
    // Token, rate-limit and raw-HTTP kinds have suites of their own (support/corpus.rs).
    let cases = corpus::cases_for("attack_cases");
    assert!(cases.len() >= 17, "only {} cases selected", cases.len());

    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    upstream_routes(&fhir);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;

    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for case in &cases {
        outcomes.push(run_case(case, conventions, &idp, &fhir, &gateway, &mut failures).await);
    }

    let audit = gateway.stop().await;
    for outcome in outcomes {
        let lines: Vec<&Value> = audit
            .iter()
            .filter(|line| line["request_id"] == outcome.request_id.as_str())
            .collect();
        if lines.len() != 1 {
            failures.push(format!(
                "{}: {} audit lines",
                outcome.request_id,
                lines.len()
            ));
            continue;
        }
        if let Some(decision) = outcome.expected_decision
            && lines[0]["decision"] != decision.as_str()
        {
            failures.push(format!(
                "{}: audit decision {}, expected {decision}",
                outcome.request_id, lines[0]["decision"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
