//! The FHIR listener: the request pipeline and the connection loop that runs it.
//!
//! The pipeline steps each live in a module of their own and run in this order:
//! route ([`routes`]) → CORS preflight? ([`cors`]) → accept ([`accept`]) → public? ([`public`]) →
//! authenticate ([`crate::token`]) → classify and authorize ([`fhirgate_policy`]; refusals for
//! missing scope reopened by [`break_glass`] when configured) → forward ([`forward`], to a
//! server of the route's [`upstream`]) → verify ([`verify`], [`bundle`] for Bundle entries) → record
//! ([`crate::audit`]); every answer gets the gateway's CORS headers. [`pipeline`] strings
//! them together.

mod accept;
mod break_glass;
mod bundle;
mod connection_limits;
mod cors;
mod encoding;
mod forward;
mod headers;
mod idle;
mod metadata;
mod pipeline;
mod public;
mod rewrite;
mod routes;
mod server;
mod server_certificate;
mod tls;
mod upstream;
mod upstream_credential;
mod upstream_slots;
mod upstream_tls;
mod upstream_token;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

pub use self::accept::{ACCESS_TOKEN, accept, param_name};
pub use self::break_glass::{BREAK_GLASS_HEADER, BreakGlassPolicy, Broken, NotBroken, purposes};
pub use self::cors::CorsPolicy;
pub use self::forward::target_url;
pub use self::metadata::MetadataCache;
pub use self::pipeline::{checks_response, classify_and_decide, is_public, reads_body};
pub use self::routes::{Route, Routes};
pub use self::server::serve;
pub use self::server_certificate::ServerCertificate;
pub use self::tls::{
    ServerTls, TlsSetupError, acceptor as tls_acceptor, thumbprint as certificate_thumbprint,
};
pub use self::upstream::Upstream;
pub use self::upstream_slots::UpstreamSlots;
pub use self::upstream_tls::{SetupProblem, UpstreamSetupError};
pub use self::upstream_token::{FetchError, GrantSetupError, UpstreamToken};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::token::TokenValidator;

/// The client end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// `x5t#S256` of the client certificate verified in the TLS handshake, if one was sent.
    pub certificate: Option<String>,
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub tokens: TokenValidator,
    /// The FHIR APIs behind the gateway, each with its upstream.
    pub routes: Routes,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub limiter: Limiter,
    /// How audit records name this process.
    pub instance: String,
    /// The authorization server's discovery, for `.well-known/smart-configuration` and the
    /// CapabilityStatement; none when its document cannot be located.
    pub discovery: Option<Discovery>,
    /// Which origins may call the API from a browser.
    pub cors: CorsPolicy,
    /// Break-the-glass, when configured.
    pub break_glass: Option<BreakGlassPolicy>,
    /// The bearer token the admin listener's `/readyz` and `/metrics` require, if any.
    pub admin_token: Option<String>,
}

impl Gateway {
    pub fn new(
        config: Config,
        tokens: TokenValidator,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        limiter: Limiter,
        http: reqwest::Client,
        routes: Routes,
    ) -> Arc<Self> {
        let instance = config.instance();
        let discovery = Discovery::new(&config, http);
        let cors = CorsPolicy::new(config.cors.as_ref());
        let break_glass = config.break_glass.as_ref().map(BreakGlassPolicy::new);
        Arc::new(Self {
            break_glass,
            discovery,
            cors,
            config,
            tokens,
            routes,
            audit,
            metrics,
            limiter,
            instance,
            admin_token: None,
        })
    }
}
