//! Break-the-glass through the whole gateway: a clinician's `user/` token whose scopes do not
//! cover Observation reads it when the token (or, where configured, a header) states the
//! emergency purpose of use `BTG`; everything else stays refused before the upstream, and every
//! record says which purposes the request stated.

mod support;

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};
use support::*;

const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#;
const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

/// Break-the-glass with its defaults: `BTG` in the token's claim, reads and searches.
const DEFAULTS: &str = "break_glass: {}\n";
/// Break-the-glass that also reads the `X-Purpose-Of-Use` header.
const WITH_HEADER: &str = "break_glass:\n  header: \"X-Purpose-Of-Use\"\n";

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world_with(sections: &str, upstream_extra: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Observation/obs-A1", 200, OBS_A1);
    fhir.route("PUT", "Observation/obs-A1", 200, OBS_A1);
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let searchset = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{OBS_A1},"search":{{"mode":"match"}}}}]}}"#
    );
    fhir.route("GET", "Observation", 200, &searchset);
    let gateway =
        TestGateway::start_with_sections(&idp, fhir.addr, "", upstream_extra, sections).await;
    World { idp, fhir, gateway }
}

async fn world(sections: &str) -> World {
    world_with(sections, "").await
}

/// A clinician's token: `user/Patient.rs` only, a named user, no patient in context, and
/// `purpose` as its purpose-of-use claim when given.
fn clinician(issuer: &str, purpose: Option<Value>) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": issuer,
        "aud": "https://gw.test/fhir",
        "sub": "clinician-1",
        "client_id": "ward-app",
        "fhirUser": "Practitioner/pr-1",
        "iat": now - 10,
        "exp": now + 300,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": "openid fhirUser user/Patient.rs",
    });
    if let Some(purpose) = purpose {
        claims["purpose_of_use"] = purpose;
    }
    claims
}

fn token(claims: &Value) -> String {
    sign("rsa-a", Some("rsa-a"), claims)
}

fn btg(world: &World) -> String {
    token(&clinician(&world.idp.issuer, Some(json!("BTG"))))
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn send(
    world: &World,
    method: reqwest::Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let write = method == reqwest::Method::PUT;
    let mut request = client()
        .request(method, format!("{}/{path}", world.gateway.base))
        .bearer_auth(token)
        .header("accept", "application/fhir+json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if write {
        request = request
            .header("content-type", "application/fhir+json")
            .body(OBS_A1);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn get(world: &World, path: &str, token: &str) -> Answer {
    send(world, reqwest::Method::GET, path, token, &[]).await
}

fn refused_for_scope(answer: &Answer) {
    assert_eq!(answer.status, 403, "{}", answer.body);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    assert!(!answer.headers.contains_key("x-fhirgate-break-glass"));
}

#[tokio::test]
async fn a_clinician_stating_btg_reads_what_the_scopes_do_not_cover_and_the_record_says_so() {
    let w = world(DEFAULTS).await;
    let token = btg(&w);
    let read = get(&w, "Observation/obs-A1", &token).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.headers["x-fhirgate-break-glass"], "BTG");
    assert!(read.body.contains("obs-A1"));
    let search = get(&w, "Observation?patient=pat-A", &token).await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert_eq!(search.headers["x-fhirgate-break-glass"], "BTG");
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].uri.ends_with("/fhir/Observation/obs-A1"),
        "{}",
        seen[0].uri
    );
    // Without identity headers the upstream is not told.
    assert!(!seen[0].headers.contains_key("x-fhirgate-break-glass"));

    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 2);
    for record in &audit {
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["reason"], "break_glass", "{record}");
        assert_eq!(record["rule"], "break-glass", "{record}");
        assert_eq!(record["break_glass"], true, "{record}");
        assert_eq!(record["purpose_of_use"], "BTG", "{record}");
        assert_eq!(record["status"], 200, "{record}");
    }
}

#[tokio::test]
async fn without_an_emergency_purpose_the_read_is_refused_before_the_upstream() {
    let w = world(DEFAULTS).await;
    let plain = token(&clinician(&w.idp.issuer, None));
    refused_for_scope(&get(&w, "Observation/obs-A1", &plain).await);
    let treatment = token(&clinician(&w.idp.issuer, Some(json!(["TREAT"]))));
    refused_for_scope(&get(&w, "Observation/obs-A1", &treatment).await);
    assert!(w.fhir.seen().is_empty());

    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 2);
    for record in &audit {
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["reason"], "insufficient_scope", "{record}");
        assert!(record.get("break_glass").is_none(), "{record}");
    }
    assert!(audit[0].get("purpose_of_use").is_none(), "{}", audit[0]);
    // A purpose that breaks nothing is recorded all the same.
    assert_eq!(audit[1]["purpose_of_use"], "TREAT");
}

#[tokio::test]
async fn a_write_stays_refused_under_the_default_read_only_emergency() {
    let w = world(DEFAULTS).await;
    let token = btg(&w);
    let write = send(&w, reqwest::Method::PUT, "Observation/obs-A1", &token, &[]).await;
    refused_for_scope(&write);
    assert!(w.fhir.seen().is_empty());
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "insufficient_scope");
    assert_eq!(audit[0]["purpose_of_use"], "BTG");
    assert!(audit[0].get("break_glass").is_none());
}

