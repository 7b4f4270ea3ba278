//! The gateway end to end in one process: a fake identity provider and a recording FHIR
//! server on loopback, real HTTP in between.

mod support;

use serde_json::{Value, json};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const PATIENT_B: &str = r#"{"resourceType":"Patient","id":"pat-B","name":[{"family":"Bravo"}]}"#;
const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"},"valueQuantity":{"value":1.50}}"#;
const OBS_B1: &str = r#"{"resourceType":"Observation","id":"obs-B1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-B"},"valueQuantity":{"value":7.0}}"#;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world() -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a"), jwk("ec-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Patient/pat-B", 200, PATIENT_B);
    fhir.route("GET", "Observation/obs-A1", 200, OBS_A1);
    fhir.route("GET", "Observation/obs-B1", 200, OBS_B1);
    fhir.route(
        "GET",
        "metadata",
        200,
        r#"{"resourceType":"CapabilityStatement"}"#,
    );
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":2,"entry":[{{"fullUrl":"x/Observation/obs-A1","resource":{OBS_A1},"search":{{"mode":"match"}}}},{{"fullUrl":"x/Observation/obs-B1","resource":{OBS_B1},"search":{{"mode":"match"}}}}]}}"#
    );
    fhir.route("GET", "Observation", 200, &bundle);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    World { idp, fhir, gateway }
}

fn token(world: &World, scope: &str) -> String {
    sign("rsa-a", Some("rsa-a"), &claims(&world.idp.issuer, scope))
}

