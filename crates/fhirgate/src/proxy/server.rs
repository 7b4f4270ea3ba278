//! The connection loop: HTTP/1.1 and HTTP/2 on one listener, in the clear (HTTP/2 by prior
//! knowledge) or over TLS (by ALPN), within the connection limits
//! ([`super::connection_limits`], [`super::idle`]), drained on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;
use tower::util::ServiceFn;
use tower_http::compression::{Compression, CompressionLayer};

use super::Peer;
use super::connection_limits::{self, ConnectionGate};
use super::idle::{IdleIo, IdleTimeouts, InFlight};
use super::pipeline::handle;
use crate::metrics::Metrics;
use crate::reload::LiveGateway;

/// How long open connections may take to finish after shutdown begins.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the FHIR listener until `shutdown` completes, then drains open connections.
///
/// The connection limits (`limits.connections`) are those of the gateway in use at start.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: LiveGateway,
    shutdown: impl Future<Output = ()>,
) {
    let (limits, metrics) = {
        let first = gateway.load();
        (
            first.config.limits.connections.clone(),
            first.metrics.clone(),
        )
    };
    let builder = connection_limits::builder(&limits);
    let gate = ConnectionGate::new(limits.max_open, metrics.clone());
    let timeouts = IdleTimeouts {
        silent: limits.header_read_timeout.min(limits.idle_timeout),
        idle: limits.idle_timeout,
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = gate.admit() else {
            tracing::debug!(client.address = %peer, max_open = limits.max_open, "connection closed at once: the most connections allowed are open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let in_flight = Arc::new(InFlight::default());
        let Some(acceptor) = tls.clone() else {
            let peer = Arc::new(Peer {
                address: peer,
                tls: false,
                certificate: None,
            });
            let io = IdleIo::new(stream, timeouts, in_flight.clone(), metrics.clone());
            let service = service(gateway.clone(), peer.clone(), in_flight);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            let connection = graceful.watch(connection);
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _admitted = admitted;
                if let Err(error) = connection.await {
                    ended(&metrics, &peer, &*error);
                }
            });
            continue;
        };
        // The handshake runs in the connection's own task, so a slow client holds up no one.
        let (gateway, builder, watcher) = (gateway.clone(), builder.clone(), graceful.watcher());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let handshake = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(client.address = %peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client.address = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(super::tls::thumbprint);
            let peer = Arc::new(Peer {
                address: peer,
                tls: true,
                certificate,
            });
            let io = IdleIo::new(stream, timeouts, in_flight.clone(), metrics.clone());
            let service = service(gateway.clone(), peer.clone(), in_flight);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                ended(&metrics, &peer, &*error);
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing"),
    }
}

/// Logs a connection that ended with `error`, and counts the limit that ended it, if one did.
fn ended(metrics: &Metrics, peer: &Peer, error: &(dyn std::error::Error + 'static)) {
    match connection_limits::limit_of(error) {
        Some(limit) => {
            metrics.limit_hit(limit);
            tracing::debug!(client.address = %peer.address, limit = limit.as_str(), %error, "connection closed by a limit");
        }
        None => {
            tracing::debug!(client.address = %peer.address, %error, "connection ended with an error");
        }
    }
}

/// The service answering one connection's requests: the pipeline, with what it sends
/// compressed (gzip, br, deflate) for clients that accept it. Bodies that already have a
/// `Content-Encoding` (an upstream's, passed through) are left as they are.
fn service(
    live: LiveGateway,
    peer: Arc<Peer>,
    in_flight: Arc<InFlight>,
) -> TowerToHyperService<
    Compression<ServiceFn<impl FnMut(http::Request<Incoming>) -> Answer + Clone>>,
> {
    let pipeline = tower::service_fn(move |request| {
        // The gateway in use when the request arrives serves all of it, through a reload.
        let (gateway, peer) = (live.load_full(), peer.clone());
        // The connection is not idle until the answer is handed over.
        let in_progress = in_flight.start();
        // A task of its own: a client that goes away does not cancel a request the upstream
        // may already be acting on before its audit record is written.
        // Boxed: the task then holds a pointer, not the whole request future, so spawning and
        // finishing it copy a few words instead of kilobytes.
        let handling = tokio::spawn(Box::pin(handle(gateway, request, peer)));
        let answer: Answer = Box::pin(async move {
            let response = handling.await.unwrap_or_else(|error| {
                tracing::error!(%error, "request handler failed");
                internal_error()
            });
            drop(in_progress);
            Ok::<_, Infallible>(response)
        });
        answer
    });
    TowerToHyperService::new(CompressionLayer::new().layer(pipeline))
}

/// The pipeline's answer to one request.
type Answer =
    Pin<Box<dyn Future<Output = Result<http::Response<crate::body::Body>, Infallible>> + Send>>;

/// The answer when the request handler itself failed.
fn internal_error() -> http::Response<crate::body::Body> {
    let outcome = fhirgate_policy::outcome::OperationOutcome::error(
        fhirgate_policy::outcome::IssueCode::Exception,
        "The gateway failed while handling the request".to_owned(),
    );
    let mut response = http::Response::new(crate::body::full(outcome.to_json()));
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    response
}
