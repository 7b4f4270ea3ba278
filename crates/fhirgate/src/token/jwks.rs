//! An issuer's signing keys: discovery, JWKS fetching, key selection and rotation.
//!
//! Keys are loaded at start-up and refreshed in the background. A token naming a key id the
//! set does not hold causes one fetch, shared by every request waiting on it, and then no
//! other fetch until the cool-down has passed, so a storm of made-up key ids costs one fetch
//! per cool-down. When a fetch fails, the keys of the last good fetch stay in use.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::TokenError;
use crate::config::{self, Issuer};
use crate::metrics::{KeyLookup, Metrics, Outcome};

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// One usable verification key.
pub struct VerifyKey {
    kid: Option<String>,
    /// The `alg` the JWKS pins the key to, if any.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The keys of one fetch.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    generation: u64,
}

struct FetchState {
    /// When a token naming an unknown key last caused a fetch; scheduled refreshes do not
    /// count, so a key rotated in just after one is still found at once.
    last_on_demand: Option<Instant>,
    jwks_uri: Option<String>,
}

/// Why a JWKS could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} returned an unusable document: {reason}")]
    Document { url: String, reason: String },
}

/// The signing keys of one issuer.
pub struct IssuerKeys {
    config: Issuer,
    http: reqwest::Client,
    keys: ArcSwap<KeySet>,
    fetch: Mutex<FetchState>,
    /// When the background task should fetch next, as the last fetch decided.
    next_refresh: std::sync::Mutex<Duration>,
    /// Woken by every fetch, so the background wait starts again from it.
    fetched: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.config.issuer)
            .field("keys", &self.keys.load().keys.len())
            .finish()
    }
}

