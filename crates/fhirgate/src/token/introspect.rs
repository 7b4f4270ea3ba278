//! Opaque tokens: RFC 7662 introspection at the issuer, with a cache.
//!
//! Answers are cached by a digest of the token: active ones until the earlier of their `exp`
//! and `max_ttl`, inactive ones for `inactive_ttl`, so a revoked token stops working within
//! `max_ttl`. Concurrent requests carrying the same uncached token share one introspection
//! call. When the endpoint cannot be reached or answers nonsense the request is refused as
//! "temporarily unavailable" (503), never allowed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use moka::future::Cache;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::cache::TokenDigest;
use super::{ClaimMapping, Identity, TokenAudience, TokenError};
use crate::config::{HttpUrl, duration, option_duration};
use crate::metrics::{Cache as MetricsCache, Lookup, Metrics, Outcome};

/// Largest introspection answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// How the gateway authenticates to an introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// A signed JWT assertion (RFC 7523) made with the gateway's private key.
    PrivateKeyJwt,
}

/// Introspection settings of one issuer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The endpoint; found by OpenID discovery (`introspection_endpoint`) when absent.
    #[serde(default)]
    pub endpoint: Option<HttpUrl>,
    /// The gateway's client id at the issuer.
    pub client_id: String,
    /// How the gateway authenticates.
    #[serde(default = "default_auth")]
    pub auth: ClientAuth,
    /// Never accepted: a secret is not written in the configuration (which is read by
    /// many, logged by tools and kept in version control). Refused with what to do instead.
    #[serde(default)]
    #[schemars(skip)]
    pub client_secret: Option<crate::config::InlineSecret>,
    /// File holding the secret for `client_secret_basic` / `client_secret_post` (trailing
    /// newline ignored).
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Environment variable holding that secret, instead of a file.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// PEM private key (RSA or EC P-256) for `private_key_jwt`.
    #[serde(default)]
    pub private_key_file: Option<std::path::PathBuf>,
    /// Longest an active answer is reused (its `exp` permitting).
    #[serde(default = "default_max_ttl", deserialize_with = "duration")]
    #[schemars(with = "crate::config::schema::DurationText")]
    pub max_ttl: Duration,
    /// How long an inactive answer is reused.
    #[serde(default = "default_inactive_ttl", deserialize_with = "duration")]
    #[schemars(with = "crate::config::schema::DurationText")]
    pub inactive_ttl: Duration,
    /// Also introspect JWTs of this issuer after their signature checks out, so that
    /// revocation is honoured.
    #[serde(default)]
    pub introspect_jwts: bool,
    /// Time allowed for one introspection call.
    #[serde(default, deserialize_with = "option_duration")]
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    pub timeout: Option<Duration>,
}

fn default_auth() -> ClientAuth {
    ClientAuth::ClientSecretBasic
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_inactive_ttl() -> Duration {
    Duration::from_secs(10)
}

/// What the gateway sends to authenticate itself.
enum Credentials {
    Secret(String),
    Key(EncodingKey, jsonwebtoken::Algorithm),
}

/// An introspection answer as the gateway reads it, and how long it may be reused.
#[derive(Debug, Clone)]
pub enum Answer {
    Active {
        identity: Arc<Identity>,
        ttl: Duration,
    },
    Inactive {
        ttl: Duration,
    },
}

/// Why an introspection answer cannot be read; the request is then refused as unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("the answer is not a JSON object")]
    NotAnObject,
}

/// How one issuer's RFC 7662 answers are read.
#[derive(Debug, Clone, Copy)]
pub struct AnswerRules<'a> {
    pub issuer: &'a str,
    /// The audience an answer's `aud`, when present, must name (or one of `route_audiences`).
    pub audience: &'a str,
    /// The routes' own audiences, which an answer's `aud` may name instead.
    pub route_audiences: &'a [String],
    pub mapping: &'a ClaimMapping,
    /// Longest an active answer is reused.
    pub max_ttl: Duration,
    /// How long an inactive answer is reused.
    pub inactive_ttl: Duration,
}

