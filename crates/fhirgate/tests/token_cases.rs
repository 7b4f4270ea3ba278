//! The token cases of `attack-cases.json` (kinds `jwt.*`, `jwks.*`, `introspection.*`,
//! `scopes.*`) sent through a running gateway, with an identity provider and a FHIR server
//! that record what reaches them.
//!
//! Single-request cases run from the table: each token is built as the case describes it
//! (header members verbatim, signed with the test key, an attacker key, HMAC or not at all),
//! and every expectation is asserted: status, OperationOutcome, challenge, whether the
//! upstream was reached, the audit decision. The multi-step cases (key storm, rotation,
//! revocation) have a test each that follows the case's steps and checks its per-step
//! expectations. Sibling tests cover the variants the cases list.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;
const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/pat-A"}}"#;

fn cases() -> (Value, Vec<Value>) {
    let conventions = corpus::corpus()["conventions"].clone();
    (conventions, corpus::cases_for("token_cases"))
}

fn case(id: &str) -> Value {
    cases().1.into_iter().find(|c| c["id"] == id).unwrap()
}

fn conventions_issuer(conventions: &Value) -> String {
    conventions["issuer"].as_str().unwrap().to_owned()
}

/// A loopback server that counts requests: stands in for an attacker's key host.
async fn sink() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = spawn_server(move |_req| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            respond(StatusCode::OK, "application/json", r#"{"keys":[]}"#)
        }
    })
    .await;
    (format!("http://{addr}/jwks.json"), hits)
}

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// The compact token a case describes: its header members kept verbatim (with the key ids of
/// the test keys and the attacker's key host swapped for loopback ones), signed as its
/// `signing` text says.
fn token_for(token: &Value, conventions: &Value, idp: &FakeIdp, attacker_jwks: &str) -> String {
    let claims = claims_for(
        token["claims"].as_object().unwrap(),
        &conventions_issuer(conventions),
        &idp.issuer,
    );
    let mut header = token["header"].clone();
    let signing = token["signing"].as_str().unwrap();
    let fields = header.as_object_mut().unwrap();
    if fields.get("kid").and_then(Value::as_str) == Some("k1") {
        fields.insert("kid".into(), json!("rsa-a"));
    }
    if fields.contains_key("jku") {
        fields.insert("jku".into(), json!(attacker_jwks));
    }
    if fields.contains_key("jwk") {
        let mut attacker = jwk("rsa-b");
        attacker["kid"] = json!("attacker");
        fields.insert("jwk".into(), attacker);
    }
    let input = format!("{}.{}", segment(&header), segment(&claims));
    let signature = if signing.starts_with("unsigned") {
        String::new()
    } else if signing.starts_with("HMAC-SHA256") {
        let key = EncodingKey::from_secret(&pem("rsa-a.pub.pem")).unwrap();
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap()
    } else {
        let key = if signing.contains("attacker") {
            "rsa-b"
        } else {
            assert!(
                signing.starts_with("signed with test key k1"),
                "unknown signing: {signing}"
            );
            "rsa-a"
        };
        let key = EncodingKey::from_rsa_pem(&pem(&format!("{key}.pem"))).unwrap();
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::RS256).unwrap()
    };
    format!("{input}.{signature}")
}

/// The Authorization header of a case without a token, its placeholders made real.
fn literal_authorization(case: &Value) -> Option<String> {
    let value = case["request"]["headers"]["Authorization"].as_str()?;
    Some(match case["id"].as_str().unwrap() {
        "B13" => format!("Bearer {}", ".".repeat(60_000)),
        _ => value.to_owned(),
    })
}

/// An RFC 7662 endpoint answering every token with the answer currently set.
struct FakeIntrospection {
    endpoint: String,
    answer: Arc<std::sync::Mutex<Value>>,
}

impl FakeIntrospection {
    async fn start() -> Self {
        let answer = Arc::new(std::sync::Mutex::new(json!({"active": false})));
        let current = answer.clone();
        let addr = spawn_server(move |_req| {
            let current = current.clone();
            async move {
                let body = current.lock().unwrap().to_string();
                respond(StatusCode::OK, "application/json", body)
            }
        })
        .await;
        Self {
            endpoint: format!("http://{addr}/introspect"),
            answer,
        }
    }

