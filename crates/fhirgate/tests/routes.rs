//! Routes, several servers per upstream, health and retries, over real sockets: upstream
//! servers that can be killed and started again on their port, traffic that runs while they
//! are, tenants whose tokens must not cross, and the configuration mistakes `fhirgate check`
//! refuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use support::*;

mod support;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const OBSERVATION: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#;

/// One request as an upstream server saw it.
#[derive(Clone, Debug)]
struct Hit {
    method: String,
    path: String,
    host: String,
    version: http::Version,
}

/// What a backend shares with its connections.
#[derive(Default)]
struct BackendState {
    /// Requests other than health checks.
    hits: Mutex<Vec<Hit>>,
    /// Health checks, by path.
    checks: Mutex<Vec<String>>,
    /// Health checks answer 500 while false.
    unhealthy: AtomicBool,
    /// Every request other than a health check is recorded, then its connection dropped
    /// without an answer.
    drop_requests: AtomicBool,
    /// The FHIR base the server names in its CapabilityStatement.
    base: Mutex<String>,
    /// Milliseconds every request other than a health check waits before its answer, so
    /// that a kill finds requests under way.
    delay_ms: std::sync::atomic::AtomicU64,
}

/// An upstream FHIR server that can be killed (its listener and every open connection gone
/// at once) and started again on the same port.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    /// A server naming `base` as its FHIR base.
    async fn start(base: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(BackendState::default());
        *state.base.lock().unwrap() = base.to_owned();
        let addr = listener.local_addr().unwrap();
        let task = Some(tokio::spawn(serve(listener, state.clone())));
        Self { addr, state, task }
    }

    /// `127.0.0.1:PORT`, as a `servers` entry.
    fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the server: no listener, and every connection closed without an answer.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts the server again on its port.
    async fn restart(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        self.task = Some(tokio::spawn(serve(listener, self.state.clone())));
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.hits()
            .iter()
            .filter(|h| h.method == method && h.path == path)
            .count()
    }

    fn checks(&self, path: &str) -> usize {
        self.state
            .checks
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts connections until aborted; aborting drops every connection with it.
async fn serve(listener: TcpListener, state: Arc<BackendState>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(connection(stream, state.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection, closed early when a request says so.
async fn connection(stream: tokio::net::TcpStream, state: Arc<BackendState>) {
    let hang_up = Arc::new(Notify::new());
    let notify = hang_up.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let (state, notify) = (state.clone(), notify.clone());
        async move { Ok::<_, std::convert::Infallible>(answer(request, &state, &notify).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = served => {}
        () = hang_up.notified() => {}
    }
}

async fn answer(
    request: Request<Incoming>,
    state: &BackendState,
    hang_up: &Notify,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let path = parts.uri.path().to_owned();
    let health_check = parts
        .headers
        .get("user-agent")
        .is_some_and(|v| v == "fhirgate-health-check");
    if health_check {
        state.checks.lock().unwrap().push(path);
        return if state.unhealthy.load(Ordering::SeqCst) {
            respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "sick")
        } else {
            respond(StatusCode::OK, "application/fhir+json", "{}")
        };
    }
    state.hits.lock().unwrap().push(Hit {
        method: parts.method.to_string(),
        path: path.clone(),
        host: parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default(),
        version: parts.version,
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.drop_requests.load(Ordering::SeqCst) {
        hang_up.notify_one();
        std::future::pending::<()>().await;
    }
    match (parts.method.as_str(), path.as_str()) {
        ("GET", "/fhir/Patient/pat-A") => {
            respond(StatusCode::OK, "application/fhir+json", PATIENT_A)
        }
        ("GET", "/fhir/metadata") => {
            let base = state.base.lock().unwrap().clone();
            let statement = json!({
                "resourceType": "CapabilityStatement",
                "url": format!("{base}/metadata"),
                "implementation": {"url": base},
            });
            respond(
                StatusCode::OK,
                "application/fhir+json",
                statement.to_string(),
            )
        }
        ("POST", "/fhir/Observation") => {
            let created = OBSERVATION.replacen('{', "{\"id\":\"obs-new\",", 1);
            respond(StatusCode::CREATED, "application/fhir+json", created)
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "application/fhir+json",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        ),
    }
}

const ISSUER_AUDIENCE: &str = "https://gw.test/fhir";

/// The issuer block of the gateways here.
fn issuers(idp: &FakeIdp) -> String {
    format!(
        "issuers:\n  - issuer: \"{}\"\n    audience: \"{ISSUER_AUDIENCE}\"\n    algorithms: [\"RS256\"]\n    jwks_refetch_cooldown: \"60s\"\n",
        idp.issuer
    )
}

/// A token for patient pat-A with `scope`, naming `audience`.
fn token(idp: &FakeIdp, scope: &str, audience: &str) -> String {
    let mut claims = claims(&idp.issuer, scope);
    claims["aud"] = Value::from(audience);
    sign("rsa-a", Some("rsa-a"), &claims)
}

async fn get(url: &str, token: &str) -> reqwest::Response {
    client().get(url).bearer_auth(token).send().await.unwrap()
}

async fn post_observation(url: &str, token: &str) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(OBSERVATION)
        .send()
        .await
        .unwrap()
}

fn upstream_up(route: &str, server: &str) -> String {
    format!("fhirgate_upstream_up{{route=\"{route}\",server=\"{server}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_rotation_without_errors_and_comes_back_when_restarted() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir.internal/fhir").await;
    let mut b = Backend::start("http://fhir.internal/fhir").await;
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: records
    path: "/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["{a}", "{b}"]
      connect_timeout: "1s"
      response_timeout: "2s"
      retries: 1
      health:
        passive: {{ failures: 1, cool_down: "30s" }}
        active: {{ interval: "100ms", timeout: "500ms", healthy: 2, unhealthy: 2 }}
"#,
        issuers = issuers(&idp),
        a = a.server(),
        b = b.server(),
    ))
    .await;
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    let url = format!("{}/fhir/Patient/pat-A", gateway.base);
    assert_eq!(get(&url, &token).await.status(), 200);
    // Each request spends a while on its server: killing one cuts requests under way, which
    // are sent again to the other.
    for backend in [&a, &b] {
        backend.state.delay_ms.store(10, Ordering::SeqCst);
    }

    // Four clients, each sending one GET after another for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, token, url) = (stop.clone(), sent.clone(), token.clone(), url.clone());
            tokio::spawn(async move {
                let client = client();
                let mut failed = Vec::new();
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                    let status = match client.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(error) => panic!("a request failed: {error}"),
                    };
                    sent.fetch_add(1, Ordering::SeqCst);
                    if status != 200 {
                        failed.push(status);
                    }
                }
                failed
            })
        })
        .collect();

    let b_name = b.server();
    let traffic_to = |backend: &Backend| backend.count("GET", "/fhir/Patient/pat-A");
    wait_for("traffic reaches both servers", async || {
        traffic_to(&a) > 10 && traffic_to(&b) > 10
    })
    .await;
    b.kill().await;
    let killed_at = traffic_to(&b);
    wait_for("the killed server is out of rotation", async || {
        gateway.metric(&upstream_up("records", &b_name)).await == Some(0.0)
    })
    .await;
    let a_before = traffic_to(&a);
    wait_for("traffic goes on on the other server", async || {
        traffic_to(&a) > a_before + 30
    })
    .await;
    assert_eq!(traffic_to(&b), killed_at, "nothing reached the dead server");

    b.restart().await;
    wait_for("the restarted server is back in rotation", async || {
        gateway.metric(&upstream_up("records", &b_name)).await == Some(1.0)
    })
    .await;
    wait_for("traffic reaches the restarted server", async || {
        traffic_to(&b) > killed_at + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut failed = Vec::new();
    for client in clients {
        failed.extend(client.await.unwrap());
    }
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent > 100, "{sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );
    // The requests the dead server failed were sent again to the live one.
    let retried = gateway
        .metric("fhirgate_upstream_retries_total{route=\"records\"}")
        .await
        .unwrap();
    assert!(retried >= 1.0, "{retried} retries");
    assert!(
        b.checks("/fhir/metadata") > 0,
        "health checks fetch metadata"
    );
    let audit = gateway.stop().await;
    assert!(audit.iter().all(|r| r["route"] == "records"));
}

#[tokio::test]
async fn with_every_server_out_a_route_answers_503_at_once_without_connecting() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let (one, two) = (free_port(), free_port());
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: records
    path: "/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["127.0.0.1:{one}", "127.0.0.1:{two}"]
      health:
        passive: {{ failures: 1, cool_down: "60s" }}
"#,
        issuers = issuers(&idp),
    ))
    .await;
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    let url = format!("{}/fhir/Patient/pat-A", gateway.base);
    // Neither server listens: both are tried, and both go out of rotation.
    assert_eq!(get(&url, &token).await.status(), 502);
    for port in [one, two] {
        let up = upstream_up("records", &format!("127.0.0.1:{port}"));
        assert_eq!(gateway.metric(&up).await, Some(0.0), "{up}");
    }

    // Now one listens, counting the connections it is offered.
    let listener = TcpListener::bind(("127.0.0.1", one)).await.unwrap();
    let offered = Arc::new(AtomicUsize::new(0));
    let counting = offered.clone();
    let accepting = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counting.fetch_add(1, Ordering::SeqCst);
        }
    });
    let response = get(&url, &token).await;
    assert_eq!(response.status(), 503);
    // Back when the first server's cool-down ends.
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
    // A connection of the test's own, accepted after any the gateway would have made: once
    // it is counted, every earlier one would be.
    let _probe = tokio::net::TcpStream::connect(("127.0.0.1", one))
        .await
        .unwrap();
    wait_for("the probe is accepted", async || {
        offered.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        offered.load(Ordering::SeqCst),
        1,
        "the gateway tried no connection"
    );
    accepting.abort();

    assert_eq!(
        gateway
            .metric("fhirgate_upstream_unavailable_total{route=\"records\"}")
            .await,
        Some(1.0)
    );
    let audit = gateway.stop().await;
    let last = audit.last().unwrap();
    assert_eq!(last["status"], 503);
    assert_eq!(last["reason"], "upstream_down");
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["route"], "records");
    assert_eq!(last["interaction"], "read");
}