#[tokio::test]
async fn a_patient_token_stating_btg_is_still_refused() {
    let w = world(WITH_HEADER).await;
    let mut claims = claims(&w.idp.issuer, "launch/patient patient/Patient.rs");
    claims["purpose_of_use"] = json!("BTG");
    let token = token(&claims);
    let header = [("x-purpose-of-use", "BTG")];
    let search = send(
        &w,
        reqwest::Method::GET,
        "Observation?patient=pat-A",
        &token,
        &header,
    )
    .await;
    refused_for_scope(&search);
    assert!(w.fhir.seen().is_empty());
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "insufficient_scope");
    assert_eq!(audit[0]["purpose_of_use"], "BTG");
}

#[tokio::test]
async fn the_header_counts_only_where_configured() {
    let header = [("x-purpose-of-use", "TREAT, BTG")];
    let configured = world(WITH_HEADER).await;
    let plain = token(&clinician(&configured.idp.issuer, None));
    let read = send(
        &configured,
        reqwest::Method::GET,
        "Observation/obs-A1",
        &plain,
        &header,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.headers["x-fhirgate-break-glass"], "BTG");
    let audit = configured.gateway.stop().await;
    assert_eq!(audit[0]["purpose_of_use"], "TREAT BTG");
    assert_eq!(audit[0]["break_glass"], true);

    let claim_only = world(DEFAULTS).await;
    let plain = token(&clinician(&claim_only.idp.issuer, None));
    let refused = send(
        &claim_only,
        reqwest::Method::GET,
        "Observation/obs-A1",
        &plain,
        &header,
    )
    .await;
    refused_for_scope(&refused);
    assert!(claim_only.fhir.seen().is_empty());
    let audit = claim_only.gateway.stop().await;
    // The header is not read at all when it is not configured.
    assert!(audit[0].get("purpose_of_use").is_none(), "{}", audit[0]);
}

#[tokio::test]
async fn break_the_glass_is_off_by_default() {
    let w = world("").await;
    let token = btg(&w);
    refused_for_scope(&get(&w, "Observation/obs-A1", &token).await);
    assert!(w.fhir.seen().is_empty());
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "insufficient_scope");
    assert_eq!(audit[0]["purpose_of_use"], "BTG");
}

#[tokio::test]
async fn only_the_gateway_says_a_request_broke_the_glass() {
    let w = world_with(DEFAULTS, "  identity_headers: true").await;
    w.fhir
        .route_headers("GET", "Patient/pat-A", &[("x-fhirgate-break-glass", "BTG")]);
    w.fhir.route_headers(
        "GET",
        "Observation/obs-A1",
        &[("x-fhirgate-break-glass", "X")],
    );
    let token = btg(&w);
    // Covered by the token's own scopes: no break-the-glass, and the upstream's copy is gone.
    let own = send(
        &w,
        reqwest::Method::GET,
        "Patient/pat-A",
        &token,
        &[("x-fhirgate-break-glass", "BTG")],
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(!own.headers.contains_key("x-fhirgate-break-glass"));
    let emergency = get(&w, "Observation/obs-A1", &token).await;
    assert_eq!(emergency.status, 200, "{}", emergency.body);
    assert_eq!(emergency.headers["x-fhirgate-break-glass"], "BTG");
    let seen = w.fhir.seen();
    // The client's copy never reaches the upstream; the gateway's does, with identity headers.
    assert!(!seen[0].headers.contains_key("x-fhirgate-break-glass"));
    assert_eq!(seen[1].headers["x-fhirgate-break-glass"], "BTG");
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "allowed");
    assert!(audit[0].get("break_glass").is_none());
    assert_eq!(audit[0]["purpose_of_use"], "BTG");
    assert_eq!(audit[1]["reason"], "break_glass");
}

/// An RFC 7662 endpoint answering every token with one answer.
async fn introspection(answer: Value) -> String {
    let answer = Arc::new(answer.to_string());
    let addr = spawn_server(move |_req| {
        let answer = answer.clone();
        async move {
            respond(
                StatusCode::OK,
                "application/json",
                answer.as_str().to_owned(),
            )
        }
    })
    .await;
    format!("http://{addr}/introspect")
}

#[tokio::test]
async fn an_opaque_token_states_its_purpose_in_the_introspection_answer() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Observation/obs-A1", 200, OBS_A1);
    let now = jsonwebtoken::get_current_timestamp();
    let endpoint = introspection(json!({
        "active": true, "iss": idp.issuer, "aud": "https://gw.test/fhir",
        "exp": now + 300, "client_id": "ward-app", "sub": "clinician-1",
        "fhirUser": "Practitioner/pr-1", "scope": "user/Patient.rs",
        "purpose_of_use": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}],
    }))
    .await;
    let secret = secret_file("s3cret");
    let extra = format!(
        "    introspection:\n      endpoint: \"{endpoint}\"\n      client_id: \"fhirgate\"\n      auth: client_secret_post\n      client_secret_file: \"{secret}\""
    );
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, &extra, "", DEFAULTS).await;
    let response = client()
        .get(format!("{}/Observation/obs-A1", gateway.base))
        .bearer_auth("opaque-clinician-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-fhirgate-break-glass"], "BTG");
    assert_eq!(fhir.seen().len(), 1);
    let audit = gateway.stop().await;
    assert_eq!(audit[0]["reason"], "break_glass");
    assert_eq!(audit[0]["purpose_of_use"], "BTG");
}