    fn answer(&self, value: Value) {
        *self.answer.lock().unwrap() = value;
    }
}

struct Sent {
    response: RawResponse,
    upstream: usize,
    request_id: String,
}

async fn send(
    gateway: &TestGateway,
    fhir: &FakeFhir,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Sent {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut headers = vec![
        ("accept".to_owned(), "application/fhir+json".to_owned()),
        ("x-request-id".to_owned(), request_id.clone()),
    ];
    if let Some(value) = authorization {
        headers.push(("authorization".to_owned(), value.to_owned()));
    }
    fhir.clear();
    let target = path.replace('|', "%7C");
    let response = send_raw(&gateway.base, method, &target, &headers, Bytes::new()).await;
    Sent {
        response,
        upstream: fhir.seen().len(),
        request_id,
    }
}

/// Everything a step's expectation says, checked against what happened.
fn check_step(expected: &Value, sent: &Sent, audit: &[Value], problems: &mut Vec<String>) {
    problems.extend(check_answer(expected, &sent.response));
    match expected["upstream_reached"] {
        Value::Bool(false) if sent.upstream > 0 => problems.push("upstream reached".into()),
        Value::Bool(true) if sent.upstream == 0 => problems.push("upstream not reached".into()),
        _ => {}
    }
    let lines: Vec<&Value> = audit
        .iter()
        .filter(|l| l["request_id"] == sent.request_id.as_str())
        .collect();
    if lines.len() != 1 {
        problems.push(format!("{} audit lines", lines.len()));
    } else if let Some(decision) = expected["audit_decision"].as_str()
        && lines[0]["decision"] != decision
    {
        problems.push(format!("audit decision {}", lines[0]["decision"]));
    }
}

async fn upstream() -> FakeFhir {
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route(
        "GET",
        "Observation",
        200,
        &format!(
            r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{OBS_A1}}}]}}"#
        ),
    );
    fhir.route("DELETE", "Observation/obs-A1", 204, "");
    fhir
}

#[tokio::test]
async fn single_request_token_cases_hold_through_the_proxy() {
    let (conventions, cases) = cases();
    let single: Vec<&Value> = cases
        .iter()
        .filter(|c| c["request"].get("sequence").is_none())
        .collect();
    assert!(single.len() >= 11, "only {} cases", single.len());
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let (attacker_jwks, attacker_hits) = sink().await;

    let mut sent = Vec::new();
    for case in &single {
        let request = &case["request"];
        let authorization = match request["token"] {
            Value::Null => literal_authorization(case),
            ref token => Some(format!(
                "Bearer {}",
                token_for(token, &conventions, &idp, &attacker_jwks)
            )),
        };
        let result = send(
            &gateway,
            &fhir,
            request["method"].as_str().unwrap(),
            request["path"].as_str().unwrap(),
            authorization.as_deref(),
        )
        .await;
        sent.push((*case, result));
    }
    let fetches = idp.jwks_fetches();
    let audit = gateway.stop().await;

    let mut failures = Vec::new();
    for (case, result) in &sent {
        let mut problems = Vec::new();
        check_step(&case["expected"], result, &audit, &mut problems);
        for problem in problems {
            failures.push(format!("{} ({}): {problem}", case["id"], case["kind"]));
        }
    }
    assert_eq!(attacker_hits.load(Ordering::SeqCst), 0, "a jku was fetched");
    // Start-up, then at most one fetch per cool-down for the unknown kids of B04/B05.
    assert!(fetches <= 2, "{fetches} JWKS fetches");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// B13's variants: whatever the shape of an oversized or many-segment token, a cheap 4xx
/// refusal that never reaches the upstream.
#[tokio::test]
async fn oversized_and_many_segment_tokens_are_refused_cheaply() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let long_base64 = format!(
        "{}.{}.{}",
        "a".repeat(32 * 1024),
        "b".repeat(32 * 1024),
        "c".repeat(512)
    );
    for (what, token) in [
        ("64 KiB with two dots", long_base64),
        ("10,000 segments", "a.".repeat(10_000)),
        ("60,000 dots", ".".repeat(60_000)),
    ] {
        let sent = send(
            &gateway,
            &fhir,
            "GET",
            "/fhir/Patient/pat-A",
            Some(&format!("Bearer {token}")),
        )
        .await;
        let status = sent.response.status;
        assert!(matches!(status, 400 | 401 | 431), "{what}: {status}");
        assert_eq!(sent.upstream, 0, "{what}");
    }
    // A header far beyond any token limit is refused by the HTTP layer itself.
    let huge = format!("Bearer {}", "a".repeat(1024 * 1024));
    let sent = send(&gateway, &fhir, "GET", "/fhir/Patient/pat-A", Some(&huge)).await;
    assert!(sent.response.status >= 400, "{}", sent.response.status);
    assert_eq!(sent.upstream, 0);
}

