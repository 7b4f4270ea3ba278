//! Starting and stopping the gateway: listeners, background tasks, signals.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditLog, AuditTrail, EventSource};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway};
use crate::ratelimit::Limiter;
use crate::reload::{ConfigFile, LiveGateway, Reloader};
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
    #[error(transparent)]
    AdminToken(#[from] crate::config::AdminTokenError),
    #[error(transparent)]
    Upstream(#[from] proxy::UpstreamSetupError),
}

impl StartError {
    /// The line of the configuration the error is about, where it is about one key.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Upstream(error) => error.line(),
            _ => None,
        }
    }

    /// The key the error is about (`admin.bearer_token_file`, `upstream.ca_file`), where it
    /// is about one, to find its line in the configuration's text.
    pub fn key(&self) -> Option<String> {
        match self {
            Self::AdminToken(error) => Some(format!("admin.{}", error.0.key())),
            Self::Upstream(error) => error.key(),
            _ => None,
        }
    }
}

/// Everything `serve` reads besides the configuration itself, read now without serving or
/// calling out: TLS certificates and keys, introspection and upstream client secrets and
/// keys, the rate-limit store's URL, the folder of the audit file.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    if let Some(tls) = &config.tls {
        proxy::tls_acceptor(tls)?;
    }
    config.admin.token()?;
    proxy::Routes::new(config, &Arc::new(Metrics::default()))?;
    let http = reqwest::Client::builder().build()?;
    TokenValidator::new(config, http, Arc::new(Metrics::default()))?;
    Limiter::new(&config.rate_limits)?;
    crate::audit::preflight(&config.audit)?;
    Ok(())
}

/// Runs the gateway until SIGINT or SIGTERM, then drains connections and the audit trail.
pub async fn serve(config: Config, file: Option<ConfigFile>) -> Result<(), StartError> {
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    serve_with(config, file, listener, admin_listener, shutdown_signal()).await
}

/// Runs the gateway on listeners already bound until `shutdown` completes.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    serve_with(config, None, listener, admin_listener, shutdown).await
}

/// What every gateway a process builds shares, from its start to its exit.
#[derive(Clone)]
pub struct Shared {
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// The cap on requests at the FHIR server, whichever gateway sends them.
    pub upstream_slots: proxy::UpstreamSlots,
}

/// A gateway for `config`, its issuers' keys and its upstreams' access tokens fetched (as far
/// as they answer) and kept fresh, and its upstreams' health checked, for as long as the
/// gateway is in use.
pub async fn build_gateway(config: Config, shared: &Shared) -> Result<Arc<Gateway>, StartError> {
    let admin_token = config.admin.token()?;
    let mut routes = proxy::Routes::new(&config, &shared.metrics)?;
    routes.share_slots(&shared.upstream_slots);
    for route in routes.iter() {
        if let Some(token) = route.upstream.fetched_token() {
            let first = token.fetch().await;
            tokio::spawn(proxy::UpstreamToken::keep_fresh(
                Arc::downgrade(token),
                first,
            ));
        }
    }
    let tokens = TokenValidator::new(&config, shared.http.clone(), shared.metrics.clone())?;
    tokens.load_keys().await;
    let limiter = Limiter::new(&config.rate_limits)?;
    // Nothing below fails: the checks stop when this gateway is done with.
    routes.start_health_checks();
    shared.metrics.upstream_servers_in_use(&routes.servers());
    let mut gateway = Gateway::new(
        config,
        tokens,
        shared.audit.clone(),
        shared.metrics.clone(),
        limiter,
        shared.http.clone(),
        routes,
    );
    Arc::get_mut(&mut gateway)
        .expect("a gateway just built has no other holder")
        .admin_token = admin_token;
    for issuer in gateway.tokens.issuers() {
        tokio::spawn(refresh_keys(Arc::downgrade(issuer)));
    }
    Ok(gateway)
}

/// Runs the gateway; with `file`, reloads it on SIGHUP and when it changes.
async fn serve_with(
    config: Config,
    file: Option<ConfigFile>,
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
    let shared = Shared {
        audit,
        metrics,
        http,
        upstream_slots: proxy::UpstreamSlots::new(config.limits.max_upstream_requests),
    };
    let gateway = build_gateway(config, &shared).await?;
    shared.metrics.config_loaded(crate::reload::unix_now());
    let upstreams: Vec<String> = gateway
        .config
        .routes
        .iter()
        .map(|route| format!("{} {}", route.name, route.upstream.url.as_str()))
        .collect();
    tracing::info!(
        listen = %gateway.config.listen,
        admin = %gateway.config.admin_listen,
        upstream = %upstreams.join(", "),
        "fhirgate listening"
    );
    let live: LiveGateway = Arc::new(ArcSwap::new(gateway));
    tokio::spawn(forget_idle_rate_limits(Arc::downgrade(&live)));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let reloader = file.map(|file| {
        let reloader = Reloader::new(&file, live.clone(), shared.clone());
        tokio::spawn(reloader.run(stop_rx.clone()))
    });
    if let Some(tls) = &tls {
        let watch = tls
            .certificate
            .clone()
            .watch(shared.metrics.clone(), stop_rx.clone());
        tokio::spawn(watch);
    }
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        live.clone(),
        stopped(stop_rx.clone()),
    ));
    let acceptor = tls.map(|tls| tls.acceptor);
    let fhir = proxy::serve(listener, acceptor, live.clone(), stopped(stop_rx));
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
    let _ = stop_tx.send(true);
    let _ = admin.await;
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    drop(live);
    drop(shared);
    trail.finish(AUDIT_DRAIN).await;
    Ok(())
}

/// Forgets idle rate-limit buckets of the gateway in use, every minute, until the process
/// lets go of it.
async fn forget_idle_rate_limits(live: Weak<ArcSwap<Gateway>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Some(live) = live.upgrade() else {
            return;
        };
        let gateway = live.load();
        if gateway.limiter.is_active() {
            gateway.limiter.forget_idle();
        }
    }
}

async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })
}

/// Keeps an issuer's keys fresh: on its interval once loaded, every few seconds until then;
/// stops once no gateway uses the issuer any more.
async fn refresh_keys(issuer: Weak<crate::token::IssuerKeys>) {
    loop {
        let Some(issuer) = issuer.upgrade() else {
            return;
        };
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