async fn get(world: &World, path: &str, token: Option<&str>) -> (u16, http::HeaderMap, String) {
    let mut request = client().get(format!("{}/{path}", world.gateway.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn issue_code(body: &str) -> String {
    let outcome: Value = serde_json::from_str(body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{body}");
    outcome["issue"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn no_token_gets_a_bare_challenge_and_never_reaches_upstream() {
    let w = world().await;
    let (status, headers, body) = get(&w, "Patient/pat-A", None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"fhirgate\"");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    assert_eq!(issue_code(&body), "login");
    assert!(w.fhir.seen().is_empty());
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["reason"], "no_token");
}

#[tokio::test]
async fn own_patient_read_passes_byte_for_byte_without_the_token() {
    let w = world().await;
    let token = token(&w, "launch/patient patient/*.rs");
    let (status, headers, body) = get(&w, "Patient/pat-A", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, PATIENT_A);
    assert!(headers.contains_key("x-request-id"));
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1");
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["interaction"], "read");
    assert_eq!(audit[0]["patient"], "pat-A");
    assert!(!audit[0].to_string().contains(&token));
}

#[tokio::test]
async fn another_patients_records_are_refused() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let (status, headers, body) = get(&w, "Patient/pat-B", Some(&token)).await;
    assert_eq!(status, 403);
    assert_eq!(issue_code(&body), "forbidden");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    assert!(
        w.fhir.seen().is_empty(),
        "Patient/pat-B is refused before the upstream"
    );

    let (status, _, body) = get(&w, "Observation/obs-B1", Some(&token)).await;
    assert_eq!(status, 403);
    assert!(!body.contains("pat-B") && !body.contains("7.0"), "{body}");

    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "other_patient");
    assert_eq!(audit[1]["reason"], "response_outside_grant");
}

#[tokio::test]
async fn searches_are_narrowed_and_filtered_to_the_patient() {
    let w = world().await;
    let token = token(&w, "patient/Observation.rs");
    let (status, _, body) = get(&w, "Observation?code=x", Some(&token)).await;
    assert_eq!(status, 200);
    let seen = w.fhir.seen();
    assert!(seen[0].uri.contains("pat-A"), "narrowed: {}", seen[0].uri);
    assert!(
        body.contains(OBS_A1),
        "kept entries are byte-identical: {body}"
    );
    assert!(!body.contains("obs-B1"));
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["withheld"], 1);
}

#[tokio::test]
async fn a_search_naming_another_patient_is_refused() {
    let w = world().await;
    let token = token(&w, "patient/Observation.rs");
    for query in [
        "patient=pat-B",
        "subject=Patient/pat-B",
        "patient=Patient%2Fpat-B",
    ] {
        let (status, _, body) = get(&w, &format!("Observation?{query}"), Some(&token)).await;
        assert!(
            status == 403 || !body.contains("obs-B1"),
            "{query}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn writes_with_read_scopes_never_reach_upstream() {
    let w = world().await;
    let token = token(&w, "patient/*.read");
    let http = client();
    let post = http
        .post(format!("{}/Observation", w.gateway.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(OBS_A1.replace("\"id\":\"obs-A1\",", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    let delete = http
        .delete(format!("{}/Observation/obs-A1", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
    assert!(w.fhir.seen().is_empty());
}

#[tokio::test]
async fn missing_type_scope_is_insufficient_scope() {
    let w = world().await;
    let token = token(&w, "patient/Patient.rs");
    let (status, headers, _) = get(&w, "Observation?patient=pat-A", Some(&token)).await;
    assert_eq!(status, 403);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"fhirgate\", error=\"insufficient_scope\""
    );
}

#[tokio::test]
async fn bad_tokens_are_invalid_token() {
    let w = world().await;
    let issuer = w.idp.issuer.clone();
    let mut expired = claims(&issuer, "patient/*.rs");
    expired["exp"] = (jsonwebtoken::get_current_timestamp() - 60).into();
    let mut other_audience = claims(&issuer, "patient/*.rs");
    other_audience["aud"] = "https://other-api.test".into();
    let mut other_issuer = claims("https://evil.test", "patient/*.rs");
    other_issuer["aud"] = "https://gw.test/fhir".into();
    let valid = claims(&issuer, "patient/*.rs");
    let cases = [
        ("expired", sign("rsa-a", Some("rsa-a"), &expired), "expired"),
        (
            "audience",
            sign("rsa-a", Some("rsa-a"), &other_audience),
            "unknown",
        ),
        (
            "issuer",
            sign("rsa-a", Some("rsa-a"), &other_issuer),
            "unknown",
        ),
        (
            "foreign key, known kid",
            sign("rsa-b", Some("rsa-a"), &valid),
            "unknown",
        ),
        (
            "foreign key, unknown kid",
            sign("rsa-b", Some("rsa-b"), &valid),
            "unknown",
        ),
        ("garbage", "abc.def.ghi".to_owned(), "unknown"),
    ];
    for (name, token, code) in cases {
        let (status, headers, body) = get(&w, "Patient/pat-A", Some(&token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(issue_code(&body), code, "{name}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
    assert!(w.fhir.seen().is_empty());
}

#[tokio::test]
async fn es256_tokens_are_accepted() {
    let w = world().await;
    let token = sign("ec-a", Some("ec-a"), &claims(&w.idp.issuer, "patient/*.rs"));
    let (status, _, _) = get(&w, "Patient/pat-A", Some(&token)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_unknown_kids_cost_one_fetch_per_cooldown() {
    let w = world().await;
    let fetches_at_start = w.idp.jwks_fetches();
    assert_eq!(fetches_at_start, 1);

    // A storm of made-up key ids: one shared fetch, then the cool-down holds.
    let mut storm = Vec::new();
    for i in 0..200 {
        let token = sign(
            "rsa-b",
            Some(&format!("kid-{i}")),
            &claims(&w.idp.issuer, "patient/*.rs"),
        );
        let url = format!("{}/Patient/pat-A", w.gateway.base);
        storm.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for request in storm {
        assert_eq!(request.await.unwrap(), 401);
    }
    assert_eq!(w.idp.jwks_fetches(), 2, "one fetch for the whole storm");
}

#[tokio::test]
async fn a_new_key_is_fetched_when_a_token_names_it() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    idp.set_keys(vec![jwk("rsa-b"), jwk("rsa-a")]);
    let token = sign("rsa-b", Some("rsa-b"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn keys_unavailable_at_start_is_503_not_401() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    idp.set_mode(JwksMode::Fail500);
    let fhir = FakeFhir::start().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(issue_code(&response.text().await.unwrap()), "transient");
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(fhir.seen().is_empty());
}

#[tokio::test]
async fn keys_survive_a_jwks_outage() {
    let w = world().await;
    w.idp.set_mode(JwksMode::Garbage);
    // An unknown kid makes the gateway fetch garbage; the old keys must stay usable.
    let stranger = sign(
        "rsa-b",
        Some("nope"),
        &claims(&w.idp.issuer, "patient/*.rs"),
    );
    let (status, _, _) = get(&w, "Patient/pat-A", Some(&stranger)).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&w, "Patient/pat-A", Some(&token(&w, "patient/*.rs"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_down_is_502_operation_outcome() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let gateway = TestGateway::start(&idp, dead, "").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert_eq!(issue_code(&body), "transient");
    assert!(
        !body.contains("127.0.0.1") && !body.contains("os error"),
        "{body}"
    );
}

#[tokio::test]
async fn metadata_is_public_and_refusals_speak_xml_when_asked() {
    let w = world().await;
    let (status, _, body) = get(&w, "metadata", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("CapabilityStatement"));
    let response = client()
        .get(format!("{}/Patient/pat-A?_format=xml", w.gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+xml")
    );
    let body = response.text().await.unwrap();
    assert!(
        body.starts_with("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
        "{body}"
    );
}

/// A request with `Accept` set, its status, headers and body.
async fn get_accepting(
    world: &World,
    path: &str,
    token: Option<&str>,
    accept: &str,
) -> (u16, http::HeaderMap, String) {
    let mut request = client()
        .get(format!("{}/{path}", world.gateway.base))
        .header("accept", accept);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn xml_for_a_checked_response_is_refused_before_the_upstream() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    for (path, accept) in [
        ("Observation/obs-A1?_format=xml", "application/fhir+json"),
        ("Observation/obs-A1", "application/fhir+xml"),
        ("Observation?_format=application/fhir%2Bxml", "*/*"),
    ] {
        let (status, headers, body) = get_accepting(&w, path, Some(&token), accept).await;
        assert_eq!(status, 406, "{path}: {body}");
        assert_eq!(
            headers["content-type"],
            "application/fhir+xml; charset=utf-8"
        );
        assert!(body.contains("<code value=\"not-supported\"/>"), "{body}");
        assert!(body.contains("_format=json"), "{body}");
    }
    assert!(w.fhir.seen().is_empty(), "nothing went upstream");
    let audit = w.gateway.stop().await;
    assert!(
        audit
            .iter()
            .all(|r| r["reason"] == "json_required" && r["status"] == 406)
    );
}

#[tokio::test]
async fn a_checked_response_is_asked_for_in_json_only() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let path = "Observation/obs-A1?_format=json&%5Fformat=application/fhir%2Bjson&_pretty=true";
    let (status, headers, body) =
        get_accepting(&w, path, Some(&token), "application/fhir+xml;q=0.1, */*").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, OBS_A1);
    assert_eq!(headers["content-type"], "application/fhir+json");
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].uri.contains("format"), "{}", seen[0].uri);
    assert!(seen[0].uri.contains("_pretty=true"), "{}", seen[0].uri);
    assert_eq!(seen[0].headers["accept"], "application/fhir+json");
}

#[tokio::test]
async fn an_unchecked_response_keeps_the_clients_format() {
    let w = world().await;
    // The launch patient's own Patient resource is read without a response check.
    let token = token(&w, "patient/*.rs");
    let (status, _, _) = get_accepting(
        &w,
        "Patient/pat-A?_format=xml",
        Some(&token),
        "application/fhir+xml",
    )
    .await;
    assert_eq!(status, 200);
    let seen = w.fhir.seen();
    assert!(seen[0].uri.ends_with("?_format=xml"), "{}", seen[0].uri);
    assert_eq!(seen[0].headers["accept"], "application/fhir+xml");
}

#[tokio::test]
async fn formats_the_gateway_does_not_write_are_406_in_json_after_other_refusals() {
    let w = world().await;
    let token = token(&w, "user/Patient.rs");
    for (path, accept) in [
        ("Patient/pat-A?_format=html", "application/fhir+xml"),
        ("Patient/pat-A", "text/html"),
        ("Patient/pat-A", "application/fhir+json; fhirVersion=3.0"),
        ("metadata?_format=ttl", "*/*"),
    ] {
        let (status, headers, body) = get_accepting(&w, path, Some(&token), accept).await;
        assert_eq!(status, 406, "{path} {accept}: {body}");
        assert_eq!(
            headers["content-type"],
            "application/fhir+json; charset=utf-8"
        );
        assert_eq!(issue_code(&body), "not-supported");
    }
    assert!(w.fhir.seen().is_empty(), "nothing went upstream");
    // Refusals decided earlier keep their status, in JSON.
    let (status, headers, body) = get_accepting(&w, "Patient/pat-A", None, "text/html").await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"fhirgate\"");
    assert_eq!(issue_code(&body), "login");
    let (status, _, body) =
        get_accepting(&w, "Observation/obs-A1?_format=html", Some(&token), "*/*").await;
    assert_eq!(status, 403);
    assert_eq!(issue_code(&body), "forbidden");
    let audit = w.gateway.stop().await;
    let reasons: Vec<&str> = audit
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "not_acceptable",
            "not_acceptable",
            "not_acceptable",
            "not_acceptable",
            "no_token",
            "insufficient_scope"
        ]
    );
}

#[tokio::test]
async fn every_request_has_exactly_one_audit_record() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let mut ids = Vec::new();
    for (i, path) in [
        "Patient/pat-A",
        "Patient/pat-B",
        "Observation/obs-B1",
        "metadata",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("audit-test-{i}");
        client()
            .get(format!("{}/{path}", w.gateway.base))
            .bearer_auth(&token)
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        ids.push(id);
    }
    let audit = w.gateway.stop().await;
    for id in &ids {
        let count = audit
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .count();
        assert_eq!(count, 1, "{id}");
    }
    let decisions: Vec<_> = audit
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allow", "deny", "deny", "allow"]);
}

#[tokio::test]
async fn a_slow_upstream_is_504_operation_outcome() {
    let w = world().await;
    w.fhir.route("GET", "Patient/slow", HANG, "");
    let token = token(&w, "user/*.rs");
    let (status, _, body) = get(&w, "Patient/slow", Some(&token)).await;
    assert_eq!(status, 504);
    assert_eq!(issue_code(&body), "timeout");
}

#[tokio::test]
async fn http2_clients_are_served() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!("{}/Patient/pat-A", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), PATIENT_A);
}

#[tokio::test]
async fn user_scopes_are_not_confined_to_a_patient() {
    let w = world().await;
    let token = token(&w, "user/Observation.rs");
    let (status, _, body) = get(&w, "Observation/obs-B1", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, OBS_B1);
    let (status, _, _) = get(&w, "Patient/pat-B", Some(&token)).await;
    assert_eq!(status, 403);
}

/// Sends one request on a raw keep-alive connection and leaves the connection open.
async fn idle_keep_alive_connection(base: &str, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 "));
    stream
}

#[tokio::test]
async fn shutdown_writes_the_audit_trail_while_idle_connections_stay_open() {
    let w = world().await;
    let base = w.gateway.base.clone();
    let fhir_connection = idle_keep_alive_connection(&base, "/fhir/metadata").await;
    let admin_connection = idle_keep_alive_connection(&w.gateway.admin, "/healthz").await;
    // Without a deadline a hang here would stall the whole suite; the drain itself is
    // immediate for idle connections.
    let audit = tokio::time::timeout(std::time::Duration::from_secs(60), w.gateway.stop())
        .await
        .expect("the gateway stops although idle connections hold it");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["path"], "/fhir/metadata");
    drop((fhir_connection, admin_connection));
}

#[tokio::test]
async fn metrics_count_decisions_key_fetches_and_cache_use() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    assert_eq!(get(&w, "Patient/pat-A", Some(&token)).await.0, 200);
    assert_eq!(get(&w, "Patient/pat-A", Some(&token)).await.0, 200);
    assert_eq!(get(&w, "Patient/pat-B", Some(&token)).await.0, 403);
    assert_eq!(get(&w, "Patient/pat-A", None).await.0, 401);
    let response = client()
        .get(format!("{}/metrics", w.gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let issuer = &w.idp.issuer;
    for line in [
        r#"fhirgate_requests_total{route="default",decision="allow",reason="allowed",interaction="read",status_class="2xx"} 2"#.to_owned(),
        r#"fhirgate_requests_total{route="default",decision="deny",reason="other_patient",interaction="read",status_class="4xx"} 1"#.to_owned(),
        r#"fhirgate_requests_total{route="default",decision="deny",reason="no_token",interaction="none",status_class="4xx"} 1"#.to_owned(),
        format!(r#"fhirgate_jwks_fetches_total{{issuer="{issuer}",outcome="ok"}} 2"#),
        r#"fhirgate_token_cache_lookups_total{cache="verified_tokens",result="miss"} 1"#.to_owned(),
        r#"fhirgate_token_cache_lookups_total{cache="verified_tokens",result="hit"} 2"#.to_owned(),
        r#"fhirgate_request_duration_seconds_count{route="default",interaction="read"} 3"#.to_owned(),
        r#"fhirgate_request_duration_seconds_count{route="default",interaction="none"} 1"#.to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line} in:\n{text}");
    }
    assert!(!text.contains("pat-A"), "no patient in metrics");
}

#[tokio::test]
async fn identity_headers_reach_the_upstream_only_from_the_token() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", "  identity_headers: true").await;
    let mut claims = claims(&idp.issuer, "launch/patient patient/*.rs");
    claims["encounter"] = json!("Encounter/enc-9");
    claims["fhirContext"] = json!([{ "reference": "Encounter/enc-9" }]);
    let token = sign("rsa-a", Some("rsa-a"), &claims);
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(&token)
        .header("x-fhirgate-patient", "pat-B")
        .header("x-fhirgate-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = &fhir.seen()[0].headers;
    assert_eq!(
        seen["x-fhirgate-patient"], "pat-A",
        "the token's, not the client's"
    );
    assert!(
        !seen.contains_key("x-fhirgate-role"),
        "client copies are removed"
    );
    assert_eq!(seen["x-fhirgate-client-id"], "app-1");
    assert_eq!(seen["x-fhirgate-subject"], "user-A");
    assert_eq!(seen["x-fhirgate-fhir-user"], "Patient/pat-A");
    assert_eq!(seen["x-fhirgate-encounter"], "enc-9");
    assert_eq!(
        seen["x-fhirgate-fhir-context"],
        r#"[{"reference":"Encounter/enc-9"}]"#
    );
    assert_eq!(seen["x-fhirgate-scope"], "launch/patient patient/*.rs");
    let audit = gateway.stop().await;
    assert_eq!(audit[0]["encounter"], "enc-9");
    assert_eq!(
        audit[0]["fhir_context"],
        r#"[{"reference":"Encounter/enc-9"}]"#
    );
}

#[tokio::test]
async fn without_identity_headers_client_copies_are_still_removed() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let response = client()
        .get(format!("{}/Patient/pat-A", w.gateway.base))
        .bearer_auth(&token)
        .header("x-fhirgate-patient", "pat-B")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = &w.fhir.seen()[0].headers;
    assert!(!seen.keys().any(|k| k.as_str().starts_with("x-fhirgate-")));
}

#[tokio::test]
async fn tokens_in_the_url_or_form_are_refused_and_never_recorded() {
    let w = world().await;
    let token = token(&w, "patient/*.rs");
    let http = client();
    for with_header in [false, true] {
        let mut request = http.get(format!(
            "{}/Patient/pat-A?access%5Ftoken={token}&_format=json",
            w.gateway.base
        ));
        if with_header {
            request = request.bearer_auth(&token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "header as well: {with_header}");
        assert_eq!(issue_code(&response.text().await.unwrap()), "invalid");
    }
    let form = http
        .post(format!("{}/Observation/_search", w.gateway.base))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code=x&access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 400);
    assert!(w.fhir.seen().is_empty(), "a URL token reached the upstream");
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 3);
    for record in &audit {
        assert!(
            !record.to_string().contains(&token),
            "token in the audit: {record}"
        );
    }
    assert_eq!(audit[0]["query"], "access%5Ftoken=[redacted]&_format=json");
}

#[tokio::test]
async fn audit_records_have_unique_ids_and_name_the_instance() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, "instance_id: \"gw-eu-1\"").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    for _ in 0..5 {
        client()
            .get(format!("{}/Patient/pat-A", gateway.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    let audit = gateway.stop().await;
    let ids: std::collections::HashSet<&str> = audit
        .iter()
        .map(|r| r["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "one distinct id per record");
    let mut ordered: Vec<&str> = audit
        .iter()
        .map(|r| r["record_id"].as_str().unwrap())
        .collect();
    let written = ordered.clone();
    ordered.sort_unstable();
    assert_eq!(ordered, written, "ids are time-ordered");
    assert!(audit.iter().all(|r| r["instance"] == "gw-eu-1"));
}