#[tokio::test]
async fn one_route_down_leaves_the_gateway_ready_for_the_others() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir-a.internal/fhir").await;
    let down = free_port();
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: tenant-a
    path: "/a/fhir"
    upstream: {{ url: "http://fhir-a.internal/fhir", servers: ["{a}"] }}
  - name: tenant-b
    path: "/b/fhir"
    upstream: {{ url: "http://fhir-b.internal/fhir", servers: ["127.0.0.1:{down}"] }}
"#,
        issuers = issuers(&idp),
        a = a.server(),
    ))
    .await;
    let readyz = format!("{}/readyz", gateway.admin);
    // Tenant B's server does not listen; tenant A's does, so the gateway can serve.
    let ready = client().get(&readyz).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let checks: Value = ready.json().await.unwrap();
    assert_eq!(checks["checks"]["upstream"], true, "{checks}");
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    let served = get(&format!("{}/a/fhir/Patient/pat-A", gateway.base), &token).await;
    assert_eq!(served.status(), 200);
    let failed = get(&format!("{}/b/fhir/Patient/pat-A", gateway.base), &token).await;
    assert_eq!(failed.status(), 502);

    // With no route reaching a server, the gateway cannot serve.
    let mut a = a;
    a.kill().await;
    let unready = client().get(&readyz).send().await.unwrap();
    assert_eq!(unready.status(), 503);
    let checks: Value = unready.json().await.unwrap();
    assert_eq!(checks["checks"]["upstream"], false, "{checks}");
    assert_eq!(checks["ready"], false);
}