/// B18's variants: `scp` as a string, a type outside it, and `scope` winning over `scp`.
#[tokio::test]
async fn scp_variants_are_mapped_like_scope() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token_with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = claims(&idp.issuer, "");
        claims.as_object_mut().unwrap().remove("scope");
        edit(&mut claims);
        format!("Bearer {}", sign("rsa-a", Some("rsa-a"), &claims))
    };
    let entra = token_with(&|c| c["scp"] = json!("launch/patient patient/Observation.rs"));
    let path = "/fhir/Observation?patient=pat-A&code=http://loinc.org|8867-4";
    let sent = send(&gateway, &fhir, "GET", path, Some(&entra)).await;
    assert_eq!(sent.response.status, 200);
    let sent = send(
        &gateway,
        &fhir,
        "GET",
        "/fhir/Condition?patient=pat-A",
        Some(&entra),
    )
    .await;
    assert_eq!(sent.response.status, 403);
    assert_eq!(sent.upstream, 0);

    let both = token_with(&|c| {
        c["scope"] = json!("patient/Observation.rs");
        c["scp"] = json!(["patient/*.cruds"]);
    });
    let sent = send(
        &gateway,
        &fhir,
        "DELETE",
        "/fhir/Observation/obs-A1",
        Some(&both),
    )
    .await;
    assert_eq!(sent.response.status, 403, "scope wins over scp");
    assert_eq!(sent.upstream, 0);
}

/// B20's variants: an empty patient claim is no context; `Patient/pat-A` is normalised.
#[tokio::test]
async fn patient_claim_variants() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token_with = |patient: &str| {
        let mut claims = claims(&idp.issuer, "patient/Observation.rs patient/Patient.rs");
        claims["patient"] = json!(patient);
        format!("Bearer {}", sign("rsa-a", Some("rsa-a"), &claims))
    };
    let path = "/fhir/Observation?code=http://loinc.org|8867-4";
    let sent = send(&gateway, &fhir, "GET", path, Some(&token_with(""))).await;
    assert!(matches!(sent.response.status, 401 | 403));
    assert_eq!(sent.upstream, 0);
    let sent = send(
        &gateway,
        &fhir,
        "GET",
        "/fhir/Patient/pat-A",
        Some(&token_with("Patient/pat-A")),
    )
    .await;
    assert_eq!(sent.response.status, 200);
    let sent = send(
        &gateway,
        &fhir,
        "GET",
        "/fhir/Patient/pat-B",
        Some(&token_with("Patient/pat-A")),
    )
    .await;
    assert_eq!(sent.response.status, 403);
}

/// B15: a storm of unknown key ids costs at most one fetch and never blocks a valid token.
#[tokio::test]
async fn unknown_kid_storm_costs_one_fetch_and_never_blocks_a_valid_token() {
    let case = case("B15");
    let (conventions, _) = cases();
    let steps = case["request"]["sequence"].as_array().unwrap();
    let per_step = case["expected"]["per_step"].as_array().unwrap();
    let repeat = steps[0]["repeat"].as_u64().unwrap() as usize;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = Arc::new(TestGateway::start(&idp, fhir.addr, "").await);
    let base = gateway.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let mut storm = Vec::new();
    for n in 0..repeat {
        let mut token = steps[0]["request"]["token"].clone();
        token["header"]["kid"] = json!(format!("rand-{n}"));
        token["signing"] = json!("signed with an attacker key");
        let bearer = token_for(&token, &conventions, &idp, "");
        let url = format!("{base}/Patient/pat-A");
        let http = http.clone();
        storm.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
        if n == repeat / 2 {
            // Mid-storm, a valid token is served at once.
            let valid = token_for(&steps[1]["request"]["token"], &conventions, &idp, "");
            let sent = send(
                &gateway,
                &fhir,
                "GET",
                "/fhir/Patient/pat-A",
                Some(&format!("Bearer {valid}")),
            )
            .await;
            assert_eq!(
                sent.response.status,
                per_step[1]["status"].as_u64().unwrap() as u16,
                "the valid token mid-storm"
            );
        }
    }
    let expected_storm_status = per_step[0]["status"].as_u64().unwrap() as u16;
    for request in storm {
        assert_eq!(request.await.unwrap(), expected_storm_status);
    }
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "start-up plus one fetch for the whole storm"
    );
}

