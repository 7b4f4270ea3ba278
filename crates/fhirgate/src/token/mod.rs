//! The authenticate step: from an `Authorization` header to a verified [`Identity`].
//!
//! Only `Authorization: Bearer` is read. A token is a compact JWS; its issuer is picked from
//! the unverified `iss` before any key is touched, so a token naming an unknown issuer causes
//! no outbound request. Keys come only from that issuer's JWKS ([`jwks`]), algorithms only from
//! its allow-list; header members that carry keys or key locations (`jwk`, `jku`, `x5u`, `x5c`)
//! are never used.

mod bearer;
mod claims;
mod jwks;
mod jwt;

use std::sync::Arc;

pub use self::bearer::bearer_token;
pub use self::claims::Identity;
pub use self::jwks::IssuerKeys;

use crate::config::Config;

/// Why a request's credentials are not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No credentials at all, or a scheme other than Bearer.
    #[error("no bearer token")]
    Missing,
    /// The credentials are syntactically unusable (RFC 6750 `invalid_request`).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The token is not acceptable (RFC 6750 `invalid_token`).
    #[error("{0}")]
    Invalid(String),
    /// The token was acceptable once but has expired.
    #[error("token expired")]
    Expired,
    /// The issuer's keys cannot be had right now; not the client's fault.
    #[error("signing keys of {issuer} are unavailable")]
    KeysUnavailable { issuer: String },
}

/// Verifies access tokens for every configured issuer.
#[derive(Debug)]
pub struct TokenValidator {
    issuers: Vec<Arc<IssuerKeys>>,
    max_token_length: usize,
}

impl TokenValidator {
    /// Builds the validator; keys are fetched later by [`TokenValidator::load_keys`].
    pub fn new(config: &Config, http: reqwest::Client) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|issuer| Arc::new(IssuerKeys::new(issuer.clone(), http.clone())))
            .collect();
        Self {
            issuers,
            max_token_length: config.limits.max_token_length,
        }
    }

    /// Every issuer's key store.
    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Fetches every issuer's keys once; failures are logged, not fatal.
    pub async fn load_keys(&self) {
        for issuer in &self.issuers {
            if let Err(error) = issuer.refresh().await {
                tracing::warn!(issuer = %issuer.issuer(), %error, "signing keys not loaded");
            }
        }
    }

    /// True when every issuer has keys.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|issuer| issuer.has_keys())
    }

    /// Checks a compact JWS and returns who is calling with what grant.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if token.len() > self.max_token_length {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let parts = jwt::split(token)?;
        let header = jwt::peek_header(&parts)?;
        let iss = jwt::peek_issuer(&parts)?;
        let issuer = self
            .issuers
            .iter()
            .find(|candidate| candidate.issuer() == iss)
            .ok_or_else(|| TokenError::Invalid("issuer not trusted".into()))?;
        let key = issuer.key_for(header.kid.as_deref(), header.alg).await?;
        let claims = jwt::verify(token, &header, &key, issuer.config())?;
        Ok(Identity::from_claims(iss, claims))
    }
}
