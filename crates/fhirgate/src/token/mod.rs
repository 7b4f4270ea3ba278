//! The authenticate step: from an `Authorization` header to a verified [`Identity`].
//!
//! Only `Authorization: Bearer` is read. A token is a compact JWS; its issuer is picked from
//! the unverified `iss` before any key is touched, so a token naming an unknown issuer causes
//! no outbound request. Keys come only from that issuer's JWKS ([`jwks`]), algorithms only from
//! its allow-list; header members that carry keys or key locations (`jwk`, `jku`, `x5u`, `x5c`)
//! are never used.

mod bearer;
mod cache;
mod claims;
mod jwks;
/// Public for the fuzz targets, which drive the checks made before any key is touched.
pub mod jwt;

use std::sync::Arc;

pub use self::bearer::bearer_token;
pub use self::cache::{TokenDigest, VerifiedTokens, digest};
pub use self::claims::{ClaimMapping, Identity};
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

/// Most verified tokens remembered at once.
const VERIFIED_CAPACITY: u64 = 100_000;
/// Longest a verified token is remembered (its own `exp` permitting).
const VERIFIED_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// Verifies access tokens for every configured issuer.
#[derive(Debug)]
pub struct TokenValidator {
    issuers: Vec<Arc<IssuerKeys>>,
    max_token_length: usize,
    verified: VerifiedTokens,
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
            verified: VerifiedTokens::new(VERIFIED_CAPACITY, VERIFIED_MAX_AGE),
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

    /// Checks a token and returns who is calling with what grant. A token verified before
    /// and not yet expired is answered from the cache.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > self.max_token_length {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let key = digest(token);
        if let Some(identity) = self.verified.get(&key) {
            return Ok(identity);
        }
        let identity = Arc::new(self.verify_uncached(token).await?);
        self.verified
            .insert(key, identity.clone(), identity.expires_at);
        Ok(identity)
    }

    /// Checks a compact JWS: issuer chosen from the unverified `iss`, then key, signature
    /// and registered claims under that issuer's rules.
    async fn verify_uncached(&self, token: &str) -> Result<Identity, TokenError> {
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
        Ok(Identity::from_claims(
            iss,
            &claims,
            &ClaimMapping::default(),
        ))
    }
}
