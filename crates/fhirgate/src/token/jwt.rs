//! Compact JWS handling: shape checks, a first look at header and issuer, then the full
//! signature and claim check.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::TokenError;
use super::jwks::VerifyKey;
use crate::config::Issuer;

/// The three segments of a compact JWS.
pub struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
}

/// The header members the gateway acts on.
#[derive(Debug)]
pub struct JoseHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
    #[serde(default)]
    enc: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    #[serde(default)]
    iss: Option<String>,
}

/// Splits a compact JWS; encrypted (five-segment) and other shapes are refused.
pub fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    // At most six pieces are looked at, so a token of many dots costs no allocation per dot.
    let segments: Vec<&str> = token.splitn(6, '.').collect();
    match segments.as_slice() {
        [header, payload, signature] if !signature.is_empty() => Ok(Parts { header, payload }),
        [_, _, _] => Err(TokenError::Invalid("token is not signed".into())),
        [_, _, _, _, _] => Err(TokenError::Invalid(
            "encrypted tokens are not accepted".into(),
        )),
        _ => Err(TokenError::Invalid("token is not a JWT".into())),
    }
}

/// Reads the header without trusting it: only an asymmetric algorithm and an optional key id.
pub fn peek_header(parts: &Parts<'_>) -> Result<JoseHeader, TokenError> {
    let raw: RawHeader = decode_segment(parts.header, "header")?;
    if raw.crit.is_some() {
        return Err(TokenError::Invalid(
            "critical header parameters are not supported".into(),
        ));
    }
    if raw.enc.is_some() {
        return Err(TokenError::Invalid(
            "encrypted tokens are not accepted".into(),
        ));
    }
    let alg = match raw.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => {
            return Err(TokenError::Invalid(
                "signature algorithm not accepted".into(),
            ));
        }
    };
    Ok(JoseHeader {
        alg,
        kid: raw.kid,
        typ: raw.typ,
    })
}

/// The unverified `iss`, used only to choose which issuer's keys and rules apply.
pub fn peek_issuer(parts: &Parts<'_>) -> Result<String, TokenError> {
    let claims: IssuerOnly = decode_segment(parts.payload, "claims")?;
    claims
        .iss
        .ok_or_else(|| TokenError::Invalid("token has no issuer".into()))
}

/// Every claim of the payload, unverified: for `fhirgate explain`, never for a decision.
pub fn peek_claims(
    parts: &Parts<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    decode_segment(parts.payload, "claims")
}

fn decode_segment<T: for<'de> Deserialize<'de>>(
    segment: &str,
    what: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Invalid(format!("token {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Invalid(format!("token {what} is not valid JSON")))
}

/// Verifies signature and registered claims with `key`, under `issuer`'s rules. The token
/// must name the issuer's `audience` or one of `route_audiences` (the routes' own).
pub fn verify(
    token: &str,
    header: &JoseHeader,
    key: &VerifyKey,
    issuer: &Issuer,
    route_audiences: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    if let Some(required) = &issuer.required_typ
        && !header
            .typ
            .as_deref()
            .is_some_and(|typ| same_media_type(typ, required))
    {
        return Err(TokenError::Invalid("token type not accepted".into()));
    }
    let allowed = issuer
        .algorithms
        .iter()
        .any(|alg| super::jwks::to_jose(*alg) == header.alg);
    if !allowed {
        return Err(TokenError::Invalid(
            "signature algorithm not accepted".into(),
        ));
    }
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&issuer.issuer]);
    let mut audiences = Vec::with_capacity(route_audiences.len() + 1);
    audiences.push(issuer.audience.as_str());
    audiences.extend(route_audiences.iter().map(String::as_str));
    validation.set_audience(&audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = issuer.leeway.as_secs();
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        key.decoding_key(),
        &validation,
    )
    .map_err(|error| {
        use jsonwebtoken::errors::ErrorKind;
        match error.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidSignature => TokenError::Invalid("signature invalid".into()),
            ErrorKind::InvalidAudience => TokenError::Invalid("audience not accepted".into()),
            ErrorKind::InvalidIssuer => TokenError::Invalid("issuer not trusted".into()),
            ErrorKind::ImmatureSignature => TokenError::Invalid("token not yet valid".into()),
            ErrorKind::MissingRequiredClaim(claim) => {
                TokenError::Invalid(format!("token has no {claim}"))
            }
            _ => TokenError::Invalid("token invalid".into()),
        }
    })?;
    let claims = data.claims;
    let now = jsonwebtoken::get_current_timestamp() as f64;
    if let Some(iat) = claims.get("iat").and_then(serde_json::Value::as_f64)
        && iat > now + issuer.leeway.as_secs_f64()
    {
        return Err(TokenError::Invalid("token issued in the future".into()));
    }
    if let Some(longest) = issuer.max_token_lifetime {
        let exp = claims.get("exp").and_then(serde_json::Value::as_f64);
        let iat = claims.get("iat").and_then(serde_json::Value::as_f64);
        match (exp, iat) {
            (Some(exp), Some(iat)) if exp - iat <= longest.as_secs_f64() => {}
            (_, None) => return Err(TokenError::Invalid("token has no iat".into())),
            _ => return Err(TokenError::Invalid("token lifetime too long".into())),
        }
    }
    Ok(claims)
}

/// `at+jwt` and `application/at+jwt` are the same type (RFC 7515 section 4.1.9).
fn same_media_type(got: &str, want: &str) -> bool {
    let strip = |t: &str| {
        let lower = t.trim().to_ascii_lowercase();
        lower
            .strip_prefix("application/")
            .map(str::to_owned)
            .unwrap_or(lower)
    };
    strip(got) == strip(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn shapes() {
        assert!(split("a.b.c").is_ok());
        assert!(matches!(split("a.b."), Err(TokenError::Invalid(m)) if m.contains("not signed")));
        assert!(
            matches!(split("a.b.c.d.e"), Err(TokenError::Invalid(m)) if m.contains("encrypted"))
        );
        assert!(split("opaque-token").is_err());
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key() {
        for alg in ["none", "None", "HS256", "HS512", "ES512", ""] {
            let token = format!(
                "{}.{}.sig",
                b64(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64("{}")
            );
            let parts = split(&token).unwrap();
            assert!(peek_header(&parts).is_err(), "{alg}");
        }
    }

    #[test]
    fn crit_is_refused() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","crit":["exp"]}"#),
            b64("{}")
        );
        assert!(peek_header(&split(&token).unwrap()).is_err());
    }

    #[test]
    fn issuer_is_read_unverified() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://i"}"#)
        );
        assert_eq!(peek_issuer(&split(&token).unwrap()).unwrap(), "https://i");
    }
}
