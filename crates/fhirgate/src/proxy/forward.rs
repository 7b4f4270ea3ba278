//! The forward step: the request as the FHIR server sees it, and the pooled client that sends it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::Instrument as _;

use super::Peer;
use super::headers::{self, REQUEST_ID};
use crate::config;
use crate::metrics::{Limit, Metrics, Route, UpstreamError};
use crate::refusal::Refusal;
use crate::telemetry;
use crate::token::Identity;

/// Headers a client may not set for the upstream: credentials, and what the gateway itself
/// says about the request.
const CLIENT_MAY_NOT_SET: [&str; 7] = [
    "authorization",
    "dpop",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Prefix of the headers in which the gateway tells the upstream who is calling.
const IDENTITY_PREFIX: &str = "x-fhirgate-";

/// Adds the verified caller's identity and launch context as `X-Fhirgate-*` headers. Values
/// that cannot be header values (never expected of ids) are left out rather than altered.
pub fn add_identity_headers(out: &mut HeaderMap, identity: &Identity) {
    let fields = [
        ("x-fhirgate-client-id", identity.caller.client_id.as_deref()),
        ("x-fhirgate-subject", identity.caller.subject.as_deref()),
        ("x-fhirgate-fhir-user", identity.caller.fhir_user.as_deref()),
        ("x-fhirgate-patient", identity.caller.patient.as_deref()),
        ("x-fhirgate-encounter", identity.caller.encounter.as_deref()),
        (
            "x-fhirgate-fhir-context",
            identity.caller.fhir_context.as_deref(),
        ),
        ("x-fhirgate-scope", identity.caller.scope.as_deref()),
        ("x-fhirgate-issuer", Some(identity.caller.issuer.as_str())),
    ];
    for (name, value) in fields {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            out.insert(HeaderName::from_static(name), value);
        }
    }
}

/// The FHIR server behind the gateway.
#[derive(Debug)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// What the gateway proves to the upstream on every request, if anything.
    credential: Option<http::HeaderValue>,
    base: String,
    authority: String,
    response_timeout: Duration,
    connect_timeout: Duration,
    /// The name of this upstream in metrics.
    route: Route,
    metrics: Arc<Metrics>,
    /// The cap on requests at the FHIR server at once, if any.
    slots: Option<super::UpstreamSlots>,
}