#[tokio::test]
async fn tenants_have_their_own_upstream_and_a_token_for_one_is_refused_on_the_other() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir-a.internal/fhir").await;
    let b = Backend::start("http://fhir-b.internal:8080/fhir").await;
    let shared = Backend::start("http://shared.internal/fhir").await;
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: tenant-a
    path: "/a/fhir"
    audience: "https://gw.test/a/fhir"
    upstream: {{ url: "http://fhir-a.internal/fhir", servers: ["{a}"] }}
  - name: tenant-b
    path: "/b/fhir"
    audience: "https://gw.test/b/fhir"
    upstream: {{ url: "http://fhir-b.internal:8080/fhir", servers: ["{b}"] }}
  - name: shared
    path: "/"
    host: "shared.test"
    upstream: {{ url: "http://shared.internal/fhir", servers: ["{shared}"] }}
"#,
        issuers = issuers(&idp),
        a = a.server(),
        b = b.server(),
        shared = shared.server(),
    ))
    .await;
    let base = &gateway.base;
    let for_a = token(&idp, "patient/*.rs", "https://gw.test/a/fhir");
    let for_b = token(&idp, "patient/*.rs", "https://gw.test/b/fhir");
    let for_issuer = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);

    let ok = get(&format!("{base}/a/fhir/Patient/pat-A"), &for_a).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), PATIENT_A);
    assert_eq!(
        a.hits()[0].host,
        "fhir-a.internal",
        "the route's url names the host"
    );
    assert_eq!(
        get(&format!("{base}/b/fhir/Patient/pat-A"), &for_b)
            .await
            .status(),
        200
    );
    assert_eq!(b.hits()[0].host, "fhir-b.internal:8080");

    // Tenant A's token on tenant B's base, and the issuer's audience on either: refused as
    // invalid_token, and nothing reaches B's upstream.
    b.state.hits.lock().unwrap().clear();
    for (path, token) in [
        ("b/fhir/Patient/pat-A", &for_a),
        ("a/fhir/Patient/pat-A", &for_b),
        ("b/fhir/Patient/pat-A", &for_issuer),
    ] {
        let refused = get(&format!("{base}/{path}"), token).await;
        assert_eq!(refused.status(), 401, "{path}");
        let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }
    assert!(b.hits().is_empty(), "{:?}", b.hits());
    assert_eq!(a.hits().len(), 1);

    // No route: 404, also with a token.
    let none = get(&format!("{base}/c/fhir/Patient/pat-A"), &for_a).await;
    assert_eq!(none.status(), 404);
    let outcome: Value = none.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "not-found");

    // A route for one host, at the root: the issuer's audience is its audience.
    let hosted = client()
        .get(format!("{base}/Patient/pat-A"))
        .header("host", "Shared.test")
        .bearer_auth(&for_issuer)
        .send()
        .await
        .unwrap();
    assert_eq!(hosted.status(), 200);
    assert_eq!(shared.hits().len(), 1);
    assert_eq!(shared.hits()[0].path, "/fhir/Patient/pat-A");

    // Each route's CapabilityStatement names its own public base, never its upstream's.
    for (route, upstream) in [("a", "fhir-a.internal"), ("b", "fhir-b.internal")] {
        let statement: Value = client()
            .get(format!("{base}/{route}/fhir/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            statement["implementation"]["url"],
            format!("{base}/{route}/fhir"),
            "{statement}"
        );
        assert!(!statement.to_string().contains(upstream), "{statement}");
    }
    // And SMART discovery is served under every route.
    for route in ["a", "b"] {
        let discovery = client()
            .get(format!(
                "{base}/{route}/fhir/.well-known/smart-configuration"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(discovery.status(), 200, "{route}");
    }

    let requests = |route: &str, reason: &str| {
        format!(
            "fhirgate_requests_total{{route=\"{route}\",decision=\"deny\",reason=\"{reason}\",interaction=\"none\",status_class=\"4xx\"}}"
        )
    };
    assert_eq!(
        gateway.metric(&requests("tenant-b", "invalid_token")).await,
        Some(2.0)
    );
    assert_eq!(
        gateway.metric(&requests("none", "no_route")).await,
        Some(1.0)
    );
    let audit = gateway.stop().await;
    let routes: Vec<Value> = audit.iter().map(|r| r["route"].clone()).collect();
    assert_eq!(
        routes[..5],
        ["tenant-a", "tenant-b", "tenant-b", "tenant-a", "tenant-b"]
    );
    let unrouted = audit.iter().find(|r| r["reason"] == "no_route").unwrap();
    assert!(unrouted.get("route").is_none(), "{unrouted}");
    let refused = &audit[2];
    assert_eq!(refused["reason"], "invalid_token");
    assert_eq!(refused["decision"], "deny");
}

#[tokio::test]
async fn a_request_that_reached_a_server_is_sent_again_only_when_it_is_a_read() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir.internal/fhir").await;
    let b = Backend::start("http://fhir.internal/fhir").await;
    for backend in [&a, &b] {
        backend.state.drop_requests.store(true, Ordering::SeqCst);
    }
    let dead = free_port();
    let live = Backend::start("http://fhir.internal/fhir").await;
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: hangs-up
    path: "/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["{a}", "{b}"]
      retries: 3
  - name: half-dead
    path: "/other/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["127.0.0.1:{dead}", "{live}"]
      health: {{ passive: {{ failures: 10 }} }}
"#,
        issuers = issuers(&idp),
        a = a.server(),
        b = b.server(),
        live = live.server(),
    ))
    .await;
    let token = token(&idp, "patient/*.cruds", ISSUER_AUDIENCE);
    let posts = |backends: &[&Backend]| {
        backends
            .iter()
            .map(|b| b.count("POST", "/fhir/Observation"))
            .sum::<usize>()
    };

    // The server hangs up after the POST reached it: it is not sent again.
    let posted = post_observation(&format!("{}/fhir/Observation", gateway.base), &token).await;
    assert_eq!(posted.status(), 502);
    assert_eq!(posts(&[&a, &b]), 1, "the recording upstreams saw it once");

    // A GET is sent again, to the other server (which hangs up too).
    let read = get(&format!("{}/fhir/Patient/pat-A", gateway.base), &token).await;
    assert_eq!(read.status(), 502);
    assert_eq!(a.count("GET", "/fhir/Patient/pat-A"), 1);
    assert_eq!(b.count("GET", "/fhir/Patient/pat-A"), 1);

    // A POST that could not connect is sent to the other server: both meet the dead server
    // first (each takes two turns), and each arrives once.
    for _ in 0..2 {
        let posted =
            post_observation(&format!("{}/other/fhir/Observation", gateway.base), &token).await;
        assert_eq!(posted.status(), 201);
    }
    assert_eq!(posts(&[&live]), 2);
    assert_eq!(
        gateway
            .metric("fhirgate_upstream_retries_total{route=\"hangs-up\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gateway
            .metric("fhirgate_upstream_retries_total{route=\"half-dead\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn round_robin_takes_turns_and_http2_is_spoken_when_asked() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir.internal/fhir").await;
    let b = Backend::start("http://fhir.internal/fhir").await;
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}upstream:
  url: "http://fhir.internal/fhir"
  public_base_path: "/fhir"
  servers: ["{a}", "{b}"]
  http2: true
"#,
        issuers = issuers(&idp),
        a = a.server(),
        b = b.server(),
    ))
    .await;
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    for _ in 0..10 {
        let response = get(&format!("{}/fhir/Patient/pat-A", gateway.base), &token).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(a.hits().len(), 5);
    assert_eq!(b.hits().len(), 5);
    assert!(
        a.hits()
            .iter()
            .chain(b.hits().iter())
            .all(|hit| hit.version == http::Version::HTTP_2)
    );
    for backend in [&a, &b] {
        let up = upstream_up("default", &backend.server());
        assert_eq!(gateway.metric(&up).await, Some(1.0), "{up}");
    }
    let audit = gateway.stop().await;
    assert!(audit.iter().all(|r| r["route"] == "default"));
}

