//! The token pipeline through a running gateway: opaque tokens by introspection (cache,
//! coalescing, revocation, outages, client authentication), claim mapping for other identity
//! providers' shapes, `typ` and lifetime rules, and the verified-token cache.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const PATIENT_123: &str = r#"{"resourceType":"Patient","id":"123","name":[{"family":"Okta"}]}"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Fail500,
    Hang,
}

/// What a request to the fake introspection endpoint carried.
#[derive(Clone, Debug)]
struct Call {
    authorization: Option<String>,
    form: HashMap<String, String>,
}

/// A fake RFC 7662 endpoint: answers per token, counts and records calls.
struct FakeIntrospection {
    url: String,
    answers: Arc<Mutex<HashMap<String, Value>>>,
    mode: Arc<Mutex<Mode>>,
    calls: Arc<Mutex<Vec<Call>>>,
    count: Arc<AtomicUsize>,
}

impl FakeIntrospection {
    async fn start() -> Self {
        let answers: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let (a, m, c, n) = (answers.clone(), mode.clone(), calls.clone(), count.clone());
        let addr = spawn_server(move |req: Request<Incoming>| {
            let (answers, mode, calls, count) = (a.clone(), m.clone(), c.clone(), n.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let authorization = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: HashMap<String, String> =
                    form_urlencoded(&String::from_utf8_lossy(&body));
                calls.lock().unwrap().push(Call {
                    authorization,
                    form: form.clone(),
                });
                // Make concurrent callers overlap, so coalescing is visible.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mode = *mode.lock().unwrap();
                match mode {
                    Mode::Fail500 => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "no"),
                    Mode::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        respond(StatusCode::OK, "application/json", "{}")
                    }
                    Mode::Serve => {
                        let token = form.get("token").cloned().unwrap_or_default();
                        let answer = answers
                            .lock()
                            .unwrap()
                            .get(&token)
                            .cloned()
                            .unwrap_or(json!({"active": false}));
                        respond(StatusCode::OK, "application/json", answer.to_string())
                    }
                }
            }
        })
        .await;
        Self {
            url: format!("http://{addr}/introspect"),
            answers,
            mode,
            calls,
            count,
        }
    }

    fn set(&self, token: &str, answer: Value) {
        self.answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer);
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last_call(&self) -> Call {
        self.calls.lock().unwrap().last().cloned().unwrap()
    }
}

fn form_urlencoded(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn active(patient: &str, scope: &str) -> Value {
    json!({
        "active": true,
        "scope": scope,
        "patient": patient,
        "client_id": "opaque-app",
        "sub": "user-O",
        "exp": now() + 300,
    })
}

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    introspection: FakeIntrospection,
    gateway: TestGateway,
}

/// A gateway trusting the JWT issuer `idp` and a second, opaque-only issuer checked at the
/// fake introspection endpoint; `introspection_extra` is added to that issuer's
/// `introspection` block and `issuer_extra` to the JWT issuer's.
async fn world_with(issuer_extra: &str, introspection_extra: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a"), jwk("ec-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Patient/123", 200, PATIENT_123);
    let introspection = FakeIntrospection::start().await;
    let secret = secret_file("s3cret:with/odd chars");
    let extra = format!(
        r#"{issuer_extra}
  - issuer: "https://opaque.idp.test"
    audience: "https://gw.test/fhir"
    jwt: false
    introspection:
      endpoint: "{url}"
      client_id: "fhirgate"
      client_secret_file: "{secret}"
{introspection_extra}"#,
        url = introspection.url
    );
    let gateway = TestGateway::start(&idp, fhir.addr, &extra).await;
    World {
        idp,
        fhir,
        introspection,
        gateway,
    }
}

async fn world() -> World {
    world_with("", "").await
}