/// The upstream URL of a request: the upstream base, the base-relative path and the query.
pub fn target_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut target = format!("{base}/{path}");
    if path.is_empty() {
        target.pop();
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// What is sent upstream.
pub struct Outbound<'a> {
    pub method: &'a Method,
    /// Path relative to the FHIR base, still percent-encoded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Upstream {
    /// The client for the configured upstream, counting into `metrics`.
    pub fn new(
        config: &config::Upstream,
        metrics: Arc<Metrics>,
    ) -> Result<Self, super::upstream_tls::UpstreamSetupError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(super::upstream_tls::client_config(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let uri = config.url.uri();
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .expect("configured upstream URL has a host");
        Ok(Self {
            client,
            credential: super::upstream_tls::credential(config)?,
            base: config.url.as_str(),
            authority,
            response_timeout: config.response_timeout,
            connect_timeout: config.connect_timeout,
            route: Route::DEFAULT,
            metrics,
            slots: None,
        })
    }

    /// This upstream, sending at most as many requests at once as `slots` has.
    pub fn with_slots(mut self, slots: super::UpstreamSlots) -> Self {
        self.slots = Some(slots);
        self
    }

    /// The route this upstream serves, as metrics name it.
    pub fn route(&self) -> Route {
        self.route
    }

    /// Counts a failed call and turns it into the refusal the client gets.
    fn failed(&self, kind: UpstreamError, refusal: Refusal) -> Refusal {
        self.metrics.upstream_error(self.route, kind);
        refusal
    }

    /// Sends a request and waits for the status line and headers, in one of the upstream's
    /// slots; 503 at once when none is free.
    pub async fn send(&self, outbound: Outbound<'_>) -> Result<Response<Incoming>, Refusal> {
        let _slot = match &self.slots {
            Some(slots) => Some(slots.take().ok_or_else(|| {
                self.metrics.limit_hit(Limit::UpstreamRequests);
                Refusal::UpstreamBusy
            })?),
            None => None,
        };
        let target = target_url(&self.base, outbound.path, outbound.query);
        let uri: Uri = target
            .parse()
            .map_err(|_| Refusal::BadRequest("request target cannot be forwarded".into()))?;
        let mut request = Request::new(Full::new(outbound.body));
        *request.method_mut() = outbound.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = outbound.headers;
        request
            .headers_mut()
            .insert(header::HOST, headers::value(&self.authority));
        if let Some(credential) = &self.credential {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, credential.clone());
        }
        let span = telemetry::upstream_span(self.route, outbound.method.as_str());
        let sent = std::time::Instant::now();
        let answer = tokio::time::timeout(self.response_timeout, self.client.request(request))
            .instrument(span.clone())
            .await;
        self.metrics.upstream_call(self.route, sent.elapsed());
        let kind = match answer {
            Ok(Ok(response)) => {
                telemetry::record_upstream(&span, Ok(response.status()));
                return Ok(response);
            }
            Err(_) => UpstreamError::Timeout,
            Ok(Err(error)) => {
                tracing::warn!(upstream = %self.base, %error, connect = error.is_connect(), "upstream request failed");
                if error.is_connect() {
                    UpstreamError::Connect
                } else {
                    UpstreamError::InvalidResponse
                }
            }
        };
        telemetry::record_upstream(&span, Err(kind));
        let refusal = match kind {
            UpstreamError::Timeout => Refusal::UpstreamTimeout,
            _ => Refusal::UpstreamUnavailable,
        };
        Err(self.failed(kind, refusal))
    }

    /// Reads a whole response body, within the size limit and the response timeout.
    /// Reads a body the gateway must check, decoded by its `Content-Encoding`; at most
    /// `limit` bytes before and after decoding.
    pub async fn read_body(
        &self,
        body: Incoming,
        encoding: Option<&http::HeaderValue>,
        limit: usize,
    ) -> Result<Bytes, Refusal> {
        let raw = self.read_raw(body, limit).await?;
        self.decode(encoding, raw, limit)
    }

    /// A body as read, decoded from its `Content-Encoding`, up to `limit` bytes decoded.
    pub(crate) fn decode(
        &self,
        encoding: Option<&http::HeaderValue>,
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
        match tokio::time::timeout(self.response_timeout, collect).await {
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

    /// Whether a TCP connection to the upstream can be opened now.
    pub async fn reachable(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.authority.as_str());
        matches!(
            tokio::time::timeout(self.connect_timeout, connect).await,
            Ok(Ok(_))
        )
    }
}

/// The headers sent upstream: the client's, less hop-by-hop headers, credentials and anything
/// the gateway asserts itself, plus the gateway's forwarding headers.
///
/// When the response must be checked, the upstream is asked for uncompressed FHIR JSON.
pub fn upstream_headers(
    client: &HeaderMap,
    peer: &Peer,
    request_id: &str,
    response_checked: bool,
) -> HeaderMap {
    let connection_named = headers::connection_named(client);
    // What the client may not send on, and what the gateway sets itself below.
    let dropped = |name: &HeaderName| {
        headers::is_hop_by_hop(name, &connection_named)
            || CLIENT_MAY_NOT_SET.iter().any(|n| name == *n)
            || super::cors::CLIENT_CORS_HEADERS.iter().any(|n| name == *n)
            || name.as_str().starts_with(IDENTITY_PREFIX)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::ACCEPT_ENCODING
            || (response_checked && name == header::ACCEPT)
    };
    let mut out = HeaderMap::with_capacity(client.len() + 6);
    for (name, value) in client {
        if !dropped(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(host) = client.get(header::HOST) {
        out.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    out.insert(
        HeaderName::from_static("x-forwarded-for"),
        headers::value(&peer.address.ip().to_string()),
    );
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        headers::value(if peer.tls { "https" } else { "http" }),
    );
    out.insert(REQUEST_ID.clone(), headers::value(request_id));
    // Bodies come back unencoded so that they can be checked and their upstream URLs
    // rewritten; the gateway compresses what it sends to clients that accept it.
    out.insert(header::ACCEPT_ENCODING, headers::value("identity"));
    if response_checked {
        out.insert(header::ACCEPT, headers::value("application/fhir+json"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_spoofed_forwarding_never_go_upstream() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        client.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        client.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        client.insert(header::HOST, "gw.test".parse().unwrap());
        client.insert(header::ACCEPT, "application/fhir+xml".parse().unwrap());
        let peer = Peer {
            address: "10.1.2.3:5555".parse().unwrap(),
            tls: true,
            certificate: None,
        };
        let out = upstream_headers(&client, &peer, "rid", false);
        assert!(!out.contains_key(header::AUTHORIZATION));
        assert!(!out.contains_key("forwarded"));
        assert!(!out.contains_key(header::HOST));
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-host"], "gw.test");
        assert_eq!(out["x-request-id"], "rid");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[header::ACCEPT], "application/fhir+xml");
        let checked = upstream_headers(&client, &peer, "rid", true);
        assert_eq!(checked[header::ACCEPT], "application/fhir+json");
    }
}