#[tokio::test]
async fn a_reload_replaces_the_routes_and_stops_the_old_health_checks() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir.internal/fhir").await;
    let mut b = Backend::start("http://fhir.internal/fhir").await;
    let audit = r#"audit:
  spool: { path: "{dir}/spool" }
  sinks: { trail: { jsonl: { path: "{dir}/audit.jsonl" } } }"#;
    let routes = |check: &str| {
        format!(
            r#"{issuers}routes:
  - name: records
    path: "/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["{a}", "{b}"]
      health:
        active: {{ path: "{check}", interval: "100ms", timeout: "500ms", healthy: 1, unhealthy: 1 }}
{audit}"#,
            issuers = issuers(&idp),
            a = a.server(),
            b = b.server(),
        )
    };
    let gateway = GatewayProcess::start_config(&routes("metadata"), "info").await;
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    let url = format!("{}/fhir/Patient/pat-A", gateway.base);
    assert_eq!(get(&url, &token).await.status(), 200);

    // Going down and coming back are logged.
    b.kill().await;
    let b_name = b.server();
    wait_for("the log says the server went out", async || {
        gateway.stderr().lines().any(|line| {
            line.contains("upstream server taken out of rotation") && line.contains(&b_name)
        })
    })
    .await;
    b.restart().await;
    wait_for("the log says the server came back", async || {
        gateway
            .stderr()
            .lines()
            .any(|line| line.contains("upstream server back in rotation") && line.contains(&b_name))
    })
    .await;

    // The route's health checks move to another path with a reload.
    let config = gateway.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let next = text.replace("path: \"metadata\"", "path: \"Patient/health\"");
    assert_ne!(next, text);
    std::fs::write(config.with_extension("new"), next).unwrap();
    std::fs::rename(config.with_extension("new"), &config).unwrap();
    wait_for("the new health checks run", async || {
        a.checks("/fhir/Patient/health") > 2
    })
    .await;
    // The old gateway's checks stop once it is replaced: none after a grace period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = a.checks("/fhir/metadata");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.checks("/fhir/metadata"), old, "the old checks stopped");
    assert!(a.checks("/fhir/Patient/health") > 5);
    assert_eq!(
        gateway
            .metric("fhirgate_config_reloads_total{outcome=\"ok\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(get(&url, &token).await.status(), 200);
}

#[tokio::test]
async fn an_unhealthy_server_is_taken_out_by_its_checks_alone() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let a = Backend::start("http://fhir.internal/fhir").await;
    let b = Backend::start("http://fhir.internal/fhir").await;
    b.state.unhealthy.store(true, Ordering::SeqCst);
    let gateway = TestGateway::start_config(&format!(
        r#"{issuers}routes:
  - name: records
    path: "/fhir"
    upstream:
      url: "http://fhir.internal/fhir"
      servers: ["{a}", "{b}"]
      health:
        active: {{ interval: "100ms", healthy: 1, unhealthy: 1 }}
"#,
        issuers = issuers(&idp),
        a = a.server(),
        b = b.server(),
    ))
    .await;
    let b_up = upstream_up("records", &b.server());
    wait_for("the failing checks take the server out", async || {
        gateway.metric(&b_up).await == Some(0.0)
    })
    .await;
    let token = token(&idp, "patient/*.rs", ISSUER_AUDIENCE);
    for _ in 0..6 {
        let response = get(&format!("{}/fhir/Patient/pat-A", gateway.base), &token).await;
        assert_eq!(response.status(), 200);
    }
    assert!(b.hits().is_empty(), "{:?}", b.hits());
    assert_eq!(a.hits().len(), 6);
    b.state.unhealthy.store(false, Ordering::SeqCst);
    wait_for("a healthy check brings it back", async || {
        gateway.metric(&b_up).await == Some(1.0)
    })
    .await;
}