/// B16: a key added by the IdP is used after one fetch; a key it drops stops working once the
/// gateway refreshes.
#[tokio::test]
async fn rotation_adds_and_drops_keys() {
    let case = case("B16");
    let (conventions, _) = cases();
    let steps = case["request"]["sequence"].as_array().unwrap();
    let per_step = case["expected"]["per_step"].as_array().unwrap();
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "    jwks_refresh_interval: \"1s\"").await;

    // k2 is the test key rsa-b, published under its own key id.
    idp.set_keys(vec![jwk("rsa-a"), jwk("rsa-b")]);
    let mut claims = claims_for(
        steps[2]["request"]["token"]["claims"].as_object().unwrap(),
        &conventions_issuer(&conventions),
        &idp.issuer,
    );
    claims["jti"] = json!("b16-k2");
    let k2 = sign("rsa-b", Some("rsa-b"), &claims);
    let fetches_before = idp.jwks_fetches();
    let sent = send(
        &gateway,
        &fhir,
        "GET",
        "/fhir/Patient/pat-A",
        Some(&format!("Bearer {k2}")),
    )
    .await;
    assert_eq!(
        sent.response.status,
        per_step[2]["status"].as_u64().unwrap() as u16
    );
    assert!(idp.jwks_fetches() - fetches_before <= 1, "a single refetch");

    idp.set_keys(vec![jwk("rsa-b")]);
    let k1 = format!(
        "Bearer {}",
        token_for(&steps[4]["request"]["token"], &conventions, &idp, "")
    );
    // Wait until a background refresh has seen the new set.
    let seen = idp.jwks_fetches();
    for _ in 0..100 {
        if idp.jwks_fetches() > seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = send(&gateway, &fhir, "GET", "/fhir/Patient/pat-A", Some(&k1)).await;
    let audit = gateway.stop().await;
    let mut problems = Vec::new();
    check_step(&per_step[4], &sent, &audit, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
}

/// B17: an opaque token revoked at the authorization server stops working once the positive
/// cache entry expires, and not before the introspection answer says so.
#[tokio::test]
async fn a_revoked_opaque_token_stops_working_after_the_cache_ttl() {
    let case = case("B17");
    let per_step = case["expected"]["per_step"].as_array().unwrap();
    let introspection = FakeIntrospection::start().await;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = upstream().await;
    let secret = secret_file("s3cret");
    let extra = format!(
        "    introspection:\n      endpoint: \"{}\"\n      client_id: \"fhirgate\"\n      auth: client_secret_post\n      client_secret_file: \"{secret}\"\n      max_ttl: \"1s\"\n      inactive_ttl: \"1s\"",
        introspection.endpoint
    );
    let gateway = TestGateway::start(&idp, fhir.addr, &extra).await;
    let now = jsonwebtoken::get_current_timestamp();
    introspection.answer(json!({
        "active": true, "scope": "launch/patient patient/*.rs", "patient": "pat-A",
        "exp": now + 3600, "iss": idp.issuer, "aud": "https://gw.test/fhir", "client_id": "app-1",
    }));
    let bearer = "Bearer opaque-tok-1";
    let first = send(&gateway, &fhir, "GET", "/fhir/Patient/pat-A", Some(bearer)).await;

    introspection.answer(json!({"active": false}));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = send(&gateway, &fhir, "GET", "/fhir/Patient/pat-A", Some(bearer)).await;
    let audit = gateway.stop().await;
    let mut problems = Vec::new();
    check_step(&per_step[1], &first, &audit, &mut problems);
    check_step(&per_step[4], &after, &audit, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
}
