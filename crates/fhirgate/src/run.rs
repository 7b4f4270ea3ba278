//! Starting and stopping the gateway: listeners, background tasks, signals.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditTrail, EventSource};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway};
use crate::ratelimit::Limiter;
use crate::token::TokenValidator;

/// How long shippers may go on delivering at shutdown; what is left waits in the spool.
const AUDIT_DRAIN: Duration = Duration::from_secs(5);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("token introspection: {0}")]
    Introspection(#[from] crate::token::IntrospectionSetupError),
    #[error("TLS: {0}")]
    Tls(#[from] proxy::TlsSetupError),
    #[error(transparent)]
    RateLimits(#[from] crate::ratelimit::SharedSetupError),
}

/// Everything `serve` reads besides the configuration itself, read now without serving or
/// calling out: TLS certificates and keys, introspection secrets and keys, the rate-limit
/// store's URL, the folder of the audit file.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    if let Some(tls) = &config.tls {
        proxy::tls_acceptor(tls)?;
    }
    let http = reqwest::Client::builder().build()?;
    TokenValidator::new(config, http, Arc::new(Metrics::default()))?;
    Limiter::new(&config.rate_limits)?;
    crate::audit::preflight(&config.audit)?;
    Ok(())
}

/// Runs the gateway until SIGINT or SIGTERM, then drains connections and the audit trail.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    serve_on(config, listener, admin_listener, shutdown_signal()).await
}

/// Runs the gateway on listeners already bound until `shutdown` completes.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let tls = config.tls.as_ref().map(proxy::tls_acceptor).transpose()?;
    let metrics = Arc::new(Metrics::default());
    let source = EventSource {
        observer: config.instance(),
        site: None,
        public_base: config.public_base(),
    };
    let (audit, trail) = AuditTrail::start(&config.audit, &source, &http, metrics.clone())?;
    let tokens = TokenValidator::new(&config, http.clone(), metrics.clone())?;
    tokens.load_keys().await;
    let limiter = Limiter::new(&config.rate_limits)?;
    let gateway = Gateway::new(config, tokens, audit, metrics, limiter, http);
    for issuer in gateway.tokens.issuers() {
        tokio::spawn(refresh_keys(issuer.clone()));
    }
    if gateway.limiter.is_active() {
        let gateway = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                gateway.limiter.forget_idle();
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        gateway.clone(),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(
        listen = %gateway.config.listen,
        admin = %gateway.config.admin_listen,
        upstream = %gateway.config.upstream.url.as_str(),
        "fhirgate listening"
    );
    let fhir = proxy::serve(listener, tls, gateway.clone(), stopped(stop_rx));
    tokio::pin!(fhir);
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut fhir => {}
        () = &mut shutdown => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            fhir.await;
        }
    }
    let _ = admin.await;
    drop(gateway);
    trail.finish(AUDIT_DRAIN).await;
    Ok(())
}

async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })
}

/// Keeps an issuer's keys fresh: on its interval once loaded, every few seconds until then.
async fn refresh_keys(issuer: Arc<crate::token::IssuerKeys>) {
    loop {
        issuer.refresh_due().await;
        if let Err(error) = issuer.refresh().await {
            tracing::warn!(issuer = %issuer.issuer(), %error, "JWKS refresh failed; keeping the last good keys");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
