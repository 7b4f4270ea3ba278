//! Logs, request spans and, in a binary built with the `otlp` feature, the export of those
//! spans to an OpenTelemetry collector over OTLP/HTTP with protobuf bodies.
//!
//! A request span carries the request id, the method, the FHIR interaction, the route, the
//! decision, the audit reason and the status; its children time token validation and each
//! upstream call. No span carries a token, patient, subject, scope, client id, path or
//! query. Only spans are exported, never log events: their messages may quote what a
//! client sent.

use tracing::Span;
use tracing::field::Empty;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;

use crate::config;
use crate::metrics::{Answered, Route, UpstreamError};

/// The span of one request through the pipeline, named after its method as OpenTelemetry's
/// HTTP conventions name a server span without a route template; [`record_answer`] fills
/// in the rest.
pub fn request_span(request_id: &str, method: &str) -> Span {
    tracing::info_span!(
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        request.id = request_id,
        http.request.method = method,
        fhir.interaction = Empty,
        fhirgate.route = Empty,
        fhirgate.decision = Empty,
        fhirgate.reason = Empty,
        http.response.status_code = Empty,
    )
}

/// Records on a request's span how it was answered. Numbers are recorded as `i64`: the
/// OpenTelemetry layer would write an unsigned one as text.
pub fn record_answer(span: &Span, answered: &Answered) {
    let interaction = answered.interaction.map_or("none", |i| i.code());
    span.record("fhir.interaction", interaction);
    span.record("fhirgate.route", answered.route.as_str());
    span.record("fhirgate.decision", answered.decision.as_str());
    span.record("fhirgate.reason", answered.reason.as_str());
    span.record(
        "http.response.status_code",
        i64::from(answered.status.as_u16()),
    );
    if answered.status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// The span of token validation, a child of the request's.
pub fn authenticate_span() -> Span {
    tracing::info_span!("authenticate")
}

/// The span of one call to the FHIR server of `route`, a child of the request's.
pub fn upstream_span(route: Route, method: &str) -> Span {
    tracing::info_span!(
        "upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        fhirgate.route = route.as_str(),
        http.request.method = method,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Records on an upstream call's span what it came to.
pub fn record_upstream(span: &Span, outcome: Result<http::StatusCode, UpstreamError>) {
    match outcome {
        Ok(status) => {
            span.record("http.response.status_code", i64::from(status.as_u16()));
        }
        Err(kind) => {
            span.record("error.type", kind.as_str());
            span.record("otel.status_code", "error");
        }
    }
}

/// Why logging and trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[cfg(feature = "otlp")]
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a tracing subscriber is installed already: {0}")]
    AlreadyInstalled(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// The process's logging and trace export, kept until shutdown to flush buffered spans.
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: JSON logs on stderr at the level of `FHIRGATE_LOG`
    /// (default `info`), and the gateway's spans exported when `telemetry.otlp_endpoint` is
    /// set.
    pub fn init(config: &config::Telemetry) -> Result<Self, TelemetryError> {
        let (subscriber, telemetry) = Self::subscriber(config)?;
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(telemetry)
    }

    /// The subscriber [`Telemetry::init`] installs, for a caller that installs it itself.
    pub fn subscriber(
        config: &config::Telemetry,
    ) -> Result<(impl tracing::Subscriber + Send + Sync, Self), TelemetryError> {
        let logs = tracing_subscriber::registry().with(log_layer());
        #[cfg(feature = "otlp")]
        {
            let provider = config
                .otlp_endpoint
                .as_ref()
                .map(|endpoint| otlp::provider(endpoint, &config.service_name))
                .transpose()?;
            let spans = provider.as_ref().map(otlp::span_layer);
            Ok((logs.with(spans), Self { provider }))
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = config;
            Ok((logs, Self {}))
        }
    }

    /// Exports the spans still buffered and stops the exporter. Call it outside the Tokio
    /// runtime: it blocks until the collector answered or the export timed out.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "buffered spans could not be exported at shutdown");
        }
    }
}

/// JSON logs on stderr, without spans: their fields are the export's, and log lines keep
/// the shape they have without it.
fn log_layer<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let level = EnvFilter::try_from_env("FHIRGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_filter(level.and(filter_fn(|metadata| !metadata.is_span())))
}

#[cfg(feature = "otlp")]
mod otlp {
    //! The OTLP/HTTP exporter and the layer that feeds it.

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::registry::LookupSpan;

    use crate::config::HttpUrl;

    /// Where under the collector's base URL OTLP/HTTP takes spans.
    const TRACES_PATH: &str = "/v1/traces";

    /// The URL spans are POSTed to: `endpoint` with `/v1/traces`, unless it ends so already.
    pub(super) fn traces_url(endpoint: &HttpUrl) -> String {
        let base = endpoint.as_str();
        if base.ends_with(TRACES_PATH) {
            base
        } else {
            format!("{base}{TRACES_PATH}")
        }
    }

    /// A provider that batches spans and sends them on a thread of its own.
    pub(super) fn provider(
        endpoint: &HttpUrl,
        service_name: &str,
    ) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .build()?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }

    /// The layer that turns the gateway's own spans (not events, not other crates' spans)
    /// into OpenTelemetry spans.
    pub(super) fn span_layer<S>(
        provider: &SdkTracerProvider,
    ) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("fhirgate"))
            .with_threads(false)
            .with_filter(filter_fn(|metadata| {
                metadata.is_span() && metadata.target().starts_with("fhirgate")
            }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn spans_go_to_the_traces_path_under_the_base_url() {
            let url =
                |text: &str| -> HttpUrl { serde_saphyr::from_str(&format!("\"{text}\"")).unwrap() };
            assert_eq!(
                traces_url(&url("http://127.0.0.1:4318")),
                "http://127.0.0.1:4318/v1/traces"
            );
            assert_eq!(
                traces_url(&url("https://collector.example/otlp/")),
                "https://collector.example/otlp/v1/traces"
            );
            assert_eq!(
                traces_url(&url("http://127.0.0.1:4318/v1/traces")),
                "http://127.0.0.1:4318/v1/traces"
            );
        }
    }
}
