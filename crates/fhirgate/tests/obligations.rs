//! The obligations the policy attaches to writes, carried out by the proxy against a recording
//! FHIR server: target and match pre-checks, `If-None-Exist` narrowing, Bundle entry refusals.

mod support;

use serde_json::Value;
use support::*;

const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","subject":{"reference":"Patient/pat-A"}}"#;
const OBS_B1: &str = r#"{"resourceType":"Observation","id":"obs-B1","status":"final","subject":{"reference":"Patient/pat-B"}}"#;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world() -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Observation/obs-A1", 200, OBS_A1);
    fhir.route("GET", "Observation/obs-B1", 200, OBS_B1);
    fhir.route("DELETE", "Observation/obs-A1", 204, "");
    fhir.route("DELETE", "Observation", 204, "");
    fhir.route("POST", "Observation", 201, OBS_A1);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    World { idp, fhir, gateway }
}

fn token(world: &World, scope: &str) -> String {
    sign("rsa-a", Some("rsa-a"), &claims(&world.idp.issuer, scope))
}

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

fn methods(fhir: &FakeFhir) -> Vec<String> {
    fhir.seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect()
}

#[tokio::test]
async fn instance_delete_checks_the_target_then_passes_the_empty_answer() {
    let w = world().await;
    let token = token(&w, "patient/Observation.rd");
    let http = client();
    let ok = http
        .delete(format!("{}/Observation/obs-A1", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        methods(&w.fhir),
        [
            "GET /fhir/Observation/obs-A1",
            "DELETE /fhir/Observation/obs-A1"
        ]
    );
    w.fhir.clear();
    let refused = http
        .delete(format!("{}/Observation/obs-B1", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(methods(&w.fhir), ["GET /fhir/Observation/obs-B1"]);
}

#[tokio::test]
async fn conditional_delete_is_refused_when_a_match_is_outside_the_grant() {
    let w = world().await;
    let token = token(&w, "patient/Observation.rds");
    let http = client();
    let url = format!("{}/Observation?patient=pat-A&code=x", w.gateway.base);

    // An upstream that ignores the patient criterion answers with pat-B's data too.
    w.fhir
        .route("GET", "Observation", 200, &searchset(&[OBS_A1, OBS_B1]));
    let refused = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(methods(&w.fhir).iter().all(|m| m.starts_with("GET ")));

    w.fhir.clear();
    w.fhir
        .route("GET", "Observation", 200, &searchset(&[OBS_A1]));
    let ok = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 204);
    let seen = methods(&w.fhir);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].starts_with("DELETE /fhir/Observation?patient=pat-A&code=x"));

    w.fhir.clear();
    let unpinned = http
        .delete(format!("{}/Observation?code=x", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(unpinned.status(), 403);
    assert!(w.fhir.seen().is_empty());
}

#[tokio::test]
async fn conditional_create_narrows_if_none_exist() {
    let w = world().await;
    let token = token(&w, "patient/Observation.c");
    let response = client()
        .post(format!("{}/Observation", w.gateway.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=a%7C1")
        .body(OBS_A1.replace("\"id\":\"obs-A1\",", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = w.fhir.seen();
    assert_eq!(
        seen[0].headers["if-none-exist"],
        "identifier=a%7C1&subject=Patient%2Fpat-A"
    );
}

#[tokio::test]
async fn a_refused_transaction_names_its_entry() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"GET","url":"Patient/pat-A"}},
        {"request":{"method":"GET","url":"https://gw.test/fhir/Patient/pat-B"}}]}"#;
    let response = client()
        .post(&w.gateway.base)
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[1]");
    assert!(w.fhir.seen().is_empty());
}

#[tokio::test]
async fn a_batch_answered_per_entry_forwards_only_allowed_entries_and_checks_each_answer() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let gateway = TestGateway::start(
        &idp,
        fhir.addr,
        "policy:\n  refused_batch_entries: answer-in-batch",
    )
    .await;
    // An upstream that ignores the narrowing and answers a read of pat-B's record as asked.
    let patient_a = r#"{"resourceType":"Patient","id":"pat-A"}"#;
    let answer = format!(
        r#"{{"resourceType":"Bundle","type":"batch-response","entry":[
        {{"resource":{patient_a},"response":{{"status":"200 OK"}}}},
        {{"resource":{},"response":{{"status":"200 OK"}}}},
        {{"resource":{OBS_B1},"response":{{"status":"200 OK"}}}}]}}"#,
        searchset(&[OBS_A1, OBS_B1])
    );
    fhir.route("POST", "", 200, &answer);
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient/pat-A"}},
        {"request":{"method":"GET","url":"Patient/pat-B"}},
        {"request":{"method":"GET","url":"Observation?code=x"}},
        {"request":{"method":"GET","url":"Observation/obs-B1"}}]}"#;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .post(&gateway.base)
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();

    let seen = fhir.seen();
    assert_eq!(seen.len(), 1, "one Bundle upstream");
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    let urls: Vec<&str> = sent["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "Patient/pat-A",
            "Observation?code=x&subject=Patient%2Fpat-A",
            "Observation/obs-B1"
        ],
        "the refused entry never reaches the upstream; the search is narrowed"
    );

    assert!(!text.contains("obs-B1"), "pat-B's record leaked: {text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    let entries = doc["entry"].as_array().unwrap();
    let statuses: Vec<&str> = entries
        .iter()
        .map(|e| &e["response"]["status"].as_str().unwrap()[..3])
        .collect();
    assert_eq!(statuses, ["200", "403", "200", "403"]);
    assert_eq!(
        entries[1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1]"
    );
    let found: Vec<&str> = entries[2]["resource"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(found.contains(&"obs-A1"), "{found:?}");
    let records = gateway.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["decision"], "filter");
    assert_eq!(records[0]["rule"], "batch-entries-decided-alone");
    assert_eq!(records[0]["withheld"], 2);
}
