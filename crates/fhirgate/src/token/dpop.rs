//! Proof of possession for DPoP-bound access tokens (RFC 9449).
//!
//! A token whose `cnf.jkt` names a key is accepted only under the `DPoP` scheme, with one
//! `DPoP` header holding a proof: a JWT of type `dpop+jwt`, signed with an allowed asymmetric
//! algorithm by the public key in its own `jwk` header, whose RFC 7638 thumbprint is the
//! token's `jkt`. The proof names this request (`htm`, `htu`), is fresh (`iat` inside the
//! window), is new (`jti` not seen before inside the window) and is bound to this access token
//! (`ath`). Everything here runs after the access token itself has been verified.

use std::collections::HashSet;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::to_jose;
use crate::config::DpopSettings;

/// Largest proof accepted (a proof with an RSA-4096 key is under 2 KiB).
const MAX_PROOF: usize = 8 * 1024;
/// Most proof ids remembered at once; beyond this the oldest are forgotten first.
const REPLAY_CAPACITY: u64 = 1_000_000;

/// Why a DPoP proof is not accepted (RFC 9449 `invalid_dpop_proof`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("a DPoP-bound token needs exactly one DPoP proof header")]
    Missing,
    #[error("more than one DPoP proof header")]
    Repeated,
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("the DPoP proof's algorithm is not accepted")]
    Algorithm,
    #[error("the DPoP proof's signature does not verify")]
    Signature,
    #[error("the DPoP proof is signed by another key than the token is bound to")]
    KeyMismatch,
    #[error("the DPoP proof is for another method")]
    Method,
    #[error("the DPoP proof is for another URL")]
    Url,
    #[error("the DPoP proof is too old or from the future")]
    Stale,
    #[error("the DPoP proof has been used before")]
    Replayed,
    #[error("the DPoP proof is for another access token")]
    AccessToken,
}

/// The request a proof must name.
pub struct ProofTarget<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The request URL as the client addressed it, without query (`https://gw/fhir/Patient/1`).
    pub url: &'a str,
    /// The access token presented with the proof.
    pub access_token: &'a str,
    /// The key thumbprint the token is bound to.
    pub jkt: &'a str,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// Checks proofs and remembers their ids.
pub struct ProofVerifier {
    seen: moka::sync::Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for ProofVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofVerifier")
            .field("remembered", &self.seen.entry_count())
            .finish()
    }
}

#[derive(Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    alg: String,
    jwk: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<Value>,
    ath: Option<String>,
}

impl ProofVerifier {
    /// A verifier remembering proof ids for `window` (the longest proof age accepted plus the
    /// clock leeway, of every issuer).
    pub fn new(window: Duration) -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(REPLAY_CAPACITY)
                .time_to_live(window)
                .build(),
        }
    }

    /// Checks the `DPoP` header values of a request against `target` under `settings`.
    pub fn check(
        &self,
        proofs: &[&str],
        target: &ProofTarget<'_>,
        settings: &DpopSettings,
    ) -> Result<(), ProofError> {
        let proof = match proofs {
            [] => return Err(ProofError::Missing),
            [one] => *one,
            _ => return Err(ProofError::Repeated),
        };
        if proof.len() > MAX_PROOF {
            return Err(ProofError::Malformed("too long"));
        }
        let mut segments = proof.split('.');
        let (Some(header), Some(_), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(ProofError::Malformed("not a signed JWT"));
        };
        let header: ProofHeader = decode_json(header)?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(ProofError::Malformed("typ is not dpop+jwt"));
        }
        let alg = settings
            .algorithms
            .iter()
            .map(|a| to_jose(*a))
            .find(|a| jose_name(*a) == header.alg)
            .ok_or(ProofError::Algorithm)?;
        let jwk = header.jwk.ok_or(ProofError::Malformed("no jwk header"))?;
        let thumbprint = thumbprint(&jwk)?;
        let key: Jwk = serde_json::from_value(Value::Object(jwk))
            .map_err(|_| ProofError::Malformed("unusable jwk"))?;
        let key = DecodingKey::from_jwk(&key).map_err(|_| ProofError::Malformed("unusable jwk"))?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => ProofError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => ProofError::Algorithm,
                _ => ProofError::Malformed("claims"),
            })?
            .claims;
        if thumbprint != target.jkt {
            return Err(ProofError::KeyMismatch);
        }
        if claims.htm.as_deref() != Some(target.method) {
            return Err(ProofError::Method);
        }
        let htu = claims.htu.as_deref().ok_or(ProofError::Url)?;
        if !same_url(htu, target.url) {
            return Err(ProofError::Url);
        }
        let iat = claims
            .iat
            .as_ref()
            .and_then(Value::as_f64)
            .ok_or(ProofError::Malformed("no iat"))? as i64;
        let leeway = settings.proof_leeway.as_secs() as i64;
        let max_age = settings.proof_max_age.as_secs() as i64;
        if iat > target.now + leeway || iat < target.now - max_age - leeway {
            return Err(ProofError::Stale);
        }
        let expected_ath = URL_SAFE_NO_PAD.encode(digest::digest(
            &digest::SHA256,
            target.access_token.as_bytes(),
        ));
        if claims.ath.as_deref() != Some(expected_ath.as_str()) {
            return Err(ProofError::AccessToken);
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or(ProofError::Malformed("no jti"))?;
        // Checked last, so that only proofs which are otherwise good use up their id.
        let entry = self.seen.entry(replay_key(target.jkt, &jti)).or_insert(());
        if !entry.is_fresh() {
            return Err(ProofError::Replayed);
        }
        Ok(())
    }
}