impl AnswerRules<'_> {
    /// Reads the body of a successful answer for the token `key`, at `now` (Unix seconds).
    pub fn read(&self, body: &[u8], key: &TokenDigest, now: f64) -> Result<Answer, AnswerError> {
        if body.len() > MAX_ANSWER {
            return Err(AnswerError::TooLarge);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| AnswerError::NotAnObject)?;
        Ok(self.interpret(&claims, key, now))
    }

    /// Turns an RFC 7662 answer into an [`Answer`], to be reused for the right time.
    pub fn interpret(&self, claims: &Map<String, Value>, key: &TokenDigest, now: f64) -> Answer {
        let inactive = Answer::Inactive {
            ttl: self.inactive_ttl,
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            return inactive;
        }
        // An `iss` that is not this issuer, or not a string at all, is not this issuer's.
        if let Some(iss) = claims.get("iss")
            && iss.as_str() != Some(self.issuer)
        {
            return inactive;
        }
        // A token for another resource server is not one for this gateway, active or not.
        // RFC 7662 makes `aud` optional; an answer without it is judged by the issuer alone,
        // as if it named the issuer's audience (so not on a route with an audience of its
        // own).
        let audience = match claims.get("aud") {
            None => TokenAudience::default(),
            Some(aud) => match TokenAudience::of(aud, self.audience, self.route_audiences) {
                Some(audience) => audience,
                None => return inactive,
            },
        };
        let mut identity = Identity::from_claims(self.issuer.to_owned(), claims, self.mapping);
        identity.audience = audience;
        identity
            .token_id
            .get_or_insert_with(|| super::cache::digest_label(key));
        // Capped before the conversion: an `exp` too far ahead for a Duration is still ahead.
        let left = identity
            .expires_at
            .map(|exp| {
                Duration::try_from_secs_f64((exp - now).min(self.max_ttl.as_secs_f64()))
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(self.max_ttl);
        if left.is_zero() {
            return inactive;
        }
        Answer::Active {
            identity: Arc::new(identity),
            ttl: left,
        }
    }
}

/// The introspection client of one issuer.
pub struct Introspector {
    issuer: String,
    /// The audience the issuer's tokens must name when the answer carries `aud`.
    audience: String,
    /// The routes' own audiences, which an answer's `aud` may name instead.
    route_audiences: Vec<String>,
    config: IntrospectionConfig,
    mapping: ClaimMapping,
    credentials: Credentials,
    http: reqwest::Client,
    endpoint: OnceCell<String>,
    answers: Cache<TokenDigest, Answer>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer)
            .field("cached", &self.answers.entry_count())
            .finish()
    }
}

/// Why an introspection client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

struct AnswerExpiry;

impl moka::Expiry<TokenDigest, Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Answer,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        match value {
            Answer::Active { ttl, .. } | Answer::Inactive { ttl } => Some(*ttl),
        }
    }
}