impl IssuerKeys {
    pub fn new(config: Issuer, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        let jwks_uri = config.jwks_uri.as_ref().map(|u| u.as_str());
        metrics.declare_jwks_issuer(&config.issuer);
        Self {
            http,
            keys: ArcSwap::from_pointee(KeySet::default()),
            next_refresh: std::sync::Mutex::new(config.jwks_refresh_interval),
            fetched: tokio::sync::Notify::new(),
            metrics,
            config,
            fetch: Mutex::new(FetchState {
                last_on_demand: None,
                jwks_uri,
            }),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn config(&self) -> &Issuer {
        &self.config
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.load().keys.is_empty()
    }

    /// Returns when the background task should call [`IssuerKeys::refresh`]: the wait of
    /// [`IssuerKeys::refresh_interval`] after the latest fetch, whoever made it; every few
    /// seconds while no keys are loaded.
    pub async fn refresh_due(&self) {
        loop {
            let wait = if self.has_keys() {
                self.refresh_interval()
            } else {
                Duration::from_secs(5).min(self.refresh_interval())
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => return,
                () = self.fetched.notified() => {}
            }
        }
    }

    /// How long to wait after the latest fetch: the JWKS response's `Cache-Control: max-age`
    /// within the configured bounds, the configured interval without one, and the lower bound
    /// after a failed fetch.
    pub fn refresh_interval(&self) -> Duration {
        *self
            .next_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches the JWKS now, whatever the cool-down says.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    fn schedule(&self, max_age: Option<Duration>, fetched: bool) {
        let high = self.config.jwks_refresh_interval;
        let low = self.config.jwks_min_refresh_interval.min(high);
        let next = match (fetched, max_age) {
            (false, _) => low,
            (true, Some(age)) => age.clamp(low, high),
            (true, None) => high,
        };
        *self
            .next_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        self.fetched.notify_waiters();
    }

    /// The key for a token header, fetching the JWKS again if the key id is unknown.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, TokenError> {
        let (found, result) = self.look_up(kid, alg).await;
        self.metrics.key_lookup(&self.config.issuer, result);
        found
    }

    /// [`IssuerKeys::key_for`], with what the lookup came to.
    async fn look_up(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> (Result<Arc<VerifyKey>, TokenError>, KeyLookup) {
        let seen = self.keys.load_full();
        if let Some(key) = find(&seen, kid, alg) {
            return (Ok(key), KeyLookup::Known);
        }
        let mut state = self.fetch.lock().await;
        let current = self.keys.load_full();
        if current.generation != seen.generation {
            // Another request fetched while this one waited.
            if let Some(key) = find(&current, kid, alg) {
                return (Ok(key), KeyLookup::Fetched);
            }
        }
        let cooling = state
            .last_on_demand
            .is_some_and(|at| at.elapsed() < self.config.jwks_refetch_cooldown);
        if !cooling {
            state.last_on_demand = Some(Instant::now());
            if let Err(error) = self.fetch_locked(&mut state).await {
                tracing::warn!(issuer = %self.config.issuer, %error, "JWKS fetch failed");
            }
        }
        drop(state);
        let current = self.keys.load_full();
        if current.keys.is_empty() {
            let unavailable = TokenError::KeysUnavailable {
                issuer: self.config.issuer.clone(),
            };
            return (Err(unavailable), KeyLookup::Unavailable);
        }
        match find(&current, kid, alg) {
            Some(key) => (Ok(key), KeyLookup::Fetched),
            None => {
                let unknown = TokenError::Invalid("signing key not known".into());
                let result = if cooling {
                    KeyLookup::CoolingDown
                } else {
                    KeyLookup::Unknown
                };
                (Err(unknown), result)
            }
        }
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<(), FetchError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let fetched = self.get(&jwks_uri).await.and_then(|(body, max_age)| {
            let keys = parse_jwks(&body, &self.config.algorithms).map_err(|reason| {
                FetchError::Document {
                    url: jwks_uri.clone(),
                    reason,
                }
            })?;
            Ok((keys, max_age))
        });
        let (keys, max_age) = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                self.schedule(None, false);
                return Err(error);
            }
        };
        self.schedule(max_age, true);
        let generation = self.keys.load().generation + 1;
        tracing::info!(
            issuer = %self.config.issuer,
            keys = keys.len(),
            generation,
            "signing keys loaded"
        );
        self.keys.store(Arc::new(KeySet { keys, generation }));
        Ok(())
    }

    async fn discover(&self) -> Result<String, FetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if doc.issuer.as_deref() != Some(self.config.issuer.as_str()) {
            return Err(FetchError::Document {
                url,
                reason: "discovery document names another issuer".into(),
            });
        }
        doc.jwks_uri.ok_or(FetchError::Document {
            url,
            reason: "no jwks_uri".into(),
        })
    }

    /// A document and the `max-age` its `Cache-Control` header gives, if any.
    async fn get(&self, url: &str) -> Result<(bytes::Bytes, Option<Duration>), FetchError> {
        let fetched = self.fetch_document(url).await;
        let outcome = if fetched.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.metrics.jwks_fetch(&self.config.issuer, outcome);
        fetched
    }

    async fn fetch_document(
        &self,
        url: &str,
    ) -> Result<(bytes::Bytes, Option<Duration>), FetchError> {
        let http_error = |e: reqwest::Error| FetchError::Http {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let response = self.http.get(url).send().await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(FetchError::Document {
                url: url.to_owned(),
                reason: "document too large".into(),
            });
        }
        let body = response.bytes().await.map_err(http_error)?;
        if body.len() > MAX_DOCUMENT {
            return Err(FetchError::Document {
                url: url.to_owned(),
                reason: "document too large".into(),
            });
        }
        Ok((body, max_age))
    }
}

