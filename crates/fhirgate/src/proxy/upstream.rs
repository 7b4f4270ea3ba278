//! The FHIR server behind one route: the servers that serve its base, which of them a request
//! goes to, whether they are in rotation, and when a failed request is sent again.
//!
//! Every server has a pooled client of its own that connects to the server's address while
//! the request names the upstream's `url` (its `Host`, and the name TLS verifies), so all the
//! servers answer for one FHIR base. A request goes to the next server in turn
//! (`round-robin`) or to the one with the fewest requests waiting (`least-outstanding`),
//! among the servers in rotation.
//!
//! Health is passive and, when configured, active. Failures in a row (no connection, no answer
//! in time, a broken connection) take a server out of rotation; without active checks it is
//! tried again by requests once its cool-down has passed, and a success brings it back. Active
//! checks fetch a path under the FHIR base on each server every interval: failed checks in a
//! row take it out, healthy checks in a row bring it back. Both log the change and set
//! `fhirgate_upstream_up`. A route with every server out answers at once, without connecting.
//!
//! A request that could not connect has sent nothing and goes to another server, whatever its
//! method; one whose bytes may have reached a server that then failed is sent again only when
//! it is a GET or HEAD, at most `retries` times, each time to a server not tried yet. Nothing
//! is sent again once a response head has arrived.
//!
//! A route of one server takes none of these paths: a request costs an atomic load to see the
//! server is in rotation, and another on success.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::forward::{Outbound, target_url};
use super::upstream_credential::Credential;
use super::upstream_tls::{self, UpstreamSetupError};
use super::upstream_token::UpstreamToken;
use crate::config::{self, ActiveHealth, Balance, PassiveHealth};
use crate::metrics::{Metrics, Route, UpstreamError};
use crate::refusal::Refusal;
use crate::telemetry;

/// The FHIR server behind one route.
pub struct Upstream {
    pool: Arc<Pool>,
    /// Held while the upstream is in use; dropping it stops the active health checks.
    checks: Option<watch::Sender<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("route", &self.pool.route)
            .field("base", &self.pool.base)
            .field("servers", &self.pool.servers.len())
            .finish_non_exhaustive()
    }
}

/// What the health checks share with the requests.
struct Pool {
    servers: Box<[Server]>,
    /// The next server in turn.
    next: AtomicUsize,
    balance: Balance,
    retries: u32,
    /// What the gateway proves to the upstream on every request, if anything.
    credential: Credential,
    /// The upstream's FHIR base URL.
    base: String,
    /// The `Host` every request names: the authority of `url`.
    host: HeaderValue,
    response_timeout: Duration,
    connect_timeout: Duration,
    passive: PassiveHealth,
    active: Option<ActiveHealth>,
    route: Route,
    metrics: Arc<Metrics>,
    /// The origin of the times kept in milliseconds.
    epoch: Instant,
}

/// One server of an upstream: its client, and whether it is in rotation.
struct Server {
    /// The address as configured, naming the server in metrics and logs.
    name: String,
    /// `host:port` to connect to.
    address: String,
    client: Client<HttpsConnector<ServerConnector>, Full<Bytes>>,
    /// In rotation.
    up: AtomicBool,
    /// Requests failed in a row.
    failures: AtomicU32,
    /// While out of rotation: until when (milliseconds after the pool's epoch) requests leave
    /// it alone.
    out_until: AtomicU64,
    /// Health checks passed and failed in a row.
    checks_passed: AtomicU32,
    checks_failed: AtomicU32,
    /// Requests waiting for a response head (with `least-outstanding`).
    outstanding: AtomicUsize,
    /// `fhirgate_upstream_up` of this server.
    gauge: Gauge,
}

/// How one attempt failed.
#[derive(Debug, Clone, Copy)]
struct Failure {
    kind: UpstreamError,
}

impl Failure {
    /// No connection was made, so nothing of the request was sent.
    fn nothing_sent(self) -> bool {
        self.kind == UpstreamError::Connect
    }
}

