//! The admin listener, apart from the FHIR listener: liveness, readiness and metrics.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::proxy::Gateway;
use crate::reload::LiveGateway;

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` completes.
pub async fn serve(listener: TcpListener, live: LiveGateway, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let live = live.clone();
        let service = service_fn(move |request| {
            let gateway = live.load_full();
            async move { Ok::<_, Infallible>(answer(&gateway, request).await) }
        });
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(gateway: &Gateway, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"status":"method not allowed"}"#.into(),
        );
    }
    let path = request.uri().path();
    if path != "/healthz" && !authorized(gateway, &request) {
        let mut response = json(
            StatusCode::UNAUTHORIZED,
            r#"{"status":"a bearer token is required"}"#.into(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"fhirgate-admin\""),
        );
        return response;
    }
    match path {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/metrics" => {
            gateway
                .metrics
                .rate_limit_store(gateway.limiter.store_reachable());
            let mut response = Response::new(body::full(Bytes::from(gateway.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/readyz" => {
            let keys = gateway.tokens.ready();
            // A route can serve: it holds its upstream credential and reaches one of its
            // servers. One route (tenant) whose upstream is down answers its own requests
            // 503 and must not take the others out of a load balancer with it, so the
            // gateway is ready while any route can serve.
            let (mut upstream, mut credential) = (false, false);
            for route in gateway.routes.iter() {
                let held = route.upstream.has_credential();
                let reached = route.upstream.reachable().await;
                upstream |= reached;
                credential |= held;
                if held && reached {
                    (upstream, credential) = (true, true);
                    break;
                }
            }
            // An unreachable rate-limit store only makes the gateway unready when it then
            // refuses requests (`closed`); in `local` mode it limits on its own meanwhile.
            let store = gateway.limiter.probe_store().await;
            let spool = gateway.audit.accepting();
            let ready = keys
                && upstream
                && credential
                && spool
                && (store || !gateway.limiter.fails_closed());
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let text = format!(
                r#"{{"ready":{ready},"checks":{{"signing_keys":{keys},"upstream":{upstream},"upstream_credential":{credential},"rate_limit_store":{store},"audit_spool":{spool}}}}}"#
            );
            json(status, text)
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"status":"not found"}"#.into()),
    }
}

/// Does the request carry the admin token (when one is configured)? Compared in constant
/// time.
fn authorized(gateway: &Gateway, request: &Request<Incoming>) -> bool {
    let Some(expected) = gateway.admin_token.as_deref() else {
        return true;
    };
    let sent = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    sent.is_some_and(|token| {
        aws_lc_rs::constant_time::verify_slices_are_equal(token.as_bytes(), expected.as_bytes())
            .is_ok()
    })
}

fn json(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