async fn get(world: &World, path: &str, token: &str) -> (u16, http::HeaderMap, String) {
    let response = client()
        .get(format!("{}/{path}", world.gateway.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn issue_code(body: &str) -> String {
    let outcome: Value = serde_json::from_str(body).unwrap();
    outcome["issue"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_active_opaque_token_is_mapped_like_a_jwt() {
    let w = world().await;
    w.introspection
        .set("opaque-1", active("Patient/pat-A", "patient/*.rs"));
    let (status, _, body) = get(&w, "Patient/pat-A", "opaque-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, PATIENT_A);
    let (status, _, _) = get(&w, "Patient/123", "opaque-1").await;
    assert_eq!(status, 403, "the introspected patient context applies");

    let call = w.introspection.last_call();
    assert_eq!(call.form["token"], "opaque-1");
    assert_eq!(call.form["token_type_hint"], "access_token");
    let basic = call.authorization.unwrap();
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        basic.trim_start_matches("Basic "),
    )
    .unwrap();
    // RFC 6749 2.3.1: id and secret are form-encoded before Basic encoding.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "fhirgate:s3cret%3Awith%2Fodd%20chars"
    );
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["client_id"], "opaque-app");
    assert_eq!(audit[0]["issuer"], "https://opaque.idp.test");
    let token_id = audit[0]["token_id"].as_str().unwrap();
    assert!(
        token_id.starts_with("sha256:") && token_id.len() == 39,
        "{token_id}"
    );
    assert!(!audit[0].to_string().contains("opaque-1"));
}

#[tokio::test]
async fn repeated_and_concurrent_uses_of_one_token_cost_one_introspection() {
    let w = world().await;
    w.introspection
        .set("opaque-2", active("pat-A", "patient/*.rs"));
    let base = w.gateway.base.clone();
    let requests = (0..40).map(|_| {
        let url = format!("{base}/Patient/pat-A");
        async move {
            client()
                .get(url)
                .bearer_auth("opaque-2")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_join_all(requests).await;
    assert!(statuses.iter().all(|s| s.as_u16() == 200), "{statuses:?}");
    let (status, _, _) = get(&w, "Patient/pat-A", "opaque-2").await;
    assert_eq!(status, 200);
    assert_eq!(w.introspection.calls(), 1);
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn inactive_and_unknown_opaque_tokens_are_invalid_token() {
    let w = world().await;
    w.introspection.set("revoked", json!({"active": false}));
    for token in ["revoked", "never-issued"] {
        let (status, headers, body) = get(&w, "Patient/pat-A", token).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(issue_code(&body), "unknown");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
    }
    assert!(w.fhir.seen().is_empty());
    let expired =
        json!({"active": true, "scope": "patient/*.rs", "patient": "pat-A", "exp": now() - 5});
    w.introspection.set("stale", expired);
    let (status, _, _) = get(&w, "Patient/pat-A", "stale").await;
    assert_eq!(status, 401, "an active answer past its exp is not trusted");
}

#[tokio::test]
async fn a_revoked_opaque_token_stops_working_within_the_cache_ttl() {
    let w = world_with("", "      max_ttl: \"1s\"\n      inactive_ttl: \"1s\"").await;
    w.introspection
        .set("opaque-3", active("pat-A", "patient/*.rs"));
    assert_eq!(get(&w, "Patient/pat-A", "opaque-3").await.0, 200);
    w.introspection.set("opaque-3", json!({"active": false}));
    assert_eq!(
        get(&w, "Patient/pat-A", "opaque-3").await.0,
        200,
        "still cached"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(get(&w, "Patient/pat-A", "opaque-3").await.0, 401);
    assert_eq!(w.introspection.calls(), 2);
}

#[tokio::test]
async fn introspection_outages_are_503_never_an_allow() {
    let w = world_with("", "      timeout: \"300ms\"").await;
    w.introspection
        .set("opaque-4", active("pat-A", "patient/*.rs"));
    for mode in [Mode::Fail500, Mode::Hang] {
        w.introspection.set_mode(mode);
        let (status, headers, body) = get(&w, "Patient/pat-A", "opaque-4").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(issue_code(&body), "transient");
        assert!(headers.contains_key("retry-after"));
    }
    assert!(w.fhir.seen().is_empty());
    w.introspection.set_mode(Mode::Serve);
    assert_eq!(
        get(&w, "Patient/pat-A", "opaque-4").await.0,
        200,
        "failures are not cached"
    );
}

/// During an introspection outage a token already in the cache keeps working until its entry
/// ends; a token not seen before is refused 503 and nothing of its request reaches the
/// upstream.
#[tokio::test]
async fn a_cached_opaque_token_outlives_an_introspection_outage() {
    let w = world_with("", "      timeout: \"300ms\"").await;
    for token in ["opaque-cached", "opaque-new"] {
        w.introspection
            .set(token, active("Patient/pat-A", "patient/*.rs"));
    }
    assert_eq!(get(&w, "Patient/pat-A", "opaque-cached").await.0, 200);
    w.introspection.set_mode(Mode::Fail500);
    let calls = w.introspection.calls();
    w.fhir.clear();
    let (status, _, body) = get(&w, "Patient/pat-A", "opaque-new").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        w.fhir.seen().is_empty(),
        "a refused request reached the upstream"
    );
    let (status, _, body) = get(&w, "Patient/pat-A", "opaque-cached").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.introspection.calls(),
        calls + 1,
        "only the new token was introspected"
    );
}

#[tokio::test]
async fn private_key_jwt_client_authentication() {
    let key = format!("{FIXTURES}/ec-a.pem");
    let w = world_with(
        "",
        &format!("      auth: private_key_jwt\n      private_key_file: \"{key}\""),
    )
    .await;
    w.introspection
        .set("opaque-5", active("pat-A", "patient/*.rs"));
    assert_eq!(get(&w, "Patient/pat-A", "opaque-5").await.0, 200);
    let call = w.introspection.last_call();
    assert!(call.authorization.is_none());
    assert_eq!(
        call.form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    let assertion = &call.form["client_assertion"];
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[&w.introspection.url]);
    validation.set_issuer(&["fhirgate"]);
    let public =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk("ec-a")).unwrap()).unwrap();
    let claims = jsonwebtoken::decode::<Value>(assertion, &public, &validation)
        .expect("the assertion is signed with the configured key")
        .claims;
    assert_eq!(claims["sub"], "fhirgate");
    assert!(claims["jti"].is_string());
}

#[tokio::test]
async fn an_okta_shaped_token_is_mapped_by_configuration() {
    let mapping =
        "    claims:\n      scope: [scp]\n      patient: [launch_patient]\n      client_id: [cid]";
    let w = world_with(mapping, "").await;
    let claims = json!({
        "iss": w.idp.issuer, "aud": "https://gw.test/fhir", "sub": "00u1",
        "cid": "0oa-okta-app", "scp": ["patient/Patient.rs", "launch/patient"],
        "launch_patient": "Patient/123", "iat": now() - 5, "exp": now() + 300, "jti": "okta-1",
    });
    let token = sign("rsa-a", Some("rsa-a"), &claims);
    let (status, _, body) = get(&w, "Patient/123", &token).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = get(&w, "Patient/pat-A", &token).await;
    assert_eq!(status, 403);
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["client_id"], "0oa-okta-app");
    assert_eq!(audit[0]["patient"], "123");
    assert_eq!(audit[0]["scopes"], "patient/Patient.rs launch/patient");
}

#[tokio::test]
async fn typ_and_lifetime_rules_apply_per_issuer() {
    let rules = "    required_typ: \"at+jwt\"\n    max_token_lifetime: \"1h\"";
    let w = world_with(rules, "").await;
    let base = claims(&w.idp.issuer, "patient/*.rs");
    let with_typ = |typ: Option<&str>, claims: &Value| {
        let pem = std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("rsa-a".into());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap()
    };
    for typ in ["at+jwt", "application/at+JWT"] {
        let (status, _, body) = get(&w, "Patient/pat-A", &with_typ(Some(typ), &base)).await;
        assert_eq!(status, 200, "{typ}: {body}");
    }
    for typ in [Some("JWT"), None] {
        let (status, _, body) = get(&w, "Patient/pat-A", &with_typ(typ, &base)).await;
        assert_eq!(status, 401, "{typ:?}");
        assert!(body.contains("token type"), "{body}");
    }
    let mut long = base.clone();
    long["exp"] = json!(now() + 7200);
    let (status, _, body) = get(&w, "Patient/pat-A", &with_typ(Some("at+jwt"), &long)).await;
    assert_eq!(status, 401);
    assert!(body.contains("lifetime"), "{body}");
    let mut no_iat = base.clone();
    no_iat.as_object_mut().unwrap().remove("iat");
    let (status, _, _) = get(&w, "Patient/pat-A", &with_typ(Some("at+jwt"), &no_iat)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_jwt_of_the_opaque_only_issuer_is_refused_without_any_fetch() {
    let w = world().await;
    let mut claims = claims("https://opaque.idp.test", "patient/*.rs");
    claims["iss"] = json!("https://opaque.idp.test");
    let token = sign("rsa-a", Some("rsa-a"), &claims);
    let fetches = w.idp.jwks_fetches();
    let (status, _, _) = get(&w, "Patient/pat-A", &token).await;
    assert_eq!(status, 401);
    assert_eq!(w.introspection.calls(), 0);
    assert_eq!(w.idp.jwks_fetches(), fetches);
}

#[tokio::test]
async fn an_unsigned_jwt_is_refused_without_introspection() {
    let w = world().await;
    // Like oidc-provider, the endpoint refuses JWT-shaped tokens with an error status: were
    // the token asked about, the answer would be a 503.
    w.introspection.set_mode(Mode::Fail500);
    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let claims = claims(&w.idp.issuer, "patient/*.rs");
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-a"})),
        b64(&claims)
    );
    let (status, headers, body) = get(&w, "Patient/pat-A", &unsigned).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(issue_code(&body), "unknown");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert_eq!(w.introspection.calls(), 0);
    assert!(w.fhir.seen().is_empty());
}

#[tokio::test]
async fn revocation_of_jwts_is_honoured_when_configured() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let introspection = FakeIntrospection::start().await;
    let secret = secret_file("s");
    let extra = format!(
        "    introspection:\n      endpoint: \"{}\"\n      client_id: \"fhirgate\"\n      client_secret_file: \"{secret}\"\n      introspect_jwts: true\n      max_ttl: \"1s\"",
        introspection.url
    );
    let gateway = TestGateway::start(&idp, fhir.addr, &extra).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    introspection.set(&token, active("pat-A", "patient/*.rs"));
    let url = format!("{}/Patient/pat-A", gateway.base);
    let status = |token: String| {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(token.clone()).await, 200);
    introspection.set(&token, json!({"active": false}));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(status(token.clone()).await, 401, "revoked at the issuer");
}

#[tokio::test]
async fn an_introspected_token_for_another_audience_is_invalid() {
    let w = world().await;
    let with_aud = |aud: Value| {
        let mut answer = active("Patient/pat-A", "patient/*.rs");
        answer["aud"] = aud;
        answer
    };
    w.introspection
        .set("other-api", with_aud(json!("https://other-api.test")));
    w.introspection.set(
        "other-list",
        with_aud(json!(["https://other-api.test", "urn:x"])),
    );
    w.introspection
        .set("ours", with_aud(json!(["urn:x", "https://gw.test/fhir"])));
    w.introspection
        .set("no-aud", active("Patient/pat-A", "patient/*.rs"));
    for (token, expected) in [
        ("other-api", 401),
        ("other-list", 401),
        ("ours", 200),
        ("no-aud", 200),
    ] {
        let (status, headers, body) = get(&w, "Patient/pat-A", token).await;
        assert_eq!(status, expected, "{token}: {body}");
        if expected == 401 {
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .contains("error=\"invalid_token\"")
            );
        }
    }
    assert_eq!(
        w.fhir.seen().len(),
        2,
        "only the gateway's own tokens got through"
    );
}
