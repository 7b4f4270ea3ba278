//! In-process doubles for gateway tests: an identity provider whose JWKS endpoint can be made
//! to fail, an upstream FHIR server that records what reaches it, and token minting.

#![allow(dead_code)]

pub mod corpus;
pub mod wire;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Serves `handler` on an ephemeral loopback port.
pub async fn spawn_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

/// How the fake JWKS endpoint behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwksMode {
    Serve,
    Fail500,
    Hang,
    Garbage,
    /// Serve the keys with `Cache-Control: max-age=N`.
    ServeMaxAge(u32),
}

/// How the fake discovery endpoint behaves: extra members of its document, whether it is
/// down, and how often it was asked.
#[derive(Default)]
struct DiscoveryState {
    extra: Mutex<serde_json::Map<String, Value>>,
    down: AtomicBool,
    fetches: AtomicUsize,
}

/// A fake OpenID provider: discovery and JWKS, with fetch counters.
pub struct FakeIdp {
    pub addr: SocketAddr,
    pub issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<JwksMode>>,
    fetches: Arc<AtomicUsize>,
    discovery: Arc<DiscoveryState>,
}

impl FakeIdp {
    pub async fn start(keys: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let mode = Arc::new(Mutex::new(JwksMode::Serve));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = Arc::new(DiscoveryState::default());
        let issuer_cell: Arc<Mutex<String>> = Arc::default();
        let (k, m, f, i, d) = (
            keys.clone(),
            mode.clone(),
            fetches.clone(),
            issuer_cell.clone(),
            discovery.clone(),
        );
        let addr = spawn_server(move |req: Request<Incoming>| {
            let (keys, mode, fetches, issuer, discovery) =
                (k.clone(), m.clone(), f.clone(), i.clone(), d.clone());
            async move {
                match req.uri().path() {
                    "/.well-known/openid-configuration" => {
                        discovery.fetches.fetch_add(1, Ordering::SeqCst);
                        if discovery.down.load(Ordering::SeqCst) {
                            return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down");
                        }
                        let issuer = issuer.lock().unwrap().clone();
                        let mut doc =
                            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
                        for (name, value) in discovery.extra.lock().unwrap().iter() {
                            let value = value.as_str().map_or_else(
                                || value.clone(),
                                |text| Value::from(text.replace("{issuer}", &issuer)),
                            );
                            doc[name] = value;
                        }
                        respond(StatusCode::OK, "application/json", doc.to_string())
                    }
                    "/jwks" => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let mode = *mode.lock().unwrap();
                        match mode {
                            JwksMode::Serve => {
                                let doc = json!({"keys": keys.lock().unwrap().clone()});
                                respond(StatusCode::OK, "application/json", doc.to_string())
                            }
                            JwksMode::ServeMaxAge(age) => {
                                let doc = json!({"keys": keys.lock().unwrap().clone()});
                                let mut response =
                                    respond(StatusCode::OK, "application/json", doc.to_string());
                                response.headers_mut().insert(
                                    http::header::CACHE_CONTROL,
                                    format!("public, max-age={age}").parse().unwrap(),
                                );
                                response
                            }
                            JwksMode::Fail500 => {
                                respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "down")
                            }
                            JwksMode::Garbage => {
                                respond(StatusCode::OK, "application/json", "{not json")
                            }
                            JwksMode::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                respond(StatusCode::OK, "application/json", "{}")
                            }
                        }
                    }
                    _ => respond(StatusCode::NOT_FOUND, "text/plain", "no"),
                }
            }
        })
        .await;
        let issuer = format!("http://{addr}");
        *issuer_cell.lock().unwrap() = issuer.clone();
        Self {
            addr,
            issuer,
            keys,
            mode,
            fetches,
            discovery,
        }
    }

    /// Adds members to the discovery document (`{issuer}` in a string value becomes the
    /// issuer's URL).
    pub fn set_discovery(&self, extra: Value) {
        let mut members = self.discovery.extra.lock().unwrap();
        for (name, value) in extra.as_object().unwrap() {
            members.insert(name.clone(), value.clone());
        }
    }

    /// Makes the discovery document answer 503 (or serve again).
    pub fn set_discovery_down(&self, down: bool) {
        self.discovery.down.store(down, Ordering::SeqCst);
    }

    /// How often the discovery document was asked for.
    pub fn discovery_fetches(&self) -> usize {
        self.discovery.fetches.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    pub fn set_mode(&self, mode: JwksMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A route status that makes the fake FHIR server never answer.
pub const HANG: u16 = 999;

/// A request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A canned answer of the fake FHIR server.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub body: String,
    /// Extra response headers (a `content-type` here replaces the JSON one).
    pub headers: Vec<(String, String)>,
    /// The body for requests asking for XML (`_format` or `Accept` naming xml), if any.
    pub xml: Option<String>,
}

impl Canned {
    fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
            xml: None,
        }
    }

    /// The answer to `parts`: XML when asked for and there is some.
    fn answer(&self, parts: &http::request::Parts) -> Response<Full<Bytes>> {
        let asks_xml = parts.uri.query().is_some_and(|q| q.contains("_format=xml"))
            || parts
                .headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("xml"));
        let (content_type, body) = match (&self.xml, asks_xml) {
            (Some(xml), true) => ("application/fhir+xml", xml.clone()),
            _ => ("application/fhir+json", self.body.clone()),
        };
        let mut response = respond(
            StatusCode::from_u16(self.status).unwrap(),
            content_type,
            body,
        );
        for (name, value) in &self.headers {
            response.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        response
    }
}