/// Connects to one server's address, whatever the request's URL names; TLS (around it) still
/// verifies the name of the URL.
#[derive(Clone)]
struct ServerConnector {
    http: HttpConnector,
    address: Uri,
}

impl tower::Service<Uri> for ServerConnector {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = <HttpConnector as tower::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        self.http.call(self.address.clone())
    }
}

impl Upstream {
    /// The client of `config`'s servers for route `route`, counting into `metrics`; errors
    /// name the section at `at` (`upstream`, `routes[1].upstream`). Health checks start with
    /// [`Upstream::start_health_checks`].
    pub fn new(
        config: &config::Upstream,
        route: Route,
        at: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamSetupError> {
        let tls = upstream_tls::client_config(config).map_err(|e| e.at(at))?;
        let credential = Credential::new(config, route, &metrics).map_err(|e| e.at(at))?;
        let default_port = config.default_port();
        let servers = config
            .server_addresses()
            .into_iter()
            .map(|server| {
                let address = server.socket_text(default_port);
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(config.connect_timeout));
                http.set_nodelay(true);
                http.enforce_http(false);
                let connector = ServerConnector {
                    http,
                    address: format!("http://{address}/")
                        .parse()
                        .unwrap_or_else(|_| Uri::from_static("http://invalid./")),
                };
                let builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http();
                let connector = if config.http2 {
                    builder.enable_http2().wrap_connector(connector)
                } else {
                    builder.enable_http1().wrap_connector(connector)
                };
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .http2_only(config.http2)
                    .build(connector);
                Server {
                    gauge: metrics.upstream_server(route, &server.text),
                    name: server.text,
                    address,
                    client,
                    up: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    out_until: AtomicU64::new(0),
                    checks_passed: AtomicU32::new(0),
                    checks_failed: AtomicU32::new(0),
                    outstanding: AtomicUsize::new(0),
                }
            })
            .collect();
        let uri = config.url.uri();
        let authority = uri.authority().map_or("", |a| a.as_str());
        Ok(Self {
            pool: Arc::new(Pool {
                servers,
                next: AtomicUsize::new(0),
                balance: config.balance,
                retries: config.retries,
                credential,
                base: config.url.as_str(),
                host: HeaderValue::from_str(authority)
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                response_timeout: config.response_timeout,
                connect_timeout: config.connect_timeout,
                passive: config.health.passive.clone(),
                active: config.health.active.clone(),
                route,
                metrics,
                epoch: Instant::now(),
            }),
            checks: None,
        })
    }

    /// Starts the active health checks, if configured: one task per server, each stopped
    /// when this upstream is dropped (its gateway replaced by a reload and done with).
    pub fn start_health_checks(&mut self) {
        let Some(active) = self.pool.active.clone() else {
            return;
        };
        let (stop, stopped) = watch::channel(());
        for index in 0..self.pool.servers.len() {
            let (pool, active, stopped) = (self.pool.clone(), active.clone(), stopped.clone());
            tokio::spawn(check_server(pool, index, active, stopped));
        }
        self.checks = Some(stop);
    }

    /// The route this upstream serves, as metrics name it.
    pub fn route(&self) -> Route {
        self.pool.route
    }

    /// The upstream's fetched access token, when its credential is one.
    pub fn fetched_token(&self) -> Option<&Arc<UpstreamToken>> {
        match &self.pool.credential {
            Credential::Fetched(token) => Some(token),
            _ => None,
        }
    }

    /// Whether a request could carry the upstream's credential now (always, unless it is a
    /// fetched token of which none is valid).
    pub fn has_credential(&self) -> bool {
        self.pool.credential.authorization().is_ok()
    }

