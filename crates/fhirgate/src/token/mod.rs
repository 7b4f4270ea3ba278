//! The authenticate step: from an `Authorization` header to a verified [`Identity`].
//!
//! Only `Authorization: Bearer` is read. A JWT's issuer is picked from its unverified `iss`
//! before any key is touched, so a token naming an unknown issuer causes no outbound request.
//! Keys come only from that issuer's JWKS ([`jwks`]), algorithms only from its allow-list;
//! header members that carry keys or key locations (`jwk`, `jku`, `x5u`, `x5c`) are never
//! used. A token that is not a JWT is opaque: it is introspected ([`introspect`]) by the
//! issuers configured for it, in order. Verified JWTs are remembered ([`cache`]) until they
//! expire; introspection answers have their own cache so revocation is honoured.

mod bearer;
mod cache;
mod claims;
mod introspect;
mod jwks;
/// Public for the fuzz targets, which drive the checks made before any key is touched.
pub mod jwt;

use std::sync::Arc;

pub use self::bearer::bearer_token;
pub use self::cache::{TokenDigest, VerifiedTokens, digest};
pub use self::claims::{ClaimMapping, Identity};
pub use self::introspect::{
    ClientAuth, IntrospectionConfig, IntrospectionSetupError, Introspector,
};
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
    /// The issuer's introspection endpoint cannot answer right now; not the client's fault.
    #[error("token introspection at {issuer} is unavailable")]
    IntrospectionUnavailable { issuer: String },
}

/// One trusted issuer: its keys, its optional introspection client, its claim mapping.
#[derive(Debug)]
struct TrustedIssuer {
    issuer: String,
    /// Absent for an issuer whose tokens are all opaque.
    keys: Option<Arc<IssuerKeys>>,
    introspector: Option<Introspector>,
}

/// Most verified tokens remembered at once.
const VERIFIED_CAPACITY: u64 = 100_000;
/// Longest a verified token is remembered (its own `exp` permitting).
const VERIFIED_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// Verifies access tokens for every configured issuer.
#[derive(Debug)]
pub struct TokenValidator {
    issuers: Vec<TrustedIssuer>,
    max_token_length: usize,
    verified: VerifiedTokens,
}

impl TokenValidator {
    /// Builds the validator; keys are fetched later by [`TokenValidator::load_keys`].
    pub fn new(config: &Config, http: reqwest::Client) -> Result<Self, IntrospectionSetupError> {
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            let introspector = match &issuer.introspection {
                Some(settings) => Some(Introspector::new(
                    &issuer.issuer,
                    settings.clone(),
                    issuer.claims.clone(),
                    http.clone(),
                )?),
                None => None,
            };
            issuers.push(TrustedIssuer {
                issuer: issuer.issuer.clone(),
                keys: issuer
                    .jwt
                    .then(|| Arc::new(IssuerKeys::new(issuer.clone(), http.clone()))),
                introspector,
            });
        }
        Ok(Self {
            issuers,
            max_token_length: config.limits.max_token_length,
            verified: VerifiedTokens::new(VERIFIED_CAPACITY, VERIFIED_MAX_AGE),
        })
    }

    /// The key store of every issuer that accepts JWTs.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers
            .iter()
            .filter_map(|issuer| issuer.keys.as_ref())
    }

    /// Fetches every issuer's keys once; failures are logged, not fatal.
    pub async fn load_keys(&self) {
        for issuer in self.issuers() {
            if let Err(error) = issuer.refresh().await {
                tracing::warn!(issuer = %issuer.issuer(), %error, "signing keys not loaded");
            }
        }
    }

    /// True when every issuer that verifies JWTs has keys.
    pub fn ready(&self) -> bool {
        self.issuers().all(|issuer| issuer.has_keys())
    }

    /// Checks a token and returns who is calling with what grant.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > self.max_token_length {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let key = digest(token);
        if let Some(identity) = self.verified.get(&key) {
            return Ok(identity);
        }
        let Ok(parts) = jwt::split(token) else {
            return self.verify_opaque(token, key).await;
        };
        let header = jwt::peek_header(&parts)?;
        let iss = jwt::peek_issuer(&parts)?;
        let issuer = self
            .issuers
            .iter()
            .find(|candidate| candidate.issuer == iss)
            .ok_or_else(|| TokenError::Invalid("issuer not trusted".into()))?;
        let keys = issuer
            .keys
            .as_ref()
            .ok_or_else(|| TokenError::Invalid("issuer does not sign JWTs".into()))?;
        let config = keys.config();
        let verify_key = keys.key_for(header.kid.as_deref(), header.alg).await?;
        let claims = jwt::verify(token, &header, &verify_key, config)?;
        let identity = Arc::new(Identity::from_claims(iss, &claims, &config.claims));
        if let Some(introspector) = issuer
            .introspector
            .as_ref()
            .filter(|i| i.introspects_jwts())
        {
            // Revocation is the issuer's to say; its answer has its own cache and lifetime.
            return match introspector.identity(token, key).await? {
                Some(_) => Ok(identity),
                None => Err(TokenError::Invalid("token is not active".into())),
            };
        }
        self.verified
            .insert(key, identity.clone(), identity.expires_at);
        Ok(identity)
    }

    /// An opaque token: asks each issuer that introspects, in configured order.
    async fn verify_opaque(
        &self,
        token: &str,
        key: TokenDigest,
    ) -> Result<Arc<Identity>, TokenError> {
        let mut unavailable = None;
        let mut asked = false;
        for introspector in self.issuers.iter().filter_map(|i| i.introspector.as_ref()) {
            asked = true;
            match introspector.identity(token, key).await {
                Ok(Some(identity)) => return Ok(identity),
                Ok(None) => {}
                Err(error @ TokenError::IntrospectionUnavailable { .. }) => {
                    unavailable.get_or_insert(error);
                }
                Err(error) => return Err(error),
            }
        }
        match (unavailable, asked) {
            (Some(error), _) => Err(error),
            (None, true) => Err(TokenError::Invalid("token is not active".into())),
            (None, false) => Err(TokenError::Invalid("token is not a JWT".into())),
        }
    }
}
