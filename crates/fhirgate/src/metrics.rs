//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Every label is a typed value from a closed set (a decision, a reason code, an interaction,
//! a status class, an outcome) or an operator's configuration (an issuer URL, a sink name,
//! a route name), never something a client sends: no patient, subject, token, path, scope or
//! client id can become a label. Each gateway has its own registry, so gateways in one
//! process (tests) do not share counts. `docs/OBSERVABILITY.md` describes every metric.

use std::time::Duration;

use fhirgate_policy::request::Interaction;
use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditDecision;
use crate::refusal::Refusal;

/// Defines an enum of label values, each written as the lowercase text given for it.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The label value as exported.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_values! {
    /// How a call to an issuer went.
    pub enum Outcome {
        Ok => "ok",
        Error => "error",
    }
}

label_values! {
    /// A cache lookup's result.
    pub enum Lookup {
        Hit => "hit",
        Miss => "miss",
    }
}

label_values! {
    /// The gateway's caches.
    pub enum Cache {
        /// Verified JWTs.
        VerifiedTokens => "verified_tokens",
        /// Introspection answers.
        Introspection => "introspection",
    }
}

label_values! {
    /// What finding the signing key named by a token's header came to.
    pub enum KeyLookup {
        /// In the keys already loaded.
        Known => "known",
        /// Found after a fetch of the JWKS (this request's or one it waited for).
        Fetched => "fetched",
        /// Not in the JWKS even after fetching it again.
        Unknown => "unknown",
        /// Not loaded, and no fetch made because the refetch cool-down had not passed.
        CoolingDown => "cooling_down",
        /// The issuer has no keys at all (every fetch so far failed).
        Unavailable => "unavailable",
    }
}

label_values! {
    /// The first digit of an HTTP status.
    pub enum StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
        /// A status above 599, which HTTP allows but does not define.
        Other => "other",
    }
}

label_values! {
    /// Why a call to the FHIR server failed.
    pub enum UpstreamError {
        /// No connection could be made (refused, unresolvable, connect timeout).
        Connect => "connect",
        /// No response head, or no whole body, within the response timeout.
        Timeout => "timeout",
        /// The connection broke or the answer was not valid HTTP.
        InvalidResponse => "invalid_response",
        /// A response body the gateway must check was larger than it reads.
        ResponseTooLarge => "response_too_large",
    }
}

label_values! {
    /// How a fetch of the gateway's own upstream access token went.
    pub enum TokenFetch {
        /// A token was issued.
        Ok => "ok",
        /// The token endpoint answered with an error (a wrong secret, an unknown client).
        Refused => "refused",
        /// The token endpoint could not be reached or did not answer in time.
        Unreachable => "unreachable",
        /// The answer was not a usable bearer token.
        Invalid => "invalid",
    }
}

label_values! {
    /// A resource limit a client ran into (`limits` in the configuration).
    pub enum Limit {
        /// An HTTP/1.1 request head not received within `header_read_timeout`.
        HeaderReadTimeout => "header_read_timeout",
        /// An HTTP/1.1 request head over `max_header_bytes` or `max_headers`.
        HeaderSize => "header_size",
        /// A request body not received within `request_body_timeout`.
        RequestBodyTimeout => "request_body_timeout",
        /// A connection closed after `idle_timeout` without a request.
        IdleTimeout => "idle_timeout",
        /// A request refused because `max_upstream_requests` were at the FHIR server.
        UpstreamRequests => "upstream_requests",
        /// An HTTP/2 connection closed with GOAWAY `ENHANCE_YOUR_CALM`: too many streams reset
        /// by the client (rapid reset) or for its errors, or a header block flood.
        Http2Abuse => "http2_abuse",
    }
}

impl StatusClass {
    /// The class of `status`.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Other,
        }
    }
}

