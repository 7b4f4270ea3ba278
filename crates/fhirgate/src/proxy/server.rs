//! The connection loop: HTTP/1.1 and HTTP/2 on one listener, in the clear (HTTP/2 by prior
//! knowledge) or over TLS (by ALPN), drained on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;
use tower::util::ServiceFn;
use tower_http::compression::{Compression, CompressionLayer};

use super::Peer;
use super::pipeline::handle;
use crate::reload::LiveGateway;

/// How long open connections may take to finish after shutdown begins.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the FHIR listener until `shutdown` completes, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: LiveGateway,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
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
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            let peer = Arc::new(Peer {
                address: peer,
                tls: false,
                certificate: None,
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service(gateway.clone(), peer.clone()))
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(client.address = %peer.address, %error, "connection ended with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's own task, so a slow client holds up no one.
        let (gateway, builder, watcher) = (gateway.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
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
            let connection = builder
                .serve_connection(TokioIo::new(stream), service(gateway.clone(), peer.clone()))
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(client.address = %peer.address, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing"),
    }
}

/// The service answering one connection's requests: the pipeline, with what it sends
/// compressed (gzip, br, deflate) for clients that accept it. Bodies that already have a
/// `Content-Encoding` (an upstream's, passed through) are left as they are.
fn service(
    live: LiveGateway,
    peer: Arc<Peer>,
) -> TowerToHyperService<
    Compression<ServiceFn<impl FnMut(http::Request<Incoming>) -> Answer + Clone>>,
> {
    let pipeline = tower::service_fn(move |request| {
        // The gateway in use when the request arrives serves all of it, through a reload.
        let (gateway, peer) = (live.load_full(), peer.clone());
        // A task of its own: a client that goes away does not cancel a request the upstream
        // may already be acting on before its audit record is written.
        // Boxed: the task then holds a pointer, not the whole request future, so spawning and
        // finishing it copy a few words instead of kilobytes.
        let handling = tokio::spawn(Box::pin(handle(gateway, request, peer)));
        let answer: Answer = Box::pin(async move {
            Ok::<_, Infallible>(handling.await.unwrap_or_else(|error| {
                tracing::error!(%error, "request handler failed");
                internal_error()
            }))
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