impl Introspector {
    /// Builds the client; reads secrets and keys from files now so a mistake fails start-up.
    pub fn new(
        issuer: &str,
        audience: &str,
        route_audiences: &[String],
        config: IntrospectionConfig,
        mapping: ClaimMapping,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IntrospectionSetupError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| IntrospectionSetupError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let credentials = match config.auth {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost => {
                let secret = match (&config.client_secret_file, &config.client_secret_env) {
                    (Some(path), None) => String::from_utf8_lossy(&read(path)?)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                    (None, Some(name)) => std::env::var(name).map_err(|_| {
                        IntrospectionSetupError::Config(format!(
                            "client_secret_env: the environment variable {name} is not set (or not UTF-8)"
                        ))
                    })?,
                    _ => {
                        return Err(IntrospectionSetupError::Config(
                            "give exactly one of client_secret_file and client_secret_env".into(),
                        ));
                    }
                };
                if secret.is_empty() {
                    return Err(IntrospectionSetupError::Config(
                        "the client secret is empty".into(),
                    ));
                }
                Credentials::Secret(secret)
            }
            ClientAuth::PrivateKeyJwt => {
                let path = config.private_key_file.as_ref().ok_or_else(|| {
                    IntrospectionSetupError::Config("private_key_jwt needs private_key_file".into())
                })?;
                let pem = read(path)?;
                let (key, alg) = match EncodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (key, jsonwebtoken::Algorithm::RS384),
                    Err(_) => (
                        EncodingKey::from_ec_pem(&pem).map_err(|_| {
                            IntrospectionSetupError::Config(format!(
                                "{} is not an RSA or EC private key in PEM",
                                path.display()
                            ))
                        })?,
                        jsonwebtoken::Algorithm::ES256,
                    ),
                };
                Credentials::Key(key, alg)
            }
        };
        let endpoint = OnceCell::new_with(config.endpoint.as_ref().map(HttpUrl::as_str));
        metrics.declare_introspecting_issuer(issuer);
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            route_audiences: route_audiences.to_vec(),
            answers: Cache::builder()
                .max_capacity(100_000)
                .expire_after(AnswerExpiry)
                .build(),
            config,
            mapping,
            credentials,
            http,
            endpoint,
            metrics,
        })
    }

    /// The issuer this client asks.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Should JWTs of this issuer be introspected too?
    pub fn introspects_jwts(&self) -> bool {
        self.config.introspect_jwts
    }

    /// The identity behind `token`: `Ok(None)` when the issuer says it is not active.
    pub async fn identity(
        &self,
        token: &str,
        key: TokenDigest,
    ) -> Result<Option<Arc<Identity>>, TokenError> {
        let lookup = if self.answers.contains_key(&key) {
            Lookup::Hit
        } else {
            Lookup::Miss
        };
        self.metrics
            .cache_lookup(MetricsCache::Introspection, lookup);
        let answer = self
            .answers
            .try_get_with(key, self.ask(token, key))
            .await
            .map_err(|error: Arc<TokenError>| match &*error {
                TokenError::IntrospectionUnavailable { issuer } => {
                    TokenError::IntrospectionUnavailable {
                        issuer: issuer.clone(),
                    }
                }
                other => TokenError::Invalid(other.to_string()),
            })?;
        // Re-check expiry on every use: the cache's own clock is coarse.
        match answer {
            Answer::Active { identity, .. } if still_valid(&identity) => Ok(Some(identity)),
            Answer::Active { .. } => {
                self.answers.invalidate(&key).await;
                Ok(None)
            }
            Answer::Inactive { .. } => Ok(None),
        }
    }

    /// One introspection call, measured.
    async fn ask(&self, token: &str, key: TokenDigest) -> Result<Answer, TokenError> {
        let started = std::time::Instant::now();
        let answer = self.call(token, key).await;
        let outcome = if answer.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.metrics
            .introspection(&self.issuer, outcome, started.elapsed());
        answer
    }

    async fn call(&self, token: &str, key: TokenDigest) -> Result<Answer, TokenError> {
        let unavailable = || TokenError::IntrospectionUnavailable {
            issuer: self.issuer.clone(),
        };
        let endpoint = self
            .endpoint
            .get_or_try_init(|| self.discover())
            .await
            .map_err(|reason| {
                tracing::warn!(issuer = %self.issuer, %reason, "introspection endpoint not found");
                unavailable()
            })?
            .clone();
        let mut form: Vec<(&str, String)> = vec![
            ("token", token.to_owned()),
            ("token_type_hint", "access_token".to_owned()),
        ];
        let mut request = self.http.post(&endpoint);
        match (&self.credentials, self.config.auth) {
            (Credentials::Secret(secret), ClientAuth::ClientSecretBasic) => {
                request = request.basic_auth(
                    form_encode(&self.config.client_id),
                    Some(form_encode(secret)),
                );
            }
            (Credentials::Secret(secret), _) => {
                form.push(("client_id", self.config.client_id.clone()));
                form.push(("client_secret", secret.clone()));
            }
            (Credentials::Key(key, alg), _) => {
                form.push(("client_id", self.config.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push((
                    "client_assertion",
                    self.assertion(&endpoint, key, *alg)
                        .map_err(|_| unavailable())?,
                ));
            }
        }
        if let Some(timeout) = self.config.timeout {
            request = request.timeout(timeout);
        }
        let started = std::time::Instant::now();
        let response = request
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(issuer = %self.issuer, %error, "introspection request failed");
                unavailable()
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|_| unavailable())?;
        tracing::debug!(
            issuer = %self.issuer,
            status = status.as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "introspection answered"
        );
        if !status.is_success() {
            tracing::warn!(issuer = %self.issuer, status = status.as_u16(), "introspection refused");
            return Err(unavailable());
        }
        self.rules().read(&body, &key, unix_now()).map_err(|error| {
            tracing::warn!(issuer = %self.issuer, %error, "introspection answer unreadable");
            unavailable()
        })
    }

    /// The rules this issuer's answers are read by.
    fn rules(&self) -> AnswerRules<'_> {
        AnswerRules {
            issuer: &self.issuer,
            audience: &self.audience,
            route_audiences: &self.route_audiences,
            mapping: &self.mapping,
            max_ttl: self.config.max_ttl,
            inactive_ttl: self.config.inactive_ttl,
        }
    }

    fn assertion(
        &self,
        audience: &str,
        key: &EncodingKey,
        alg: jsonwebtoken::Algorithm,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now() as u64;
        let claims = serde_json::json!({
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": audience,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "exp": now + 60,
        });
        jsonwebtoken::encode(&Header::new(alg), &claims, key)
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let doc: Value = response.json().await.map_err(|e| e.to_string())?;
        doc.get("introspection_endpoint")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{url} names no introspection_endpoint"))
    }
}