impl EncodeLabelValue for AuditDecision {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// An audit reason code: `allowed`, `cors_preflight`, `break_glass`, or the [`Refusal::reason`] of a
/// refused request. Only these constructors exist, so the set of values is the gateway's
/// fixed set of codes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Reason(&'static str);

impl Reason {
    /// A request forwarded and answered.
    pub const ALLOWED: Self = Self("allowed");
    /// A CORS preflight from an allowed origin, answered by the gateway.
    pub const CORS_PREFLIGHT: Self = Self("cors_preflight");
    /// A request the token's scopes did not cover, forwarded under break-the-glass.
    pub const BREAK_GLASS: Self = Self("break_glass");

    /// The reason code of `refusal`.
    pub fn of(refusal: &Refusal) -> Self {
        Self(refusal.reason())
    }

    /// The code, as written in audit records and labels.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

/// The name of a route, as configured: `default` for the route of an `upstream` section,
/// `none` for requests that match no route. Names are kept once each for the life of the
/// process, so a label is a copyable pointer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Route(&'static str);

impl Route {
    /// The single upstream of the configuration's `upstream` section.
    pub const DEFAULT: Self = Self("default");
    /// Requests that match no route.
    pub const NONE: Self = Self("none");

    /// The label of the route named `name`.
    pub fn named(name: &str) -> Self {
        static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        if name == Self::DEFAULT.0 {
            return Self::DEFAULT;
        }
        let mut names = NAMES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = names.get(name) {
            return Self(known);
        }
        // Routes come from the configuration; a name is kept once, however often it is
        // reloaded.
        let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(kept);
        Self(kept)
    }