    /// The servers, as metrics name them.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.pool.servers.iter().map(|s| s.name.as_str())
    }

    /// Sends a request to a server in rotation and waits for the status line and headers;
    /// sends it again to another server when it failed and may be (see the module).
    pub async fn send(&self, outbound: Outbound<'_>) -> Result<Response<Incoming>, Refusal> {
        let pool = &*self.pool;
        let target = target_url(&pool.base, outbound.path, outbound.query);
        let uri: Uri = target
            .parse()
            .map_err(|_| Refusal::BadRequest("request target cannot be forwarded".into()))?;
        // Without a valid credential nothing is sent.
        let credential = pool
            .credential
            .authorization()
            .map_err(|_| Refusal::UpstreamCredentialUnavailable)?;
        let mut headers = outbound.headers;
        headers.insert(header::HOST, pool.host.clone());
        if let Some(credential) = credential {
            headers.insert(header::AUTHORIZATION, credential);
        }
        let method = outbound.method;
        let request = |uri, headers, body| {
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            request
        };
        if let [server] = &*pool.servers {
            if !pool.admits(server) {
                return Err(pool.all_out());
            }
            let request = request(uri, headers, outbound.body);
            return pool
                .attempt(server, request)
                .await
                .map_err(|failure| failure.refusal());
        }
        let may_repeat = *method == Method::GET || *method == Method::HEAD;
        let mut retries = pool.retries;
        let mut tried = 0u64;
        let mut failed: Option<Failure> = None;
        loop {
            let Some(index) = pool.pick(tried) else {
                return Err(failed.map_or_else(|| pool.all_out(), Failure::refusal));
            };
            tried |= 1 << index;
            let server = &pool.servers[index];
            if let Some(failure) = failed {
                pool.metrics.upstream_retry(pool.route);
                tracing::debug!(route = pool.route.as_str(), server = %server.name, after = failure.kind.as_str(), "request sent again to another server");
            }
            let copy = request(uri.clone(), headers.clone(), outbound.body.clone());
            match pool.attempt(server, copy).await {
                Ok(response) => return Ok(response),
                Err(failure) => {
                    let again = if failure.nothing_sent() {
                        true
                    } else if may_repeat && retries > 0 {
                        retries -= 1;
                        true
                    } else {
                        false
                    };
                    if !again {
                        return Err(failure.refusal());
                    }
                    failed = Some(failure);
                }
            }
        }
    }

    /// Reads a body the gateway must check, decoded by its `Content-Encoding`; at most
    /// `limit` bytes before and after decoding, within the response timeout.
    pub async fn read_body(
        &self,
        body: Incoming,
        encoding: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<Bytes, Refusal> {
        let raw = self.read_raw(body, limit).await?;
        self.decode(encoding, raw, limit)
    }

    /// A body as read, decoded from its `Content-Encoding`, up to `limit` bytes decoded.
    pub(crate) fn decode(
        &self,
        encoding: Option<&HeaderValue>,
        raw: Bytes,
        limit: usize,
    ) -> Result<Bytes, Refusal> {
        super::encoding::decode(encoding, raw, limit).map_err(|error| {
            let kind = match error {
                super::encoding::DecodeError::TooLarge { .. } => UpstreamError::ResponseTooLarge,
                _ => UpstreamError::InvalidResponse,
            };
            self.failed(kind, Refusal::UpstreamUnverifiable(error.to_string()))
        })
    }

    /// The whole body, up to `limit` bytes and within the response timeout, as sent.
    pub(crate) async fn read_raw(&self, body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
        let collect = Limited::new(body, limit).collect();
        match tokio::time::timeout(self.pool.response_timeout, collect).await {
            Err(_) => Err(self.failed(UpstreamError::Timeout, Refusal::UpstreamTimeout)),
            Ok(Err(error)) => {
                let kind = if error.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::ResponseTooLarge
                } else {
                    UpstreamError::InvalidResponse
                };
                Err(self.failed(kind, Refusal::UpstreamUnverifiable(error.to_string())))
            }
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// Counts a failure after the response head and turns it into the refusal the client
    /// gets.
    fn failed(&self, kind: UpstreamError, refusal: Refusal) -> Refusal {
        self.pool.metrics.upstream_error(self.pool.route, kind);
        refusal
    }

    /// Whether a TCP connection to a server in rotation (or any server, when none is) can be
    /// opened now.
    pub async fn reachable(&self) -> bool {
        let pool = &*self.pool;
        let in_rotation = pool.servers.iter().any(|s| pool.admits(s));
        for server in pool.servers.iter() {
            if in_rotation && !pool.admits(server) {
                continue;
            }
            let connect = tokio::net::TcpStream::connect(server.address.as_str());
            if matches!(
                tokio::time::timeout(pool.connect_timeout, connect).await,
                Ok(Ok(_))
            ) {
                return true;
            }
        }
        false
    }
}

impl Failure {
    fn refusal(self) -> Refusal {
        match self.kind {
            UpstreamError::Timeout => Refusal::UpstreamTimeout,
            _ => Refusal::UpstreamUnavailable,
        }
    }
}

impl Pool {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// May a request go to `server`: in rotation, or (without active checks) out but past
    /// its cool-down, to see whether it is back.
    fn admits(&self, server: &Server) -> bool {
        server.up.load(Relaxed)
            || (self.active.is_none() && self.now_ms() >= server.out_until.load(Relaxed))
    }

    /// The server a request goes to next, among those `tried` (a bit per server) leaves.
    fn pick(&self, tried: u64) -> Option<usize> {
        let count = self.servers.len();
        let start = self.next.fetch_add(1, Relaxed) % count;
        let candidates = (0..count)
            .map(|k| (start + k) % count)
            .filter(|&i| tried & (1 << i) == 0 && self.admits(&self.servers[i]));
        match self.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastOutstanding => {
                candidates.min_by_key(|&i| self.servers[i].outstanding.load(Relaxed))
            }
        }
    }

    /// The refusal when every server is out: 503, to come back when one may be in again.
    fn all_out(&self) -> Refusal {
        self.metrics.upstream_unavailable(self.route);
        let wait = match &self.active {
            Some(active) => active.interval.saturating_mul(active.healthy),
            None => {
                let now = self.now_ms();
                let soonest = self
                    .servers
                    .iter()
                    .map(|s| s.out_until.load(Relaxed).saturating_sub(now))
                    .min()
                    .unwrap_or(0);
                Duration::from_millis(soonest)
            }
        };
        Refusal::UpstreamDown {
            retry_after: wait.max(Duration::from_secs(1)),
        }
    }

    /// One attempt of a request on `server`, until its response head.
    async fn attempt(
        &self,
        server: &Server,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        let _waiting = (self.balance == Balance::LeastOutstanding).then(|| Outstanding::on(server));
        let span = telemetry::upstream_span(self.route, request.method().as_str());
        let sent = Instant::now();
        let answer = tokio::time::timeout(self.response_timeout, server.client.request(request))
            .instrument(span.clone())
            .await;
        self.metrics.upstream_call(self.route, sent.elapsed());
        let kind = match answer {
            Ok(Ok(response)) => {
                telemetry::record_upstream(&span, Ok(response.status()));
                self.succeeded(server);
                return Ok(response);
            }
            Err(_) => UpstreamError::Timeout,
            Ok(Err(error)) => {
                tracing::warn!(route = self.route.as_str(), upstream = %self.base, server = %server.name, %error, connect = error.is_connect(), "upstream request failed");
                if error.is_connect() {
                    UpstreamError::Connect
                } else {
                    UpstreamError::InvalidResponse
                }
            }
        };
        telemetry::record_upstream(&span, Err(kind));
        self.metrics.upstream_error(self.route, kind);
        self.failed(server, kind);
        Err(Failure { kind })
    }

    /// A request `server` answered.
    fn succeeded(&self, server: &Server) {
        if server.failures.load(Relaxed) != 0 {
            server.failures.store(0, Relaxed);
        }
        if !server.up.load(Relaxed) {
            self.bring_back(server, "a request succeeded");
        }
    }

    /// A request `server` failed (`kind`): enough in a row take it out for the cool-down.
    fn failed(&self, server: &Server, kind: UpstreamError) {
        let failures = server.failures.fetch_add(1, Relaxed).saturating_add(1);
        if failures >= self.passive.failures {
            let until = self.now_ms().saturating_add(
                u64::try_from(self.passive.cool_down.as_millis()).unwrap_or(u64::MAX),
            );
            server.out_until.store(until, Relaxed);
            server.checks_passed.store(0, Relaxed);
            self.take_out(server, kind.as_str(), failures);
        }
    }

    /// Takes `server` out of rotation, if it is in.
    fn take_out(&self, server: &Server, why: &str, in_a_row: u32) {
        if server.up.swap(false, Relaxed) {
            server.gauge.set(0);
            let back = match &self.active {
                Some(_) => "when health checks pass",
                None => "after the cool-down",
            };
            tracing::warn!(
                route = self.route.as_str(),
                server = %server.name,
                reason = why,
                in_a_row,
                cool_down = ?self.passive.cool_down,
                "upstream server taken out of rotation; tried again {back}"
            );
        }
    }

    /// Brings `server` back into rotation, if it is out.
    fn bring_back(&self, server: &Server, why: &str) {
        if !server.up.swap(true, Relaxed) {
            server.failures.store(0, Relaxed);
            server.checks_failed.store(0, Relaxed);
            server.gauge.set(1);
            tracing::info!(route = self.route.as_str(), server = %server.name, reason = why, "upstream server back in rotation");
        }
    }

    /// One health check of `server`: `Ok` when it answered 2xx within the timeout, else why
    /// not.
    async fn check(&self, server: &Server, active: &ActiveHealth) -> Result<(), String> {
        let path = active.path.trim_start_matches('/');
        let uri: Uri = target_url(&self.base, path, None)
            .parse()
            .map_err(|_| "the health check path is not a URL".to_owned())?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("fhirgate-health-check"),
        );
        if let Ok(Some(credential)) = self.credential.authorization() {
            headers.insert(header::AUTHORIZATION, credential);
        }
        let checked = async {
            let response = server
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read to its end, so the connection can be used again.
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| e.to_string())?;
            }
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        match tokio::time::timeout(active.timeout, checked).await {
            Ok(outcome) => outcome,
            Err(_) => Err("no answer in time".to_owned()),
        }
    }

    /// What a health check of `server` came to.
    fn checked(&self, server: &Server, outcome: Result<(), String>, active: &ActiveHealth) {
        match outcome {
            Ok(()) => {
                server.checks_failed.store(0, Relaxed);
                let passed = server.checks_passed.fetch_add(1, Relaxed).saturating_add(1);
                if passed >= active.healthy {
                    self.bring_back(server, "health checks passed");
                }
            }
            Err(why) => {
                server.checks_passed.store(0, Relaxed);
                let failed = server.checks_failed.fetch_add(1, Relaxed).saturating_add(1);
                tracing::debug!(route = self.route.as_str(), server = %server.name, %why, failed, "upstream health check failed");
                if failed >= active.unhealthy {
                    self.take_out(server, &format!("health check: {why}"), failed);
                }
            }
        }
    }
}