/// `fhirgate check` of a configuration.
fn check(text: &str) -> (i32, String) {
    let dir = TempDir::new();
    let path = dir.0.join("routes.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn check_refuses_route_mistakes_with_their_line_and_reason() {
    let head = r#"listen: "127.0.0.1:8080"
issuers:
  - issuer: "https://idp.example"
    audience: "https://gw.example/fhir"
audit:
  spool: { path: "spool" }
  sinks: { trail: { jsonl: { path: "audit.jsonl" } } }
"#;
    let upstream =
        "upstream:\n  url: \"http://fhir.internal/fhir\"\n  public_base_path: \"/fhir\"\n";
    let route = |name: &str, path: &str, servers: &str| {
        format!(
            "  - name: {name}\n    path: \"{path}\"\n    upstream:\n      url: \"http://fhir.internal/fhir\"\n{servers}"
        )
    };
    let cases = [
        (
            format!("{head}{upstream}routes:\n{}", route("a", "/a", "")),
            "routes:",
            "give either `upstream` (one route) or `routes`, not both",
        ),
        (
            format!(
                "{head}routes:\n{}{}",
                route("a", "/fhir", ""),
                route("b", "/fhir/", "")
            ),
            "path: \"/fhir/\"",
            "has the same base path \"/fhir\"",
        ),
        (
            format!(
                "{head}routes:\n{}",
                route("a", "/fhir", "      servers: []\n")
            ),
            "servers: []",
            "name at least one server",
        ),
        (
            format!(
                "{head}routes:\n{}{}",
                route("a", "/a", ""),
                route("a", "/b", "")
            ),
            "name: a",
            "routes[0] is named \"a\" too",
        ),
        (
            format!(
                "{head}routes:\n{}{}",
                route("a", "/a", "").replace(
                    "    upstream:",
                    "    audience: \"https://gw.example/fhir\"\n    upstream:"
                ),
                route("b", "/b", "")
            ),
            "audience: \"https://gw.example/fhir\"",
            "is also the audience of issuer \"https://idp.example\", which routes[1] (\"b\") accepts",
        ),
    ];
    for (text, at, reason) in cases {
        let (status, stderr) = check(&text);
        assert_eq!(status, 2, "{stderr}");
        let lines: Vec<&str> = text.lines().collect();
        let line = lines.iter().rposition(|l| l.contains(at)).unwrap() + 1;
        assert!(
            stderr.starts_with(&format!("error: FILE:{line}:")),
            "line {line} for {reason}: {stderr}"
        );
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
    let (status, stderr) = check(&format!(
        "{head}routes:\n{}{}",
        route(
            "a",
            "/a",
            "      servers: [\"10.0.0.5:8080\", \"10.0.0.6\"]\n      http2: true\n"
        ),
        route(
            "b",
            "/b",
            "      balance: least-outstanding\n      health: { active: { interval: \"5s\" } }\n"
        )
    ));
    assert_eq!(status, 0, "{stderr}");
}

#[test]
fn check_names_the_line_of_a_file_it_cannot_read() {
    let empty = TempDir::new();
    let empty_token = empty.0.join("admin-token");
    std::fs::write(&empty_token, "\n").unwrap();
    let head = r#"listen: "127.0.0.1:8080"
issuers:
  - issuer: "https://idp.example"
    audience: "https://gw.example/fhir"
audit:
  spool: { path: "spool" }
  sinks: { trail: { jsonl: { path: "audit.jsonl" } } }
"#;
    let routes = r#"routes:
  - name: a
    path: "/a"
    upstream: { url: "http://fhir-a.internal/fhir" }
  - name: b
    path: "/b"
    upstream:
      url: "https://fhir-b.internal/fhir"
"#;
    let cases = [
        (
            format!("{head}{routes}      ca_file: \"/nonexistent/ca.pem\"\n"),
            "ca_file:",
            "routes[1].upstream.ca_file: cannot read",
        ),
        (
            format!("{head}{routes}      bearer_token_file: \"/nonexistent/token\"\n"),
            "bearer_token_file:",
            "routes[1].upstream.bearer_token_file: cannot read",
        ),
        (
            format!(
                "{head}admin:\n  bearer_token_file: \"{}\"\n{routes}",
                empty_token.display()
            ),
            "bearer_token_file:",
            "admin.bearer_token_file:",
        ),
    ];
    for (text, at, reason) in cases {
        let (status, stderr) = check(&text);
        assert_eq!(status, 2, "{stderr}");
        let line = text.lines().position(|l| l.contains(at)).unwrap() + 1;
        assert!(
            stderr.starts_with(&format!("error: FILE:{line}: {reason}")),
            "line {line} for {reason}: {stderr}"
        );
    }
}

#[test]
fn explain_follows_the_route_of_the_url() {
    let dir = TempDir::new();
    let config = dir.0.join("routes.yaml");
    std::fs::write(
        &config,
        r#"listen: "127.0.0.1:8080"
issuers:
  - issuer: "https://idp.example"
    audience: "https://gw.example/fhir"
audit:
  spool: { path: "spool" }
  sinks: { trail: { jsonl: { path: "audit.jsonl" } } }
routes:
  - name: a
    path: "/a/fhir"
    audience: "https://gw.example/a/fhir"
    upstream: { url: "http://fhir-a.internal/fhir" }
  - name: b
    path: "/b/fhir"
    audience: "https://gw.example/b/fhir"
    upstream: { url: "http://fhir-b.internal/fhir" }
"#,
    )
    .unwrap();
    let claims = dir.0.join("claims.json");
    std::fs::write(
        &claims,
        json!({"iss": "https://idp.example", "aud": "https://gw.example/b/fhir", "scope": "patient/*.rs", "patient": "pat-A"}).to_string(),
    )
    .unwrap();
    let explain = |url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["explain", "--config"])
            .arg(&config)
            .arg("--claims")
            .arg(&claims)
            .args(["GET", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let b = explain("https://gw.example/b/fhir/Patient/pat-A");
    assert!(b.contains("matches the route's audience"), "{b}");
    assert!(
        b.contains("upstream request: GET http://fhir-b.internal/fhir/Patient/pat-A"),
        "{b}"
    );
    let a = explain("/a/fhir/Patient/pat-A");
    assert!(a.contains("does NOT match the route's audience"), "{a}");
    assert!(a.contains("audience not accepted"), "{a}");
}