    /// The route's name.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

/// The FHIR interaction of a request as a label: its code, or `none` when the request was
/// answered before it was classified.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct InteractionLabel(Option<Interaction>);

impl EncodeLabelValue for InteractionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        let code = self.0.map_or("none", |interaction| interaction.code());
        EncodeLabelValue::encode(&code, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    decision: AuditDecision,
    reason: Reason,
    interaction: InteractionLabel,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    route: Route,
    interaction: InteractionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    route: Route,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    route: Route,
    kind: UpstreamError,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenFetchLabels {
    route: Route,
    outcome: TokenFetch,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: Outcome,
}

/// Configuration reloads.
struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
    last_success: Gauge,
    certificate_reloads: Family<ReloadLabels, Counter>,
}

impl ReloadMetrics {
    fn new(registry: &mut Registry) -> Self {
        let reloads = Family::<ReloadLabels, Counter>::default();
        for outcome in Outcome::ALL {
            declare(&reloads, &ReloadLabels { outcome: *outcome });
        }
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome: ok (the new file serves), error (it was refused and the running configuration kept)",
            reloads.clone(),
        );
        let last_success = Gauge::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time the configuration in use was loaded (at start or by the last reload that succeeded)",
            last_success.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_certificate_reloads",
            "Reloads of the FHIR listener's TLS certificate and key by outcome: ok (the new pair serves), error (it was refused and the pair in use kept)",
            certificate_reloads.clone(),
        );
        Self {
            reloads,
            last_success,
            certificate_reloads,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerOutcome {
    issuer: String,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLookupLabels {
    issuer: String,
    result: KeyLookup,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: Cache,
    result: Lookup,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// The audit spool and its shippers.
#[derive(Default)]
struct AuditMetrics {
    appended: Counter,
    dropped: Counter,
    write_failures: Counter,
    spool_bytes: Gauge,
    accepting: Gauge,
    shipped: Family<SinkLabel, Counter>,
    delivery_failures: Family<SinkLabel, Counter>,
    unshipped: Family<SinkLabel, Gauge>,
    oldest_unshipped: Family<SinkLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl AuditMetrics {
    fn register(&self, registry: &mut Registry) {
        let audit = registry.sub_registry_with_prefix("audit");
        audit.register(
            "records",
            "Audit records appended to the spool",
            self.appended.clone(),
        );
        audit.register(
            "dropped_records",
            "Audit records deleted unshipped because the spool was full (when_full: drop-oldest)",
            self.dropped.clone(),
        );
        audit.register(
            "spool_write_failures",
            "Failed writes to the audit spool (requests are refused until it can be written)",
            self.write_failures.clone(),
        );
        audit.register(
            "spool_bytes",
            "Bytes of segment files in the audit spool",
            self.spool_bytes.clone(),
        );
        audit.register(
            "spool_accepting",
            "1 while the audit spool takes records, 0 while requests are refused for it",
            self.accepting.clone(),
        );
        audit.register(
            "shipped_records",
            "Audit records a sink acknowledged",
            self.shipped.clone(),
        );
        audit.register(
            "delivery_failures",
            "Batches a sink did not take (each is retried)",
            self.delivery_failures.clone(),
        );
        audit.register(
            "unshipped_records",
            "Audit records in the spool a sink has not acknowledged yet",
            self.unshipped.clone(),
        );
        audit.register(
            "oldest_unshipped_age_seconds",
            "Age of the oldest audit record a sink has not acknowledged; 0 when caught up",
            self.oldest_unshipped.clone(),
        );
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Requests as their clients got them.
struct RequestMetrics {
    answered: Family<RequestLabels, Counter>,
    seconds: Histograms<DurationLabels>,
    throttled: Counter,
}

impl RequestMetrics {
    fn new() -> Self {
        Self {
            answered: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
            throttled: Counter::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests answered, by route, decision, audit reason, FHIR interaction and status class",
            self.answered.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response head, gateway and upstream together, by route and FHIR interaction",
            self.seconds.clone(),
        );
        registry.register(
            "throttled",
            "Requests refused by a rate limit",
            self.throttled.clone(),
        );
    }
}

/// Calls to the FHIR server.
struct UpstreamMetrics {
    seconds: Histograms<RouteLabel>,
    errors: Family<UpstreamErrorLabels, Counter>,
    token_fetches: Family<TokenFetchLabels, Counter>,
    retries: Family<RouteLabel, Counter>,
    unavailable: Family<RouteLabel, Counter>,
    up: Family<ServerLabels, Gauge>,
    /// The servers of the configuration in use, whose `up` series are exported.
    servers: std::sync::Mutex<Vec<ServerLabels>>,
}

impl UpstreamMetrics {
    fn new() -> Self {
        Self {
            seconds: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            token_fetches: Family::default(),
            retries: Family::default(),
            unavailable: Family::default(),
            up: Family::default(),
            servers: std::sync::Mutex::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to the FHIR server to its response head (or failure), pre-check fetches included",
            self.seconds.clone(),
        );
        registry.register(
            "upstream_errors",
            "Calls to the FHIR server that failed, by kind",
            self.errors.clone(),
        );
        registry.register(
            "upstream_token_fetches",
            "Fetches of the gateway's own access token for the FHIR server (client credentials), by outcome",
            self.token_fetches.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests sent again to another server of the route after a server failed them",
            self.retries.clone(),
        );
        registry.register(
            "upstream_unavailable",
            "Requests answered 503 at once because every server of the route was out of rotation",
            self.unavailable.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while a server of a route is in rotation, 0 while it is out (failed requests or health checks)",
            self.up.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: Limit,
}

/// Client connections and the limits clients run into.
#[derive(Default)]
struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    refused: Counter,
    limit_hits: Family<LimitLabel, Counter>,
}

impl ConnectionMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open on the FHIR listener",
            self.open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted on the FHIR listener (refused ones included)",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because limits.connections.max_open were open",
            self.refused.clone(),
        );
        for &limit in Limit::ALL {
            declare(&self.limit_hits, &LimitLabel { limit });
        }
        registry.register(
            "limit_hits",
            "Requests and connections stopped by a resource limit, by limit",
            self.limit_hits.clone(),
        );
    }
}

/// Signing keys, introspection and the token caches.
struct TokenMetrics {
    jwks_fetches: Family<IssuerOutcome, Counter>,
    key_lookups: Family<KeyLookupLabels, Counter>,
    introspections: Family<IssuerOutcome, Counter>,
    introspection_seconds: Histograms<IssuerLabel>,
    cache_lookups: Family<CacheLabels, Counter>,
}

impl TokenMetrics {
    fn new() -> Self {
        Self {
            jwks_fetches: Family::default(),
            key_lookups: Family::default(),
            introspections: Family::default(),
            introspection_seconds: Family::new_with_constructor(latency_histogram),
            cache_lookups: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwks_fetches",
            "JWKS (and discovery) fetches per issuer, by outcome",
            self.jwks_fetches.clone(),
        );
        registry.register(
            "signing_key_lookups",
            "Lookups of the signing key a token names, per issuer, by result",
            self.key_lookups.clone(),
        );
        registry.register(
            "introspections",
            "RFC 7662 introspection calls per issuer, by outcome",
            self.introspections.clone(),
        );
        registry.register(
            "introspection_duration_seconds",
            "Latency of introspection calls per issuer",
            self.introspection_seconds.clone(),
        );
        registry.register(
            "token_cache_lookups",
            "Lookups in the verified-token and introspection caches, by result",
            self.cache_lookups.clone(),
        );
    }
}

/// One answered request, as its client got it.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub route: Route,
    pub decision: AuditDecision,
    pub reason: Reason,
    /// `None` when the request was answered before it was classified.
    pub interaction: Option<Interaction>,
    pub status: StatusCode,
    /// Time from request to response head.
    pub took: Duration,
}

/// The gateway's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    upstream: UpstreamMetrics,
    tokens: TokenMetrics,
    rate_limit_store_up: Gauge,
    audit: AuditMetrics,
    reloads: ReloadMetrics,
    connections: ConnectionMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// `fhirgate_build_info`: always 1, labelled with the gateway's version.
fn register_build_info(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register(
        "build_info",
        "Always 1; the version label names the running gateway's version",
        info,
    );
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fhirgate");
        register_build_info(&mut registry);
        let requests = RequestMetrics::new();
        requests.register(&mut registry);
        let upstream = UpstreamMetrics::new();
        upstream.register(&mut registry);
        let tokens = TokenMetrics::new();
        tokens.register(&mut registry);
        let rate_limit_store_up = Gauge::default();
        registry.register(
            "rate_limit_store_up",
            "1 while the shared rate-limit store answers (or none is configured), else 0",
            rate_limit_store_up.clone(),
        );
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        let reloads = ReloadMetrics::new(&mut registry);
        let connections = ConnectionMetrics::default();
        connections.register(&mut registry);
        let metrics = Self {
            registry,
            requests,
            upstream,
            tokens,
            rate_limit_store_up,
            audit,
            reloads,
            connections,
        };
        metrics.declare_caches();
        metrics
    }
}

/// Makes the series of `labels` in `family`, at zero, if it is not there yet.
fn declare<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    let _ = family.get_or_create(labels);
}

/// Series of a closed set are made at zero when what they count comes into being, so that
/// dashboards and `rate()` see 0 rather than nothing until the first event.
impl Metrics {
    /// The upstream series of `route`.
    pub fn declare_route(&self, route: Route) {
        for &kind in UpstreamError::ALL {
            declare(&self.upstream.errors, &UpstreamErrorLabels { route, kind });
        }
        declare(&self.upstream.retries, &RouteLabel { route });
        declare(&self.upstream.unavailable, &RouteLabel { route });
    }

    /// The `upstream_up` gauge of one server of `route`, set to 1 (a server starts in
    /// rotation).
    pub fn upstream_server(&self, route: Route, server: &str) -> Gauge {
        let labels = ServerLabels {
            route,
            server: server.to_owned(),
        };
        let gauge = self.upstream.up.get_or_create(&labels).clone();
        gauge.set(1);
        gauge
    }

    /// The servers of the configuration now in use (`route`, `server`): the `upstream_up`
    /// series of any other server, from a configuration replaced, are no longer exported.
    pub fn upstream_servers_in_use(&self, servers: &[(Route, String)]) {
        let current: Vec<ServerLabels> = servers
            .iter()
            .map(|(route, server)| ServerLabels {
                route: *route,
                server: server.clone(),
            })
            .collect();
        let mut kept = self
            .upstream
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in kept.iter().filter(|labels| !current.contains(labels)) {
            self.upstream.up.remove(gone);
        }
        *kept = current;
    }

    /// The series of both caches.
    fn declare_caches(&self) {
        for &cache in Cache::ALL {
            for &result in Lookup::ALL {
                declare(&self.tokens.cache_lookups, &CacheLabels { cache, result });
            }
        }
    }

    /// The key-fetch series of an issuer whose JWTs are verified with its JWKS.
    pub fn declare_jwks_issuer(&self, issuer: &str) {
        for &outcome in Outcome::ALL {
            let issuer = issuer.to_owned();
            declare(
                &self.tokens.jwks_fetches,
                &IssuerOutcome { issuer, outcome },
            );
        }
        for &result in KeyLookup::ALL {
            let issuer = issuer.to_owned();
            declare(
                &self.tokens.key_lookups,
                &KeyLookupLabels { issuer, result },
            );
        }
    }

    /// The introspection series of an issuer whose tokens are introspected.
    pub fn declare_introspecting_issuer(&self, issuer: &str) {
        for &outcome in Outcome::ALL {
            let issuer = issuer.to_owned();
            declare(
                &self.tokens.introspections,
                &IssuerOutcome { issuer, outcome },
            );
        }
        let issuer = issuer.to_owned();
        declare(&self.tokens.introspection_seconds, &IssuerLabel { issuer });
    }

    /// The delivery series of an audit sink.
    pub fn declare_audit_sink(&self, sink: &str) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        declare(&self.audit.shipped, &label);
        declare(&self.audit.delivery_failures, &label);
    }
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, answered: &Answered) {
        let interaction = InteractionLabel(answered.interaction);
        self.requests
            .answered
            .get_or_create(&RequestLabels {
                route: answered.route,
                decision: answered.decision,
                reason: answered.reason,
                interaction,
                status_class: StatusClass::of(answered.status),
            })
            .inc();
        self.requests
            .seconds
            .get_or_create(&DurationLabels {
                route: answered.route,
                interaction,
            })
            .observe(answered.took.as_secs_f64());
    }