/// Checks one server every interval until `stop`'s sender is dropped.
async fn check_server(
    pool: Arc<Pool>,
    index: usize,
    active: ActiveHealth,
    mut stop: watch::Receiver<()>,
) {
    let server = &pool.servers[index];
    loop {
        let outcome = tokio::select! {
            outcome = pool.check(server, &active) => outcome,
            _ = stop.changed() => return,
        };
        pool.checked(server, outcome, &active);
        tokio::select! {
            () = tokio::time::sleep(active.interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A request waiting on a server's response head, counted while it lives.
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn on(server: &'a Server) -> Self {
        server.outstanding.fetch_add(1, Relaxed);
        Self(&server.outstanding)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn made(settings: &str) -> Upstream {
        let text = crate::config::EMBEDDED_DEFAULT.replace(
            "  response_timeout: \"30s\"\n",
            &format!("  response_timeout: \"30s\"\n{settings}"),
        );
        let config = Config::parse(&text, "test").unwrap();
        let metrics = Arc::new(Metrics::default());
        Upstream::new(
            &config.routes[0].upstream,
            Route::DEFAULT,
            "upstream",
            metrics,
        )
        .unwrap()
    }

    #[test]
    fn round_robin_takes_turns_among_the_servers_in_rotation() {
        let upstream = made("  servers: [\"a:1\", \"b:1\", \"c:1\"]\n");
        let pool = &upstream.pool;
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Never one already tried.
        assert_eq!(pool.pick(0b011), Some(2));
        assert_eq!(pool.pick(0b111), None);
        pool.take_out(&pool.servers[1], "test", 1);
        pool.servers[1].out_until.store(u64::MAX, Relaxed);
        let picks: Vec<usize> = (0..4).map(|_| pool.pick(0).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn least_outstanding_picks_the_server_with_fewest_waiting() {
        let upstream =
            made("  servers: [\"a:1\", \"b:1\", \"c:1\"]\n  balance: least-outstanding\n");
        let pool = &upstream.pool;
        let _a = [
            Outstanding::on(&pool.servers[0]),
            Outstanding::on(&pool.servers[0]),
        ];
        let _c = Outstanding::on(&pool.servers[2]);
        for _ in 0..3 {
            assert_eq!(pool.pick(0), Some(1));
        }
        assert_eq!(pool.pick(0b010), Some(2));
        drop(_a);
        assert_eq!(pool.servers[0].outstanding.load(Relaxed), 0);
    }

    #[test]
    fn failures_in_a_row_take_a_server_out_for_its_cool_down() {
        let upstream = made(
            "  servers: [\"a:1\", \"b:1\"]\n  health: { passive: { failures: 2, cool_down: \"1h\" } }\n",
        );
        let pool = &upstream.pool;
        let a = &pool.servers[0];
        pool.failed(a, UpstreamError::Connect);
        pool.succeeded(a);
        pool.failed(a, UpstreamError::Timeout);
        assert!(
            pool.admits(a),
            "a success in between starts the count again"
        );
        pool.failed(a, UpstreamError::Timeout);
        assert!(!pool.admits(a));
        assert_eq!(a.gauge.get(), 0);
        assert_eq!(pool.pick(0), Some(1));
        // The cool-down over, requests try it again; a success brings it back.
        a.out_until.store(0, Relaxed);
        assert!(pool.admits(a) && !a.up.load(Relaxed));
        pool.succeeded(a);
        assert!(a.up.load(Relaxed));
        assert_eq!(a.gauge.get(), 1);
    }

    #[test]
    fn with_every_server_out_the_answer_says_when_to_come_back() {
        let upstream = made(
            "  servers: [\"a:1\", \"b:1\"]\n  health: { passive: { failures: 1, cool_down: \"30s\" } }\n",
        );
        let pool = &upstream.pool;
        for server in pool.servers.iter() {
            pool.failed(server, UpstreamError::Connect);
        }
        assert_eq!(pool.pick(0), None);
        match pool.all_out() {
            Refusal::UpstreamDown { retry_after } => {
                assert!(
                    retry_after <= Duration::from_secs(30)
                        && retry_after >= Duration::from_secs(20)
                );
            }
            other => panic!("{other:?}"),
        }
        let checked =
            made("  servers: [\"a:1\"]\n  health: { active: { interval: \"5s\", healthy: 3 } }\n");
        let pool = &checked.pool;
        pool.failed(&pool.servers[0], UpstreamError::Connect);
        pool.failed(&pool.servers[0], UpstreamError::Connect);
        pool.failed(&pool.servers[0], UpstreamError::Connect);
        assert!(
            !pool.admits(&pool.servers[0]),
            "only the checks bring it back"
        );
        assert!(matches!(
            pool.all_out(),
            Refusal::UpstreamDown { retry_after } if retry_after == Duration::from_secs(15)
        ));
        let active = pool.active.clone().unwrap();
        pool.checked(&pool.servers[0], Ok(()), &active);
        pool.checked(&pool.servers[0], Ok(()), &active);
        assert!(!pool.admits(&pool.servers[0]));
        pool.checked(&pool.servers[0], Ok(()), &active);
        assert!(pool.admits(&pool.servers[0]));
    }
}
