//! The authenticate step: from an `Authorization` header to a verified [`Identity`].
//!
//! Only `Authorization: Bearer` is read. A JWT's issuer is picked from its unverified `iss`
//! before any key is touched, so a token naming an unknown issuer causes no outbound request.
//! Keys come only from that issuer's JWKS ([`jwks`]), algorithms only from its allow-list;
//! header members that carry keys or key locations (`jwk`, `jku`, `x5u`, `x5c`) are never
//! used. A token that is not a JWT is opaque: it is introspected ([`introspect`]) by the
//! issuers configured for it, in order. Verified JWTs are remembered ([`cache`]) until they
//! expire; introspection answers have their own cache so revocation is honoured.

mod cache;
mod claims;
mod credentials;
mod dpop;
mod introspect;
mod jwks;
/// Public for the fuzz targets, which drive the checks made before any key is touched.
pub mod jwt;
/// Purposes of use, as a claim or a header gives them.
pub mod purpose;

use std::sync::Arc;

pub use self::cache::{TokenDigest, VerifiedTokens, digest};
pub use self::claims::{Binding, Caller, ClaimMapping, Identity, TokenAudience};
pub use self::credentials::{Credentials, Scheme, bearer_token, credentials};
pub use self::dpop::{ProofError, ProofTarget, ProofVerifier, thumbprint};
pub(crate) use self::introspect::form_encode;
pub use self::introspect::{
    Answer, AnswerError, AnswerRules, ClientAuth, IntrospectionConfig, IntrospectionSetupError,
    Introspector,
};
pub use self::jwks::IssuerKeys;

use crate::config::{Config, DpopSettings};
use crate::metrics::{Cache, Lookup, Metrics};

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
    /// A DPoP-bound token without a good proof, a proof with an unbound token, or an unbound
    /// token where the issuer requires DPoP (RFC 9449): answered with a `DPoP` challenge.
    #[error("{detail}")]
    Dpop {
        challenge: DpopChallenge,
        detail: String,
        /// The proof algorithms the issuer accepts, for the challenge's `algs`.
        algs: String,
    },
}

/// The RFC 9449 error code of a [`TokenError::Dpop`] challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopChallenge {
    /// `invalid_dpop_proof`: the proof is missing, malformed, stale, replayed or mismatched.
    InvalidProof,
    /// `invalid_token`: the token is not bound where it must be, or is bound but presented as
    /// a bearer token.
    InvalidToken,
}

/// What a proof of possession is checked against: the request as the client sent it.
pub struct Presentation<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    /// The request URL as the client addressed it, without query; made only when a proof
    /// needs it.
    pub url: &'a (dyn Fn() -> String + Sync),
    /// `x5t#S256` of the client certificate of the connection (mutual TLS), if any.
    pub client_certificate: Option<&'a str>,
    /// The audience the token must name on the route the request took; its issuer's
    /// `audience` when `None`.
    pub audience: Option<&'a str>,
}

/// One trusted issuer: its keys, its optional introspection client, its claim mapping.
#[derive(Debug)]
struct TrustedIssuer {
    issuer: String,
    /// Absent for an issuer whose tokens are all opaque.
    keys: Option<Arc<IssuerKeys>>,
    introspector: Option<Introspector>,
    dpop: DpopSettings,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    proofs: ProofVerifier,
    metrics: Arc<Metrics>,
    /// The routes' own audiences, which tokens may name instead of their issuer's.
    route_audiences: Vec<String>,
}