impl VerifyKey {
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    fn fits(&self, alg: Algorithm) -> bool {
        let kind_fits = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kind == KeyKind::Rsa,
            Algorithm::ES256 => self.kind == KeyKind::P256,
            Algorithm::ES384 => self.kind == KeyKind::P384,
            Algorithm::EdDSA => self.kind == KeyKind::Ed25519,
            _ => false,
        };
        kind_fits && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` count as zero.
fn max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") {
            age = arg
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// The key a token header asks for: by `kid`, or the only fitting key when there is no `kid`.
fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .find(|key| key.kid.as_deref() == Some(kid) && key.fits(alg))
            .cloned(),
        None => {
            let mut fitting = set.keys.iter().filter(|key| key.fits(alg));
            match (fitting.next(), fitting.next()) {
                (Some(only), None) => Some(only.clone()),
                _ => None,
            }
        }
    }
}

/// The configured algorithm as the JOSE library names it.
pub fn to_jose(alg: config::Algorithm) -> Algorithm {
    match alg {
        config::Algorithm::RS256 => Algorithm::RS256,
        config::Algorithm::RS384 => Algorithm::RS384,
        config::Algorithm::RS512 => Algorithm::RS512,
        config::Algorithm::PS256 => Algorithm::PS256,
        config::Algorithm::PS384 => Algorithm::PS384,
        config::Algorithm::PS512 => Algorithm::PS512,
        config::Algorithm::ES256 => Algorithm::ES256,
        config::Algorithm::ES384 => Algorithm::ES384,
        config::Algorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The verification keys of a JWKS document that may be used under `allowed` algorithms.
///
/// Skipped: keys for another use than signatures, keys whose operations exclude `verify`,
/// symmetric (`oct`) keys, keys pinned to an algorithm outside the allow-list, and key types
/// the gateway cannot verify with. A document with no usable key at all is an error.
fn parse_jwks(body: &[u8], allowed: &[config::Algorithm]) -> Result<Vec<Arc<VerifyKey>>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let allowed: Vec<Algorithm> = allowed.iter().map(|a| to_jose(*a)).collect();
    let keys: Vec<Arc<VerifyKey>> = doc
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| usable_key(&jwk, &allowed))
        .map(Arc::new)
        .collect();
    if keys.is_empty() {
        return Err("no usable signing key".into());
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<VerifyKey> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        _ => return None,
    };
    let alg = match common.key_algorithm {
        None => None,
        Some(pinned) => {
            let alg: Algorithm = serde_json::to_value(pinned)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())?;
            if !allowed.contains(&alg) {
                return None;
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: common.key_id.clone(),
        alg,
        kind,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn rsa(extra: &str) -> String {
        format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB"{extra}}}"#)
    }

    fn parse(keys: &[String]) -> Result<Vec<Arc<VerifyKey>>, String> {
        let doc = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
        parse_jwks(
            doc.as_bytes(),
            &[config::Algorithm::RS256, config::Algorithm::ES256],
        )
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn keeps_signing_keys_only() {
        let keys = parse(&[
            rsa(r#","kid":"a","use":"sig""#),
            rsa(r#","kid":"b","use":"enc""#),
            rsa(r#","kid":"c","key_ops":["encrypt"]"#),
            rsa(r#","kid":"d","alg":"RS512""#),
            r#"{"kty":"oct","k":"c2VjcmV0","kid":"e"}"#.to_owned(),
            rsa(r#","kid":"f""#),
        ])
        .unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["a", "f"]);
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        assert!(parse(&[r#"{"kty":"oct","k":"c2VjcmV0"}"#.to_owned()]).is_err());
        assert!(parse_jwks(b"not json", &[config::Algorithm::RS256]).is_err());
    }

    #[test]
    fn selection_by_kid_and_family() {
        let keys = parse(&[rsa(r#","kid":"a""#), rsa(r#","kid":"b","alg":"RS256""#)]).unwrap();
        let set = KeySet {
            keys,
            generation: 1,
        };
        assert!(find(&set, Some("a"), Algorithm::RS256).is_some());
        assert!(find(&set, Some("a"), Algorithm::ES256).is_none());
        assert!(find(&set, Some("b"), Algorithm::PS256).is_none());
        assert!(find(&set, Some("z"), Algorithm::RS256).is_none());
        // Two fitting keys and no kid: ambiguous, refused.
        assert!(find(&set, None, Algorithm::RS256).is_none());
    }
}