/// The JOSE name of an algorithm.
fn jose_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "",
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| ProofError::Malformed("not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed("header"))
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url. Private or symmetric keys are
/// refused.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, ProofError> {
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(ProofError::Malformed("jwk holds private key material"));
    }
    let text = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or(ProofError::Malformed("jwk lacks a required member"))
    };
    // Members in lexicographic order, no whitespace (RFC 7638 section 3.2).
    let canonical = match text("kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            json_string(text("crv")?),
            json_string(text("x")?),
            json_string(text("y")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            json_string(text("e")?),
            json_string(text("n")?)
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            json_string(text("crv")?),
            json_string(text("x")?)
        ),
        _ => return Err(ProofError::Malformed("jwk key type not accepted")),
    };
    Ok(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// `htu` and the request URL name the same resource: scheme and host compared without case,
/// default ports ignored, paths exact, query and fragment of `htu` ignored (RFC 9449 4.3).
fn same_url(htu: &str, request: &str) -> bool {
    let strip = |url: &str| {
        let url = url.split(['?', '#']).next().unwrap_or(url);
        url.parse::<http::Uri>().ok()
    };
    let (Some(a), Some(b)) = (strip(htu), strip(request)) else {
        return false;
    };
    let origin = |u: &http::Uri| {
        let scheme = u.scheme_str()?.to_ascii_lowercase();
        let host = u.host()?.to_ascii_lowercase();
        let port = u.port_u16().unwrap_or(match scheme.as_str() {
            "https" => 443,
            _ => 80,
        });
        Some((scheme, host, port))
    };
    let path = |u: &http::Uri| match u.path() {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    origin(&a).is_some() && origin(&a) == origin(&b) && path(&a) == path(&b)
}

fn replay_key(jkt: &str, jti: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(jkt.as_bytes());
    ctx.update(b"\n");
    ctx.update(jti.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The RSA key of RFC 7638 section 3.1 and its published thumbprint.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn private_and_symmetric_keys_are_refused() {
        for jwk in [
            r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c"}"#,
            r#"{"kty":"oct","k":"c2VjcmV0"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"a"}"#,
        ] {
            let jwk: Map<String, Value> = serde_json::from_str(jwk).unwrap();
            assert!(thumbprint(&jwk).is_err(), "{jwk:?}");
        }
    }

    #[test]
    fn urls_compare_by_origin_and_path() {
        let base = "https://gw.example/fhir/Patient/1";
        assert!(same_url("https://GW.example:443/fhir/Patient/1", base));
        assert!(same_url("https://gw.example/fhir/Patient/1?x=1#f", base));
        assert!(!same_url("https://gw.example/fhir/Patient/2", base));
        assert!(!same_url("http://gw.example/fhir/Patient/1", base));
        assert!(!same_url("https://gw.example:8443/fhir/Patient/1", base));
        assert!(!same_url("/fhir/Patient/1", base));
    }
}