impl TokenValidator {
    /// Builds the validator; keys are fetched later by [`TokenValidator::load_keys`].
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IntrospectionSetupError> {
        let mut route_audiences: Vec<String> = Vec::new();
        for audience in config.routes.iter().filter_map(|r| r.audience.as_ref()) {
            if !route_audiences.contains(audience) {
                route_audiences.push(audience.clone());
            }
        }
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            let introspector = match &issuer.introspection {
                Some(settings) => Some(Introspector::new(
                    &issuer.issuer,
                    &issuer.audience,
                    &route_audiences,
                    settings.clone(),
                    issuer.claims.clone(),
                    http.clone(),
                    metrics.clone(),
                )?),
                None => None,
            };
            issuers.push(TrustedIssuer {
                issuer: issuer.issuer.clone(),
                keys: issuer.jwt.then(|| {
                    Arc::new(IssuerKeys::new(
                        issuer.clone(),
                        http.clone(),
                        metrics.clone(),
                    ))
                }),
                introspector,
                dpop: issuer.dpop.clone(),
            });
        }
        // A proof id is remembered as long as some issuer could still accept the proof.
        let replay_window = issuers
            .iter()
            .map(|i| i.dpop.proof_max_age + i.dpop.proof_leeway * 2)
            .max()
            .unwrap_or_default();
        Ok(Self {
            issuers,
            max_token_length: config.limits.max_token_length,
            verified: VerifiedTokens::new(VERIFIED_CAPACITY, VERIFIED_MAX_AGE),
            proofs: ProofVerifier::new(replay_window),
            metrics,
            route_audiences,
        })
    }

    /// Reads the request's credentials, verifies the token and, for a sender-constrained
    /// token, its proof of possession.
    pub async fn authenticate(
        &self,
        request: &Presentation<'_>,
    ) -> Result<Arc<Identity>, TokenError> {
        let presented = credentials(request.headers)?;
        let identity = self.verify(presented.token).await?;
        // A token for another route's audience is not one for this route (tenant isolation).
        if !identity.audience.accepts(request.audience) {
            return Err(TokenError::Invalid("audience not accepted".into()));
        }
        self.check_binding(&identity, presented, request)?;
        Ok(identity)
    }

    /// A bound token needs its proof; an unbound one must not come under the DPoP scheme and
    /// is refused where its issuer requires DPoP.
    fn check_binding(
        &self,
        identity: &Identity,
        presented: Credentials<'_>,
        request: &Presentation<'_>,
    ) -> Result<(), TokenError> {
        let settings = self
            .issuers
            .iter()
            .find(|i| i.issuer == identity.caller.issuer)
            .map(|i| &i.dpop)
            .ok_or_else(|| TokenError::Invalid("issuer not trusted".into()))?;
        let refuse = |challenge, detail: &str| TokenError::Dpop {
            challenge,
            detail: detail.to_owned(),
            algs: settings
                .algorithms
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        match (&identity.caller.binding, presented.scheme) {
            (Binding::Dpop(jkt), Scheme::Dpop) => {
                let proofs: Vec<&str> = request
                    .headers
                    .get_all("dpop")
                    .iter()
                    .map(|v| v.to_str().unwrap_or(""))
                    .collect();
                let url = (request.url)();
                let target = ProofTarget {
                    method: request.method,
                    url: &url,
                    access_token: presented.token,
                    jkt,
                    now: unix_now(),
                };
                self.proofs
                    .check(&proofs, &target, settings)
                    .map_err(|e| refuse(DpopChallenge::InvalidProof, &e.to_string()))
            }
            (Binding::Dpop(_), Scheme::Bearer) => Err(refuse(
                DpopChallenge::InvalidToken,
                "the token is DPoP-bound and must be sent with the DPoP scheme and a proof",
            )),
            (Binding::Unbound, Scheme::Dpop) => Err(refuse(
                DpopChallenge::InvalidToken,
                "the token is not DPoP-bound",
            )),
            (Binding::Unbound, Scheme::Bearer) if settings.required => Err(refuse(
                DpopChallenge::InvalidToken,
                "this issuer's tokens must be DPoP-bound",
            )),
            (Binding::Unbound, Scheme::Bearer) => Ok(()),
            (Binding::Certificate(x5t), Scheme::Bearer) => {
                if request.client_certificate == Some(x5t.as_str()) {
                    Ok(())
                } else {
                    Err(TokenError::Invalid(
                        "the token is bound to a client certificate this connection did not \
                         present"
                            .into(),
                    ))
                }
            }
            (Binding::Certificate(_), Scheme::Dpop) => Err(refuse(
                DpopChallenge::InvalidToken,
                "the token is bound to a client certificate, not a DPoP key",
            )),
            (Binding::Unsupported, _) => Err(TokenError::Invalid(
                "the token's confirmation claim names a binding the gateway cannot check".into(),
            )),
        }
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
            self.metrics
                .cache_lookup(Cache::VerifiedTokens, Lookup::Hit);
            return Ok(identity);
        }
        self.metrics
            .cache_lookup(Cache::VerifiedTokens, Lookup::Miss);
        self.verify_uncached(token, key).await
    }

    /// Checks a token without looking in the verified-token cache (what a token seen for the
    /// first time costs); a verified JWT is remembered all the same.
    pub async fn verify_uncached(
        &self,
        token: &str,
        key: TokenDigest,
    ) -> Result<Arc<Identity>, TokenError> {
        if token.len() > self.max_token_length {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let parts = match jwt::split(token) {
            Ok(parts) => parts,
            // A JWS without its signature or a JWE is a JWT fhirgate refuses, not an opaque
            // token: it is never shown to an introspection endpoint (which may answer it with
            // an error, as oidc-provider does, and turn the refusal into a 503).
            Err(error) if matches!(token.matches('.').count(), 2 | 4) => return Err(error),
            Err(_) => return self.verify_opaque(token, key).await,
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
        let claims = jwt::verify(token, &header, &verify_key, config, &self.route_audiences)?;
        let mut identity = Identity::from_claims(iss, &claims, &config.claims);
        identity.audience = claims
            .get("aud")
            .and_then(|aud| TokenAudience::of(aud, &config.audience, &self.route_audiences))
            .ok_or_else(|| TokenError::Invalid("audience not accepted".into()))?;
        if let Some(introspector) = issuer
            .introspector
            .as_ref()
            .filter(|i| i.introspects_jwts())
        {
            // Revocation is the issuer's to say; its answer has its own cache and lifetime.
            return match introspector.identity(token, key).await? {
                Some(_) => Ok(Arc::new(identity)),
                None => Err(TokenError::Invalid("token is not active".into())),
            };
        }
        Ok(self.verified.insert(key, identity))
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
