//! The public endpoints, answered without a token: `metadata` ([`metadata`]) and
//! `.well-known/smart-configuration` ([`crate::discovery`]). SMART discovery never reaches
//! the upstream; `metadata` does only when its kept statement is missing or old.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fhirgate_policy::request::Interaction;
use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio::time::Instant;

use super::forward::{Outbound, upstream_headers};
use super::metadata::{self, Security, Statement};
use super::{Gateway, Peer, Route};
use crate::body::Body;
use crate::refusal::{OutcomeFormat, Refusal};

/// The relative path of SMART discovery.
pub const SMART_CONFIGURATION: &str = ".well-known/smart-configuration";

/// What answering a public request came to, for its audit record.
pub struct Answered {
    pub result: Result<Response<Body>, Refusal>,
    pub interaction: Interaction,
    /// The upstream call made, if one was.
    pub upstream: Option<UpstreamCall>,
}

/// One upstream call: how long it took and, when it answered, its status.
pub struct UpstreamCall {
    pub took: Duration,
    pub status: Option<u16>,
}

/// The request as the public endpoints need it.
pub struct PublicRequest<'a> {
    pub parts: &'a http::request::Parts,
    pub relative: &'a str,
    pub peer: &'a Peer,
    pub request_id: &'a str,
    /// The public FHIR base URL the client addressed.
    pub base: String,
    /// The route the request took.
    pub route: &'a Route,
}

/// Answers a request [`super::is_public`] accepted.
pub async fn answer(gateway: &Gateway, request: PublicRequest<'_>) -> Answered {
    if request.relative == SMART_CONFIGURATION {
        return Answered {
            result: smart_configuration(gateway).await,
            interaction: Interaction::SmartConfiguration,
            upstream: None,
        };
    }
    let mut upstream = None;
    let result = capability_statement(gateway, &request, &mut upstream).await;
    Answered {
        result,
        interaction: Interaction::Capabilities,
        upstream,
    }
}

/// `.well-known/smart-configuration`: always JSON, whatever `Accept` says, kept by clients
/// for what is left of the document's lifetime.
async fn smart_configuration(gateway: &Gateway) -> Result<Response<Body>, Refusal> {
    let discovery = gateway.discovery.as_ref().ok_or(Refusal::NotFound)?;
    let current = discovery
        .current()
        .await
        .map_err(|_| Refusal::DiscoveryUnavailable)?;
    let mut response = metadata::reply(
        StatusCode::OK,
        Some(HeaderValue::from_static("application/json")),
        current.document.body.clone(),
    );
    let cache_control = format!("public, max-age={}", current.max_age.as_secs());
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    Ok(response)
}

/// `metadata`: the kept statement for a plain JSON request, the upstream's answer otherwise;
/// the upstream base replaced in both, the edge's security declared in JSON statements.
async fn capability_statement(
    gateway: &Gateway,
    request: &PublicRequest<'_>,
    upstream: &mut Option<UpstreamCall>,
) -> Result<Response<Body>, Refusal> {
    let query = request.parts.uri.query().filter(|q| !q.is_empty());
    let json = matches!(
        OutcomeFormat::negotiate(query, &request.parts.headers),
        Ok(OutcomeFormat::Json)
    );
    let discovery = match &gateway.discovery {
        Some(discovery) => discovery.current().await.ok().map(|c| c.document),
        None => None,
    };
    let security = Security {
        cors: gateway.cors.configured(),
        discovery: discovery.as_ref(),
    };
    let route = request.route;
    let upstream_base = &route.upstream_base;
    if json && query.is_none() {
        let statement = match kept_or_fetched(gateway, request, upstream).await? {
            Ok(statement) => statement,
            Err(other) => return Ok(other),
        };
        let body = route
            .metadata
            .body(&statement, upstream_base, &request.base, &security);
        return Ok(metadata::reply(
            StatusCode::OK,
            Some(statement.content_type.clone()),
            body,
        ));
    }
    let (status, content_type, text) = fetch(gateway, request, false, upstream).await?;
    let body = if status == StatusCode::OK && json && metadata::is_json(content_type.as_ref()) {
        metadata::render(&text, upstream_base, &request.base, &security)
    } else {
        Bytes::from(metadata::replace_base(&text, upstream_base, &request.base))
    };
    Ok(metadata::reply(status, content_type, body))
}

/// The kept statement, or one fetched now (one fetch at a time) and kept when it is a 200
/// JSON answer; any other upstream answer is returned for the client as it is, the upstream
/// base replaced.
async fn kept_or_fetched(
    gateway: &Gateway,
    request: &PublicRequest<'_>,
    upstream: &mut Option<UpstreamCall>,
) -> Result<Result<Arc<Statement>, Response<Body>>, Refusal> {
    let cache = &request.route.metadata;
    if let Some(statement) = cache.fresh() {
        return Ok(Ok(statement));
    }
    let _fetching = cache.fetching.lock().await;
    if let Some(statement) = cache.fresh() {
        return Ok(Ok(statement));
    }
    let (status, content_type, text) = fetch(gateway, request, true, upstream).await?;
    match content_type {
        Some(content_type)
            if status == StatusCode::OK && metadata::is_json(Some(&content_type)) =>
        {
            let statement = Arc::new(Statement { text, content_type });
            cache.keep(statement.clone());
            Ok(Ok(statement))
        }
        content_type => {
            let upstream_base = &request.route.upstream_base;
            let body = metadata::replace_base(&text, upstream_base, &request.base);
            Ok(Err(metadata::reply(
                status,
                content_type,
                Bytes::from(body),
            )))
        }
    }
}

/// `GET metadata` upstream, uncompressed, asking for JSON when `as_json`, else for what the
/// client asked; its status, content type and body text.
async fn fetch(
    gateway: &Gateway,
    request: &PublicRequest<'_>,
    as_json: bool,
    upstream: &mut Option<UpstreamCall>,
) -> Result<(StatusCode, Option<HeaderValue>, String), Refusal> {
    let mut headers = upstream_headers(
        &request.parts.headers,
        request.peer,
        request.request_id,
        as_json,
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let outbound = Outbound {
        method: &Method::GET,
        path: request.relative,
        query: request.parts.uri.query(),
        headers,
        body: Bytes::new(),
    };
    let sent = Instant::now();
    let server = &request.route.upstream;
    let answer = server.send(outbound).await;
    let call = upstream.insert(UpstreamCall {
        took: sent.elapsed(),
        status: None,
    });
    let response = answer?;
    let status = response.status();
    call.status = Some(status.as_u16());
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let encoding = response.headers().get(header::CONTENT_ENCODING).cloned();
    let bytes = server
        .read_body(
            response.into_body(),
            encoding.as_ref(),
            gateway.config.limits.max_checked_response,
        )
        .await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        Refusal::UpstreamUnverifiable("the CapabilityStatement is not UTF-8".into())
    })?;
    Ok((status, content_type, text))
}
