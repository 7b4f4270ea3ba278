//! The gateway's own access token for the FHIR server, got by the client-credentials grant at
//! a fake token endpoint: what the endpoint is asked, what the upstream receives, refresh
//! before expiry, and what clients get while no token can be had.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;
const SECRET: &str = "s3cret/with+chars";

/// What the token endpoint saw of one request.
#[derive(Clone, Debug)]
struct TokenRequest {
    authorization: Option<String>,
    form: Vec<(String, String)>,
}

/// A token endpoint issuing `svc-1`, `svc-2`, ... with `expires_in`, or failing with the
/// status set by [`TokenEndpoint::fail_with`].
#[derive(Clone)]
struct TokenEndpoint {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<TokenRequest>>>,
    failing: Arc<AtomicU16>,
}

impl TokenEndpoint {
    async fn start(expires_in: u64) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let failing = Arc::new(AtomicU16::new(0));
        let lifetime = Arc::new(AtomicU64::new(expires_in));
        let (f, s, fail) = (fetches.clone(), seen.clone(), failing.clone());
        let addr = spawn_server(move |request: Request<Incoming>| {
            let (fetches, seen, failing, lifetime) =
                (f.clone(), s.clone(), fail.clone(), lifetime.clone());
            async move {
                let authorization = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let form = url_decoded(&body);
                seen.lock().unwrap().push(TokenRequest {
                    authorization,
                    form,
                });
                let status = failing.load(Ordering::SeqCst);
                if status != 0 {
                    return respond(
                        StatusCode::from_u16(status).unwrap(),
                        "application/json",
                        r#"{"error":"invalid_client"}"#,
                    );
                }
                let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                let body = serde_json::json!({
                    "access_token": format!("svc-{n}"),
                    "token_type": "Bearer",
                    "expires_in": lifetime.load(Ordering::SeqCst),
                });
                respond(StatusCode::OK, "application/json", body.to_string())
            }
        })
        .await;
        Self {
            addr,
            fetches,
            seen,
            failing,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// Tokens issued so far.
    fn issued(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Answers every request with `status` (0: issue tokens again).
    fn fail_with(&self, status: u16) {
        self.failing.store(status, Ordering::SeqCst);
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn url_decoded(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            };
            (decode(name), decode(value))
        })
        .collect()
}

/// The `upstream` lines of a client-credentials grant at `endpoint` with `auth`.
fn grant(endpoint: &str, auth: &str, secret_file: &str) -> String {
    format!(
        "  client_credentials:\n    token_endpoint: \"{endpoint}\"\n    client_id: \"gw client\"\n    auth: {auth}\n    client_secret_file: \"{secret_file}\"\n    scope: \"system/*.rs\"\n    resource: \"https://fhir.example/r4\"\n    timeout: \"1s\"\n"
    )
}

async fn read_patient(gateway: &TestGateway, token: &str) -> reqwest::Response {
    client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn metrics(gateway: &TestGateway) -> String {
    client()
        .get(format!("{}/metrics", gateway.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn authorizations(fhir: &FakeFhir) -> Vec<String> {
    fhir.seen()
        .iter()
        .map(|seen| {
            seen.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn the_upstream_gets_the_fetched_token_once_fetched_and_never_the_clients_token() {
    let endpoint = TokenEndpoint::start(3600).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(&format!("{SECRET}\n"));
    let upstream = grant(&endpoint.url(), "client_secret_basic", &secret);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    for _ in 0..3 {
        assert_eq!(read_patient(&gateway, &token).await.status(), 200);
    }
    assert_eq!(authorizations(&fhir), ["Bearer svc-1"; 3]);
    assert_eq!(endpoint.issued(), 1, "one token serves every request");
    for seen in fhir.seen() {
        for value in seen.headers.values() {
            assert!(
                !value.to_str().unwrap().contains(&token),
                "client token sent"
            );
        }
    }

    let asked = &endpoint.requests()[0];
    let basic = asked.authorization.as_deref().unwrap();
    assert_eq!(
        basic_pair(basic),
        ("gw client".to_owned(), SECRET.to_owned())
    );
    let form: Vec<(&str, &str)> = asked
        .form
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        form,
        [
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("resource", "https://fhir.example/r4"),
        ]
    );
    let exported = metrics(&gateway).await;
    assert!(
        exported
            .contains(r#"fhirgate_upstream_token_fetches_total{route="default",outcome="ok"} 1"#),
        "{exported}"
    );
    assert!(!exported.contains("svc-1"));
    let audit = gateway.stop().await;
    let trail = serde_json::to_string(&audit).unwrap();
    assert!(!trail.contains("svc-1") && !trail.contains(SECRET));
}

#[tokio::test]
async fn basic_credentials_encode_only_what_a_form_encodes() {
    let endpoint = TokenEndpoint::start(3600).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file("a-b.c_d*e:f/g h");
    let upstream = format!(
        "  client_credentials:\n    token_endpoint: \"{}\"\n    client_id: \"fhirgate-prod.eu_1\"\n    client_secret_file: \"{secret}\"\n",
        endpoint.url()
    );
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    assert_eq!(read_patient(&gateway, &token).await.status(), 200);

    use base64::Engine as _;
    let asked = &endpoint.requests()[0];
    let basic = asked.authorization.as_deref().unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    // Letters, digits and `*-._` as written; `:`, `/` and the space encoded.
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        "fhirgate-prod.eu_1:a-b.c_d*e%3Af%2Fg%20h"
    );
    assert_eq!(
        basic_pair(basic),
        (
            "fhirgate-prod.eu_1".to_owned(),
            "a-b.c_d*e:f/g h".to_owned()
        )
    );
    gateway.stop().await;
}

/// The client id and secret of `Basic` credentials, each form-decoded (RFC 6749 section
/// 2.3.1).
fn basic_pair(authorization: &str) -> (String, String) {
    use base64::Engine as _;
    let encoded = authorization.strip_prefix("Basic ").unwrap();
    let pair = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let pair = String::from_utf8(pair).unwrap();
    let (id, secret) = pair.split_once(':').unwrap();
    url_decoded(format!("{id}={secret}").as_bytes())[0].clone()
}

#[tokio::test]
async fn a_short_lived_token_is_replaced_before_it_expires() {
    let endpoint = TokenEndpoint::start(2).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(SECRET);
    let upstream = grant(&endpoint.url(), "client_secret_post", &secret);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    assert_eq!(read_patient(&gateway, &token).await.status(), 200);
    wait_for("two refreshes", async || endpoint.issued() >= 3).await;
    assert_eq!(read_patient(&gateway, &token).await.status(), 200);
    let sent = authorizations(&fhir);
    assert_eq!(sent[0], "Bearer svc-1");
    let later: usize = sent[1]
        .strip_prefix("Bearer svc-")
        .unwrap()
        .parse()
        .unwrap();
    assert!(later >= 3, "a refreshed token is sent: {sent:?}");

    let asked = &endpoint.requests()[0];
    assert_eq!(
        asked.authorization, None,
        "client_secret_post sends no Basic"
    );
    assert!(
        asked
            .form
            .contains(&("client_id".into(), "gw client".into()))
    );
    assert!(
        asked
            .form
            .contains(&("client_secret".into(), SECRET.into()))
    );
}

#[tokio::test]
async fn while_no_token_can_be_had_requests_get_503_and_never_reach_the_upstream() {
    let endpoint = TokenEndpoint::start(3600).await;
    endpoint.fail_with(401);
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(SECRET);
    let upstream = grant(&endpoint.url(), "client_secret_basic", &secret);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    let response = read_patient(&gateway, &token).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let outcome: serde_json::Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
    assert!(fhir.seen().is_empty(), "nothing went upstream");
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains(r#""upstream_credential":false"#)
    );
    let exported = metrics(&gateway).await;
    assert!(
        exported.contains(
            r#"fhirgate_upstream_token_fetches_total{route="default",outcome="refused"} 1"#
        ),
        "{exported}"
    );

    // Retried with growing delays: once the endpoint issues a token again, requests pass.
    endpoint.fail_with(0);
    wait_for("a token after the endpoint recovers", async || {
        endpoint.issued() >= 1
    })
    .await;
    assert_eq!(read_patient(&gateway, &token).await.status(), 200);
    assert_eq!(authorizations(&fhir), ["Bearer svc-1"]);
    let audit = gateway.stop().await;
    assert_eq!(audit[0]["reason"], "upstream_credential_unavailable");
}

#[tokio::test]
async fn without_a_token_fetches_are_retried_every_five_seconds_at_most() {
    let endpoint = TokenEndpoint::start(3600).await;
    endpoint.fail_with(503);
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(SECRET);
    let upstream = grant(&endpoint.url(), "client_secret_basic", &secret);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    // Refused fetches at start and after 1, 2, 4 and 8 s more: doubling on, the next would
    // wait 16 s while requests are told to come back after 5.
    wait_for("five refused fetches", async || {
        endpoint.requests().len() >= 5
    })
    .await;
    endpoint.fail_with(0);
    let back = std::time::Instant::now();
    wait_for("a token after the endpoint recovers", async || {
        endpoint.issued() >= 1
    })
    .await;
    let waited = back.elapsed();
    assert!(
        waited <= std::time::Duration::from_millis(5500),
        "a token only {waited:?} after the endpoint answered again"
    );
    assert_eq!(read_patient(&gateway, &token).await.status(), 200);
    assert_eq!(authorizations(&fhir), ["Bearer svc-1"]);
    gateway.stop().await;
}

#[tokio::test]
async fn an_unreachable_token_endpoint_keeps_requests_from_the_upstream() {
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(SECRET);
    let down = format!("http://127.0.0.1:{}/token", free_port());
    let upstream = grant(&down, "client_secret_basic", &secret);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", &upstream).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    assert_eq!(read_patient(&gateway, &token).await.status(), 503);
    assert!(fhir.seen().is_empty());
    let exported = metrics(&gateway).await;
    assert!(
        exported.contains(
            r#"fhirgate_upstream_token_fetches_total{route="default",outcome="unreachable"} 1"#
        ),
        "{exported}"
    );
}

/// `fhirgate check` on `yaml`: exit code and stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let path = dir.0.join("fhirgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The embedded default with `grant` in its `upstream` section.
fn default_with(grant: &str) -> String {
    let default = fhirgate::config::EMBEDDED_DEFAULT;
    let at = default.find("  connect_timeout:").unwrap();
    format!("{}{grant}{}", &default[..at], &default[at..])
}

#[test]
fn check_names_the_line_of_a_client_secret_that_cannot_be_read() {
    let empty = secret_file("\n");
    for (file, why) in [
        ("/nonexistent/upstream-secret", "cannot read"),
        (empty.as_str(), "is empty"),
    ] {
        let yaml = default_with(&grant(
            "https://idp.example/token",
            "client_secret_basic",
            file,
        ));
        let line = yaml
            .lines()
            .position(|l| l.contains("client_secret_file"))
            .unwrap()
            + 1;
        let (code, stderr) = check(&yaml);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("fhirgate.yaml:{line}:")),
            "{stderr}"
        );
        assert!(
            stderr.contains("upstream.client_credentials.client_secret_file")
                && stderr.contains(why),
            "{stderr}"
        );
    }
}

#[test]
fn check_refuses_an_inline_secret_and_a_second_credential() {
    let inline = default_with(
        "  client_credentials:\n    token_endpoint: \"https://idp.example/token\"\n    client_id: \"gw\"\n    client_secret: \"hunter2\"\n",
    );
    let (code, stderr) = check(&inline);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("client_secret_file") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    let secret = secret_file(SECRET);
    let both = default_with(&format!(
        "  bearer_token_file: \"{secret}\"\n{}",
        grant("https://idp.example/token", "client_secret_basic", &secret)
    ));
    let (code, stderr) = check(&both);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("upstream.client_credentials: cannot be used with"),
        "{stderr}"
    );

    let good = default_with(&grant(
        "https://idp.example/token",
        "client_secret_post",
        &secret,
    ));
    let (code, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_fetch_its_token_keeps_the_running_credential() {
    let endpoint = TokenEndpoint::start(3600).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let audit = "audit:\n  spool: { path: \"{dir}/spool\" }\n  sinks: { trail: { stdout: {} } }";
    let gateway = GatewayProcess::start(
        &idp,
        fhir.addr,
        audit,
        std::process::Stdio::null(),
        "/readyz",
    )
    .await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let reloads = async |outcome: &str| {
        let series = format!("fhirgate_config_reloads_total{{outcome=\"{outcome}\"}}");
        gateway.metric(&series).await.unwrap_or(-1.0)
    };
    let secret = secret_file(SECRET);
    let path = gateway.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    // The file as started, with a grant asking for `scope` at the end of `upstream`.
    let rewrite = |scope: &str| {
        let grant =
            grant(&endpoint.url(), "client_secret_basic", &secret).replace("system/*.rs", scope);
        let text = original.replacen("issuers:\n", &format!("{grant}issuers:\n"), 1);
        let next = path.with_extension("yaml.new");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &path).unwrap();
        gateway.signal("HUP");
    };
    let read = async || {
        client()
            .get(format!("{}/Patient/pat-A", gateway.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
    };

    rewrite("system/*.rs");
    wait_for("the grant taken up", async || reloads("ok").await >= 1.0).await;
    assert_eq!(read().await, 200);
    assert_eq!(authorizations(&fhir), ["Bearer svc-1"]);

    endpoint.fail_with(500);
    rewrite("system/Patient.rs");
    wait_for("the reload refused", async || reloads("error").await >= 1.0).await;
    assert!(
        gateway
            .stderr()
            .contains("no upstream access token could be fetched")
    );
    assert_eq!(read().await, 200, "the running credential still serves");
    assert_eq!(authorizations(&fhir), ["Bearer svc-1"; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_judged_route_by_route_for_the_tokens_it_would_lose() {
    let (for_a, for_c) = (
        TokenEndpoint::start(3600).await,
        TokenEndpoint::start(3600).await,
    );
    // Route c's token endpoint refuses from the start: c has no token to lose.
    for_c.fail_with(500);
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let secret = secret_file(SECRET);
    let route = |name: &str, endpoint: &TokenEndpoint| {
        let grant =
            grant(&endpoint.url(), "client_secret_basic", &secret).replace("\n  ", "\n      ");
        format!(
            "  - name: {name}\n    path: \"/{name}/fhir\"\n    upstream:\n      url: \"http://{fhir}/fhir\"\n      {grant}",
            fhir = fhir.addr,
            grant = grant.trim_start(),
        )
    };
    let rest = format!(
        "issuers:\n  - issuer: \"{issuer}\"\n    audience: \"https://gw.test/fhir\"\n    algorithms: [\"RS256\"]\nroutes:\n{a}{c}audit:\n  spool: {{ path: \"{{dir}}/spool\" }}\n  sinks: {{ trail: {{ stdout: {{}} }} }}",
        issuer = idp.issuer,
        a = route("a", &for_a),
        c = route("c", &for_c),
    );
    let gateway = GatewayProcess::start_config(&rest, "info").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let read = async |name: &str| {
        client()
            .get(format!("{}/{name}/fhir/Patient/pat-A", gateway.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
    };
    wait_for("route a's token", async || read("a").await == 200).await;
    assert_eq!(read("c").await, 503);

    // Route a's endpoint fails too: a reload would leave a without its token, although c
    // holds none either.
    for_a.fail_with(500);
    let path = gateway.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}# touched\n")).unwrap();
    gateway.signal("HUP");
    wait_for("the reload refused", async || {
        gateway
            .metric("fhirgate_config_reloads_total{outcome=\"error\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("client_credentials of route a,"),
        "{stderr}"
    );
    assert_eq!(read("a").await, 200, "route a keeps its running token");
}

#[tokio::test]
async fn a_token_is_refreshed_at_four_fifths_of_its_life_and_kept_through_a_failed_refresh() {
    use fhirgate::metrics::{Metrics, Route};
    use fhirgate::proxy::{FetchError, UpstreamToken};

    let endpoint = TokenEndpoint::start(3600).await;
    let secret = secret_file(SECRET);
    let yaml = default_with(&grant(&endpoint.url(), "client_secret_basic", &secret));
    let config = fhirgate::config::Config::parse(&yaml, "test").unwrap();
    let grant = config.upstream.unwrap().client_credentials.unwrap();
    let token = UpstreamToken::new(&grant, Route::DEFAULT, Arc::new(Metrics::default())).unwrap();
    assert!(
        token.authorization().is_none(),
        "nothing is fetched before it is asked"
    );

    let due = token.fetch().await.unwrap();
    assert_eq!(due, std::time::Duration::from_secs(2880));
    endpoint.fail_with(401);
    let failed = token.fetch().await.unwrap_err();
    assert!(
        matches!(&failed, FetchError::Refused { status: 401, error } if error == "invalid_client"),
        "{failed}"
    );
    assert_eq!(token.authorization().unwrap(), "Bearer svc-1");
    assert!(
        !format!("{token:?}").contains("svc-1"),
        "Debug shows no token"
    );
}
