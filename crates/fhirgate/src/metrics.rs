//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Every label is a typed value from a closed set or an operator's configuration (an issuer
//! URL), never something a client sends: no patient, token, path or scope can become a label.
//! Each gateway has its own registry, so gateways in one process (tests) do not share counts.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Allowed or refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: Decision,
    /// One of the gateway's fixed audit reasons.
    reason: String,
}

/// How a call to an issuer went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Ok,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerOutcome {
    issuer: String,
    outcome: Outcome,
}

/// A cache lookup's result.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Lookup {
    Hit,
    Miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: Cache,
    result: Lookup,
}

/// The gateway's caches.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Cache {
    /// Verified JWTs.
    VerifiedTokens,
    /// Introspection answers.
    Introspection,
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

/// The gateway's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histogram,
    jwks_fetches: Family<IssuerOutcome, Counter>,
    introspections: Family<IssuerOutcome, Counter>,
    introspection_seconds: Histograms<IssuerLabel>,
    cache_lookups: Family<CacheLabels, Counter>,
    rate_limit_store_up: Gauge,
    throttled: Counter,
    audit: AuditMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fhirgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by decision and audit reason",
            requests.clone(),
        );
        let request_seconds = latency_histogram();
        registry.register(
            "request_duration_seconds",
            "Time from request to response head, gateway and upstream together",
            request_seconds.clone(),
        );
        let jwks_fetches = Family::<IssuerOutcome, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS (and discovery) fetches per issuer, by outcome",
            jwks_fetches.clone(),
        );
        let introspections = Family::<IssuerOutcome, Counter>::default();
        registry.register(
            "introspections",
            "RFC 7662 introspection calls per issuer, by outcome",
            introspections.clone(),
        );
        let introspection_seconds: Histograms<IssuerLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "introspection_duration_seconds",
            "Latency of introspection calls per issuer",
            introspection_seconds.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "token_cache_lookups",
            "Lookups in the verified-token and introspection caches, by result",
            cache_lookups.clone(),
        );
        let rate_limit_store_up = Gauge::default();
        registry.register(
            "rate_limit_store_up",
            "1 while the shared rate-limit store answers (or none is configured), else 0",
            rate_limit_store_up.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled",
            "Requests refused by a rate limit",
            throttled.clone(),
        );
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        Self {
            audit,
            registry,
            rate_limit_store_up,
            throttled,
            requests,
            request_seconds,
            jwks_fetches,
            introspections,
            introspection_seconds,
            cache_lookups,
        }
    }
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, decision: Decision, reason: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                decision,
                reason: reason.to_owned(),
            })
            .inc();
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// One JWKS or discovery fetch for `issuer`.
    pub fn jwks_fetch(&self, issuer: &str, outcome: Outcome) {
        self.jwks_fetches
            .get_or_create(&IssuerOutcome {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
    }

    /// One introspection call to `issuer`.
    pub fn introspection(&self, issuer: &str, outcome: Outcome, took: Duration) {
        self.introspections
            .get_or_create(&IssuerOutcome {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
        self.introspection_seconds
            .get_or_create(&IssuerLabel {
                issuer: issuer.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One request refused by a rate limit.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    /// Whether the shared rate-limit store answers.
    pub fn rate_limit_store(&self, up: bool) {
        self.rate_limit_store_up.set(i64::from(up));
    }

    /// One cache lookup.
    pub fn cache_lookup(&self, cache: Cache, result: Lookup) {
        self.cache_lookups
            .get_or_create(&CacheLabels { cache, result })
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

    #[test]
    fn counts_are_exported_with_typed_labels() {
        let metrics = Metrics::default();
        metrics.request(Decision::Deny, "invalid_token", Duration::from_millis(2));
        metrics.jwks_fetch("https://idp.example", Outcome::Error);
        metrics.cache_lookup(Cache::VerifiedTokens, Lookup::Hit);
        let text = metrics.encode();
        assert!(
            text.contains(r#"fhirgate_requests_total{decision="Deny",reason="invalid_token"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"fhirgate_jwks_fetches_total{issuer="https://idp.example",outcome="Error"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"fhirgate_token_cache_lookups_total{cache="VerifiedTokens",result="Hit"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("fhirgate_request_duration_seconds_count 1"),
            "{text}"
        );
    }
}
