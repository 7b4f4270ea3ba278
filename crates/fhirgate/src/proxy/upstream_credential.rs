//! What the gateway proves to the upstream on every request besides TLS: nothing, a static
//! bearer token, or a token fetched by the client-credentials grant. A fetched credential
//! without a valid token makes the request fail before anything is sent.

use std::sync::Arc;

use http::HeaderValue;

use super::upstream_tls::SetupProblem;
use super::upstream_token::UpstreamToken;
use crate::config;
use crate::metrics::{Metrics, Route};

/// What the gateway proves to the upstream on every request.
#[derive(Debug)]
pub enum Credential {
    /// Nothing beyond what TLS proves.
    None,
    /// A token read from a file or an environment variable at start.
    Static(HeaderValue),
    /// A token fetched from a token endpoint and kept fresh.
    Fetched(Arc<UpstreamToken>),
}

impl Credential {
    /// The credential `upstream` configures; a client-credentials grant reads its secret
    /// now but fetches nothing yet.
    pub fn new(
        upstream: &config::Upstream,
        route: Route,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, SetupProblem> {
        if let Some(grant) = &upstream.client_credentials {
            let token = UpstreamToken::new(grant, route, metrics.clone())?;
            return Ok(Self::Fetched(Arc::new(token)));
        }
        Ok(super::upstream_tls::credential(upstream)?.map_or(Self::None, Self::Static))
    }

    /// The `Authorization` value for a request now: `Ok(None)` when there is no credential
    /// to send, `Err(NoValidToken)` when there is one but no valid token is held.
    pub fn authorization(&self) -> Result<Option<HeaderValue>, NoValidToken> {
        match self {
            Self::None => Ok(None),
            Self::Static(value) => Ok(Some(value.clone())),
            Self::Fetched(token) => token.authorization().map(Some).ok_or(NoValidToken),
        }
    }
}

/// A fetched credential without a valid token at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoValidToken;