/// Extra response headers by route.
type RouteHeaders = Arc<Mutex<HashMap<String, Vec<(String, String)>>>>;

/// A fake FHIR server answering canned bodies by path (query ignored) and recording requests.
pub struct FakeFhir {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Canned>>>,
    headers: RouteHeaders,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeFhir {
    pub async fn start() -> Self {
        let routes: Arc<Mutex<HashMap<String, Canned>>> = Arc::default();
        let headers: RouteHeaders = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, h, s) = (routes.clone(), headers.clone(), seen.clone());
        let addr = spawn_server(move |req: Request<Incoming>| {
            let (routes, extra, seen) = (r.clone(), h.clone(), s.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body,
                });
                let key = format!("{} {}", parts.method, parts.uri.path());
                let route = routes.lock().unwrap().get(&key).cloned();
                let extra = extra.lock().unwrap().get(&key).cloned().unwrap_or_default();
                let mut response = match route {
                    Some(canned) if canned.status == HANG => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        respond(StatusCode::OK, "text/plain", "")
                    }
                    Some(canned) => canned.answer(&parts),
                    None => respond(
                        StatusCode::NOT_FOUND,
                        "application/fhir+json",
                        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
                    ),
                };
                for (name, value) in extra {
                    response.headers_mut().insert(
                        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        http::HeaderValue::from_str(&value).unwrap(),
                    );
                }
                response
            }
        })
        .await;
        Self {
            addr,
            routes,
            headers,
            seen,
        }
    }

    /// The key of route `METHOD /fhir/path` (`METHOD /fhir` for an empty path).
    fn key(method: &str, path: &str) -> String {
        match path {
            "" => format!("{method} /fhir"),
            path => format!("{method} /fhir/{path}"),
        }
    }

    /// Answers `METHOD /fhir/path` (`METHOD /fhir` for an empty path) with `body`.
    pub fn route(&self, method: &str, path: &str, status: u16, body: &str) {
        self.routes
            .lock()
            .unwrap()
            .insert(Self::key(method, path), Canned::new(status, body));
    }

    /// [`FakeFhir::route`] with extra response headers and an XML body for requests that ask
    /// for XML.
    pub fn route_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
        xml: Option<&str>,
    ) {
        let mut canned = Canned::new(200, body);
        canned.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        canned.xml = xml.map(str::to_owned);
        self.routes
            .lock()
            .unwrap()
            .insert(Self::key(method, path), canned);
    }

    /// Adds response headers to the route `METHOD /fhir/path`.
    pub fn route_headers(&self, method: &str, path: &str, headers: &[(&str, &str)]) {
        self.headers.lock().unwrap().insert(
            Self::key(method, path),
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }

    /// The base URL the fake server answers under.
    pub fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// A gateway running in-process on ephemeral ports.
pub struct TestGateway {
    pub base: String,
    pub admin: String,
    pub audit_path: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("fhirgate-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestGateway {
    /// Starts a gateway for `idp` in front of `upstream_addr`; `extra` is appended to the
    /// issuer's YAML block.
    pub async fn start(idp: &FakeIdp, upstream_addr: SocketAddr, issuer_extra: &str) -> Self {
        Self::start_with(idp, upstream_addr, issuer_extra, "").await
    }

    /// [`TestGateway::start`] with `upstream_extra` appended to the `upstream` block.
    pub async fn start_with(
        idp: &FakeIdp,
        upstream_addr: SocketAddr,
        issuer_extra: &str,
        upstream_extra: &str,
    ) -> Self {
        Self::start_with_sections(idp, upstream_addr, issuer_extra, upstream_extra, "").await
    }

    /// [`TestGateway::start_with`] with `sections` (top-level YAML, such as `cors:`) at the
    /// end of the configuration.
    pub async fn start_with_sections(
        idp: &FakeIdp,
        upstream_addr: SocketAddr,
        issuer_extra: &str,
        upstream_extra: &str,
        sections: &str,
    ) -> Self {
        let url = format!("http://{upstream_addr}/fhir");
        Self::start_at(idp, &url, issuer_extra, upstream_extra, sections).await
    }

    /// [`TestGateway::start_with_sections`] in front of the FHIR base `upstream_url`.
    pub async fn start_at(
        idp: &FakeIdp,
        upstream_url: &str,
        issuer_extra: &str,
        upstream_extra: &str,
        sections: &str,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let admin_port = admin_listener.local_addr().unwrap().port();
        let dir = TempDir::new();
        let audit_path = dir.0.join("audit.jsonl");
        let yaml = format!(
            r#"
listen: "127.0.0.1:{port}"
admin_listen: "127.0.0.1:{admin_port}"
upstream:
  url: "{upstream_url}"
  public_base_path: "/fhir"
  connect_timeout: "1s"
  response_timeout: "2s"
{upstream_extra}
issuers:
  - issuer: "{issuer}"
    audience: "https://gw.test/fhir"
    algorithms: ["RS256", "ES256"]
    leeway: "5s"
{cooldown}{issuer_extra}
audit:
  spool: {{ path: "{audit}.spool" }}
  sinks: {{ trail: {{ jsonl: {{ path: "{audit}" }} }} }}
{sections}
"#,
            issuer = idp.issuer,
            audit = audit_path.display(),
            cooldown = if issuer_extra.contains("jwks_refetch_cooldown") {
                ""
            } else {
                "    jwks_refetch_cooldown: \"60s\"\n"
            },
        );
        let base = format!("http://127.0.0.1:{port}/fhir");
        Self::serve(&yaml, listener, admin_listener, base, audit_path, dir).await
    }

    /// Serves the configuration `yaml` on the two listeners until dropped; returns once the
    /// admin listener answers, that is once start-up (including the first key fetch) is done.
    async fn serve(
        yaml: &str,
        listener: TcpListener,
        admin_listener: TcpListener,
        base: String,
        audit_path: std::path::PathBuf,
        dir: TempDir,
    ) -> Self {
        let admin_port = admin_listener.local_addr().unwrap().port();
        let config = fhirgate::config::Config::parse(yaml, "test").expect("test config");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            fhirgate::run::serve_on(config, listener, admin_listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let admin = format!("http://127.0.0.1:{admin_port}");
        for _ in 0..200 {
            if client()
                .get(format!("{admin}/healthz"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            base,
            admin,
            audit_path,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Starts a gateway whose configuration is `rest` (issuers, `upstream` or `routes`, and
    /// any other section) after its listeners, with a JSON lines audit trail. Its `base` is the
    /// listener's origin (`http://127.0.0.1:PORT`), without a base path.
    pub async fn start_config(rest: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let admin_port = admin_listener.local_addr().unwrap().port();
        let dir = TempDir::new();
        let audit_path = dir.0.join("audit.jsonl");
        let yaml = format!(
            r#"
listen: "127.0.0.1:{port}"
admin_listen: "127.0.0.1:{admin_port}"
{rest}
audit:
  spool: {{ path: "{audit}.spool" }}
  sinks: {{ trail: {{ jsonl: {{ path: "{audit}" }} }} }}
"#,
            audit = audit_path.display(),
        );
        let base = format!("http://127.0.0.1:{port}");
        Self::serve(&yaml, listener, admin_listener, base, audit_path, dir).await
    }

    /// The value of the metric series `name` (with its labels, as exported), if exported.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Stops the gateway and returns its audit records.
    pub async fn stop(mut self) -> Vec<Value> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.audit_records()
    }

    pub fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// The default claims of a patient-context token for patient `pat-A`.
pub fn claims(issuer: &str, scope: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({
        "iss": issuer,
        "aud": "https://gw.test/fhir",
        "sub": "user-A",
        "client_id": "app-1",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 300,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": scope,
        "patient": "pat-A",
        "fhirUser": "Patient/pat-A",
    })
}

/// A file holding `secret`, to be named by a configuration (which never holds secrets
/// itself); it lasts as long as the test process.
pub fn secret_file(secret: &str) -> String {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(TempDir::new);
    let path = dir.0.join(format!("secret-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, secret).unwrap();
    path.display().to_string()
}

/// Waits up to 20 s for `done`, polling every 100 ms; fails the test naming `what`.
pub async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs `claims` with a fixture key (`rsa-a`, `rsa-b`, `ec-a`) under `kid`.
pub fn sign(key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key}.pem")).unwrap();
    let (alg, encoding) = if key.starts_with("ec") {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

/// The public JWK of a fixture key.
pub fn jwk(key: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/{key}.jwk.json")).unwrap())
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response as the client saw it.
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends one HTTP/1.1 request with the request target exactly as given (no dot-segment
/// removal or re-encoding, unlike URL-based clients).
pub async fn send_raw(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> RawResponse {
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header("host", &authority);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = sender
        .send_request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Replaces `now`, `now+N` and `now-N` with epoch seconds and the conventions' issuer with the
/// test identity provider's.
pub fn claims_for(
    case_claims: &serde_json::Map<String, Value>,
    conventions_issuer: &str,
    issuer: &str,
) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut out = serde_json::Map::new();
    for (name, value) in case_claims {
        let value = match value.as_str() {
            Some("now") => Value::from(now),
            Some(text) if text.starts_with("now+") => {
                Value::from(now + text[4..].parse::<i64>().unwrap())
            }
            Some(text) if text.starts_with("now-") => {
                Value::from(now - text[4..].parse::<i64>().unwrap())
            }
            // A look-alike issuer (`…/realms/smart-evil`) stays a look-alike of the test one.
            Some(text) if name == "iss" && text.starts_with(conventions_issuer) => {
                Value::from(format!("{issuer}{}", &text[conventions_issuer.len()..]))
            }
            _ => value.clone(),
        };
        out.insert(name.clone(), value);
    }
    Value::Object(out)
}

/// The issue code that goes with an accepted status other than the preferred one.
fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 => "unknown",
        403 => "forbidden",
        404 => "not-found",
        405 | 415 => "not-supported",
        _ => "exception",
    }
}

/// Checks a case's expected answer (status or accepted statuses, and for refusals the content
/// type, the OperationOutcome's first issue and the `WWW-Authenticate` parts); returns what
/// does not hold.
pub fn check_answer(expected: &Value, response: &RawResponse) -> Vec<String> {
    let mut problems = Vec::new();
    let accepted: Vec<u16> = match expected.get("status_any_of") {
        Some(list) => list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as u16)
            .collect(),
        None => vec![expected["status"].as_u64().unwrap() as u16],
    };
    if !accepted.contains(&response.status) {
        problems.push(format!(
            "status {} not in {accepted:?}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }

    if response.status >= 400 {
        if let Some(wanted) = expected["content_type"].as_str() {
            let got = response
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !got.starts_with(wanted) {
                problems.push(format!("content type '{got}', expected {wanted}"));
            }
        }
        // The case's code goes with its preferred status; an accepted alternative status
        // carries the code that belongs to it.
        let preferred = expected["status"].as_u64().map(|s| s as u16);
        let mut wanted_codes = vec![code_for_status(response.status)];
        if let Some(code) = expected["operation_outcome"]["issue_code"].as_str()
            && preferred.is_none_or(|p| p == response.status)
        {
            wanted_codes = vec![code];
            if preferred.is_none() {
                wanted_codes.push(code_for_status(response.status));
            }
        }
        let outcome: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if outcome["resourceType"] != "OperationOutcome" {
            problems.push("refusal body is not an OperationOutcome".into());
        } else {
            let issue = &outcome["issue"][0];
            if !wanted_codes.iter().any(|code| issue["code"] == *code) {
                problems.push(format!(
                    "issue code {}, expected {wanted_codes:?}",
                    issue["code"]
                ));
            }
            if let Some(severity) = expected["operation_outcome"]["severity"].as_str()
                && issue["severity"] != severity
            {
                problems.push(format!(
                    "severity {}, expected {severity}",
                    issue["severity"]
                ));
            }
        }
        if let Some(parts) = expected["www_authenticate_contains"].as_array() {
            let challenge = response
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            for part in parts {
                let part = part.as_str().unwrap();
                if !challenge.contains(part) {
                    problems.push(format!("WWW-Authenticate '{challenge}' lacks {part}"));
                }
            }
        }
    }

    problems
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `fhirgate serve` child process with a configuration of its own, killed when dropped.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub base: String,
    pub admin: String,
    pub dir: TempDir,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// The process's configuration file.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.0.join("fhirgate.yaml")
    }

    /// Sends the process `signal` (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    pub async fn exited_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the gateway did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to stderr so far (its logs, at `warn` and above).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// The value of the metric series `name` (with its labels, as exported), if exported.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Starts `fhirgate serve` with `listen`, `admin_listen` and then `rest` (with `{dir}`
    /// replaced by the process's own folder), logging at `log` (`FHIRGATE_LOG`); waits until
    /// `/healthz` answers 200. Its `base` is the listener's origin.
    pub async fn start_config(rest: &str, log: &str) -> Self {
        let dir = TempDir::new();
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            "listen: \"127.0.0.1:{port}\"\nadmin_listen: \"127.0.0.1:{admin_port}\"\n{rest}\n",
            rest = rest.replace("{dir}", &dir.0.display().to_string()),
        );
        let config = dir.0.join("fhirgate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let stderr = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("FHIRGATE_LOG", log)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let admin = format!("http://127.0.0.1:{admin_port}");
        let started = std::time::Instant::now();
        while client()
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin,
            dir,
        }
    }

    /// Starts `fhirgate serve` with `listen`, `admin_listen`, an upstream at `upstream` and one
    /// issuer `idp` (audience `https://gw.test/fhir`, RS256), then `rest` with `{dir}` replaced
    /// by the process's own folder; waits until `ready` (`/healthz` or `/readyz`) answers 200.
    pub async fn start(
        idp: &FakeIdp,
        upstream: SocketAddr,
        rest: &str,
        stdout: std::process::Stdio,
        ready: &str,
    ) -> Self {
        let dir = TempDir::new();
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            r#"listen: "127.0.0.1:{port}"
admin_listen: "127.0.0.1:{admin_port}"
upstream:
  url: "http://{upstream}/fhir"
  public_base_path: "/fhir"
issuers:
  - issuer: "{issuer}"
    audience: "https://gw.test/fhir"
    algorithms: ["RS256"]
{rest}
"#,
            issuer = idp.issuer,
            rest = rest.replace("{dir}", &dir.0.display().to_string()),
        );
        let config = dir.0.join("fhirgate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let stderr = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("FHIRGATE_LOG", "warn")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let admin = format!("http://127.0.0.1:{admin_port}");
        let started = std::time::Instant::now();
        while client()
            .get(format!("{admin}{ready}"))
            .send()
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}/fhir"),
            admin,
            dir,
        }
    }
}