    /// One call to the FHIR server of `route`, answered or failed after `took`.
    pub fn upstream_call(&self, route: Route, took: Duration) {
        self.upstream
            .seconds
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// A request sent again to another server of `route`.
    pub fn upstream_retry(&self, route: Route) {
        self.upstream
            .retries
            .get_or_create(&RouteLabel { route })
            .inc();
    }

    /// A request answered at once because every server of `route` is out of rotation.
    pub fn upstream_unavailable(&self, route: Route) {
        self.upstream
            .unavailable
            .get_or_create(&RouteLabel { route })
            .inc();
    }

    /// One failed call to the FHIR server of `route`.
    pub fn upstream_error(&self, route: Route, kind: UpstreamError) {
        self.upstream
            .errors
            .get_or_create(&UpstreamErrorLabels { route, kind })
            .inc();
    }

    /// The token-fetch series of `route`, whose upstream credential is fetched.
    pub fn declare_upstream_token(&self, route: Route) {
        for &outcome in TokenFetch::ALL {
            declare(
                &self.upstream.token_fetches,
                &TokenFetchLabels { route, outcome },
            );
        }
    }

    /// One fetch of the upstream access token of `route`.
    pub fn upstream_token_fetch(&self, route: Route, outcome: TokenFetch) {
        self.upstream
            .token_fetches
            .get_or_create(&TokenFetchLabels { route, outcome })
            .inc();
    }

    /// One JWKS or discovery fetch for `issuer`.
    pub fn jwks_fetch(&self, issuer: &str, outcome: Outcome) {
        self.tokens
            .jwks_fetches
            .get_or_create(&IssuerOutcome {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
    }

    /// One lookup of a token's signing key among `issuer`'s keys.
    pub fn key_lookup(&self, issuer: &str, result: KeyLookup) {
        self.tokens
            .key_lookups
            .get_or_create(&KeyLookupLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .inc();
    }

    /// One introspection call to `issuer`.
    pub fn introspection(&self, issuer: &str, outcome: Outcome, took: Duration) {
        self.tokens
            .introspections
            .get_or_create(&IssuerOutcome {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
        self.tokens
            .introspection_seconds
            .get_or_create(&IssuerLabel {
                issuer: issuer.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One cache lookup.
    pub fn cache_lookup(&self, cache: Cache, result: Lookup) {
        self.tokens
            .cache_lookups
            .get_or_create(&CacheLabels { cache, result })
            .inc();
    }

    /// One request refused by a rate limit.
    pub fn throttled(&self) {
        self.requests.throttled.inc();
    }

    /// A client connection accepted; `admitted` when it is served, not closed for
    /// `max_open`.
    pub fn connection_accepted(&self, admitted: bool) {
        self.connections.accepted.inc();
        if admitted {
            self.connections.open.inc();
        } else {
            self.connections.refused.inc();
        }
    }

    /// An admitted client connection closed.
    pub fn connection_closed(&self) {
        self.connections.open.dec();
    }

    /// A client ran into `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.connections
            .limit_hits
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    /// Whether the shared rate-limit store answers.
    pub fn rate_limit_store(&self, up: bool) {
        self.rate_limit_store_up.set(i64::from(up));
    }

    /// A configuration was put in use (at start, or by a reload).
    pub fn config_loaded(&self, unix_seconds: i64) {
        self.reloads.last_success.set(unix_seconds);
    }

    /// A reload ended: `ok` when its configuration now serves.
    pub fn config_reload(&self, ok: bool) {
        let outcome = if ok { Outcome::Ok } else { Outcome::Error };
        self.reloads
            .reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// The certificate-reload series, for a listener with TLS.
    pub fn declare_tls_certificate(&self) {
        for &outcome in Outcome::ALL {
            declare(&self.reloads.certificate_reloads, &ReloadLabels { outcome });
        }
    }

    /// A reload of the FHIR listener's TLS certificate ended: `Ok` when the new pair serves.
    pub fn tls_certificate_reload(&self, outcome: Outcome) {
        self.reloads
            .certificate_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// Records appended to the audit spool.
    pub fn audit_appended(&self, records: u64) {
        self.audit.appended.inc_by(records);
    }

    /// Records dropped unshipped from a full spool.
    pub fn audit_dropped(&self, records: u64) {
        self.audit.dropped.inc_by(records);
    }

    /// A failed spool write.
    pub fn audit_spool_write_failed(&self) {
        self.audit.write_failures.inc();
    }

    /// The spool's size and whether it takes records.
    pub fn audit_spool(&self, bytes: u64, accepting: bool) {
        self.audit
            .spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.audit.accepting.set(i64::from(accepting));
    }

    /// A delivery to `sink`: `records` acknowledged, or a failed batch.
    pub fn audit_shipped(&self, sink: &str, records: u64, ok: bool) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        if ok {
            self.audit.shipped.get_or_create(&label).inc_by(records);
        } else {
            self.audit.delivery_failures.get_or_create(&label).inc();
        }
    }

    /// How far behind `sink` is.
    pub fn audit_lag(&self, sink: &str, records: u64, oldest_age_seconds: f64) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        self.audit
            .unshipped
            .get_or_create(&label)
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.audit
            .oldest_unshipped
            .get_or_create(&label)
            .set(oldest_age_seconds);
    }

    /// The OpenMetrics text exposition of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(decision: AuditDecision, reason: Reason, status: u16) -> Answered {
        Answered {
            route: Route::DEFAULT,
            decision,
            reason,
            interaction: Some(Interaction::SearchType),
            status: StatusCode::from_u16(status).unwrap(),
            took: Duration::from_millis(2),
        }
    }

    #[test]
    fn counts_are_exported_with_lowercase_typed_labels() {
        let metrics = Metrics::default();
        metrics.request(&answered(AuditDecision::Filter, Reason::ALLOWED, 200));
        let refusal = Refusal::Token(crate::token::TokenError::Missing);
        metrics.request(&Answered {
            interaction: None,
            ..answered(AuditDecision::Deny, Reason::of(&refusal), 401)
        });
        metrics.upstream_error(Route::DEFAULT, UpstreamError::InvalidResponse);
        metrics.jwks_fetch("https://idp.example", Outcome::Error);
        metrics.key_lookup("https://idp.example", KeyLookup::CoolingDown);
        metrics.cache_lookup(Cache::VerifiedTokens, Lookup::Hit);
        let text = metrics.encode();
        for line in [
            r#"fhirgate_requests_total{route="default",decision="filter",reason="allowed",interaction="search-type",status_class="2xx"} 1"#,
            r#"fhirgate_requests_total{route="default",decision="deny",reason="no_token",interaction="none",status_class="4xx"} 1"#,
            r#"fhirgate_request_duration_seconds_count{route="default",interaction="search-type"} 1"#,
            r#"fhirgate_request_duration_seconds_count{route="default",interaction="none"} 1"#,
            r#"fhirgate_upstream_errors_total{route="default",kind="invalid_response"} 1"#,
            r#"fhirgate_jwks_fetches_total{issuer="https://idp.example",outcome="error"} 1"#,
            r#"fhirgate_signing_key_lookups_total{issuer="https://idp.example",result="cooling_down"} 1"#,
            r#"fhirgate_token_cache_lookups_total{cache="verified_tokens",result="hit"} 1"#,
            concat!(
                r#"fhirgate_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn closed_sets_start_at_zero_and_empty_families_are_not_written() {
        let metrics = Metrics::default();
        metrics.declare_route(Route::DEFAULT);
        metrics.declare_jwks_issuer("https://idp.example");
        let text = metrics.encode();
        for line in [
            r#"fhirgate_upstream_errors_total{route="default",kind="connect"} 0"#,
            r#"fhirgate_upstream_errors_total{route="default",kind="response_too_large"} 0"#,
            r#"fhirgate_upstream_retries_total{route="default"} 0"#,
            r#"fhirgate_upstream_unavailable_total{route="default"} 0"#,
            r#"fhirgate_token_cache_lookups_total{cache="introspection",result="miss"} 0"#,
            r#"fhirgate_jwks_fetches_total{issuer="https://idp.example",outcome="ok"} 0"#,
            r#"fhirgate_signing_key_lookups_total{issuer="https://idp.example",result="unavailable"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        // prometheus-client writes no `# TYPE` line for a family without series.
        assert!(!text.contains("fhirgate_requests"), "{text}");
        assert!(!text.contains("fhirgate_introspections"), "{text}");
    }

    #[test]
    fn route_names_are_kept_once_and_servers_of_a_replaced_configuration_go() {
        let a = Route::named("tenant-a");
        assert_eq!(a, Route::named(&String::from("tenant-a")));
        assert!(std::ptr::eq(a.as_str(), Route::named("tenant-a").as_str()));
        assert_eq!(Route::named("default"), Route::DEFAULT);
        let metrics = Metrics::default();
        let up = metrics.upstream_server(a, "10.0.0.5:8080");
        metrics.upstream_server(a, "10.0.0.6:8080");
        metrics
            .upstream_servers_in_use(&[(a, "10.0.0.5:8080".into()), (a, "10.0.0.6:8080".into())]);
        up.set(0);
        let text = metrics.encode();
        assert!(
            text.contains(r#"fhirgate_upstream_up{route="tenant-a",server="10.0.0.5:8080"} 0"#),
            "{text}"
        );
        metrics.upstream_servers_in_use(&[(a, "10.0.0.5:8080".into())]);
        let text = metrics.encode();
        assert!(!text.contains("10.0.0.6"), "{text}");
    }

    #[test]
    fn status_classes() {
        for (status, class) in [
            (101, "1xx"),
            (204, "2xx"),
            (304, "3xx"),
            (429, "4xx"),
            (504, "5xx"),
            (600, "other"),
        ] {
            assert_eq!(
                StatusClass::of(StatusCode::from_u16(status).unwrap()).as_str(),
                class
            );
        }
    }
}