/// What `application/x-www-form-urlencoded` encodes: all but letters, digits and `*-._`.
const FORM_ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// `application/x-www-form-urlencoded` encoding of a Basic credential part (RFC 6749 2.3.1).
/// Client ids such as `fhirgate-prod.eu` go as written, as authorization servers that do not
/// decode the pair expect them; a space is `%20`, which form decoders read too.
pub(crate) fn form_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, FORM_ENCODED).to_string()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn still_valid(identity: &Identity) -> bool {
    identity.expires_at.is_none_or(|exp| exp > unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn read(body: &str) -> Result<Answer, AnswerError> {
        let mapping = ClaimMapping::default();
        let rules = AnswerRules {
            issuer: "https://issuer.example",
            audience: "https://gw.example/fhir",
            route_audiences: &[],
            mapping: &mapping,
            max_ttl: Duration::from_secs(60),
            inactive_ttl: Duration::from_secs(10),
        };
        rules.read(body.as_bytes(), &[7; 32], NOW)
    }

    fn active_ttl(body: &str) -> Option<Duration> {
        match read(body).unwrap() {
            Answer::Active { ttl, .. } => Some(ttl),
            Answer::Inactive { ttl } => {
                assert_eq!(ttl, Duration::from_secs(10));
                None
            }
        }
    }

    #[test]
    fn only_a_json_object_of_bounded_size_is_read() {
        assert_eq!(read("[]").unwrap_err(), AnswerError::NotAnObject);
        assert_eq!(read("{\"active\":").unwrap_err(), AnswerError::NotAnObject);
        let large = format!("{{\"active\":false,\"x\":\"{}\"}}", "a".repeat(MAX_ANSWER));
        assert_eq!(read(&large).unwrap_err(), AnswerError::TooLarge);
    }

    #[test]
    fn an_answer_is_active_only_for_this_issuer_and_audience() {
        assert_eq!(
            active_ttl(r#"{"active":true,"sub":"s"}"#),
            Some(Duration::from_secs(60))
        );
        assert_eq!(active_ttl(r#"{"active":"true"}"#), None);
        assert_eq!(active_ttl(r#"{"active":true,"iss":"https://other"}"#), None);
        assert_eq!(active_ttl(r#"{"active":true,"aud":"https://other"}"#), None);
        assert!(active_ttl(r#"{"active":true,"aud":["x","https://gw.example/fhir"]}"#).is_some());
        assert_eq!(active_ttl(r#"{"active":true,"aud":7}"#), None);
    }

    #[test]
    fn an_active_answer_is_reused_until_exp_at_most() {
        assert_eq!(
            active_ttl(r#"{"active":true,"exp":1800000020}"#),
            Some(Duration::from_secs(20))
        );
        assert_eq!(active_ttl(r#"{"active":true,"exp":1799999999}"#), None);
        assert_eq!(active_ttl(r#"{"active":true,"exp":-1e308}"#), None);
        // Further ahead than a Duration reaches: reused for max_ttl, not read as inactive.
        for exp in ["192222222222222200000000", "1e300"] {
            assert_eq!(
                active_ttl(&format!(r#"{{"active":true,"exp":{exp}}}"#)),
                Some(Duration::from_secs(60)),
                "exp {exp}"
            );
        }
        let Answer::Active { identity, .. } =
            read(r#"{"active":true,"patient":"Patient/p1"}"#).unwrap()
        else {
            panic!("inactive")
        };
        assert_eq!(identity.caller.patient.as_deref(), Some("p1"));
        assert_eq!(identity.grant.patient.as_deref(), Some("p1"));
        assert!(identity.token_id.as_deref().unwrap().starts_with("sha256:"));
    }
}
