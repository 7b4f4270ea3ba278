//! The credentials of an explanation: a JWT decoded without verification, or a claims file,
//! mapped to an [`Identity`] exactly as the gateway maps verified claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::ExplainError;
use super::report::{IdentityReport, Problem, TokenReport};
use crate::config::{Config, Issuer};
use crate::refusal::Refusal;
use crate::token::{ClaimMapping, Identity, TokenError, jwt};

/// Where the claims come from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A compact JWS, decoded but not verified.
    Token(String),
    /// A JSON object of claims, as a token or an introspection answer would carry them.
    Claims { path: String, text: String },
}

/// The identity and what was found on the way.
pub struct Decoded {
    pub identity: Identity,
    pub report: TokenReport,
}

/// Decodes the credentials and checks what can be checked without keys.
/// `route_audience` is the audience of the route the request takes, when it has its own.
pub fn decode(
    credentials: &Credentials,
    config: &Config,
    route_audience: Option<&str>,
) -> Result<Decoded, ExplainError> {
    let mut problems = Vec::new();
    let (source, claims, algorithm, note) = match credentials {
        Credentials::Token(token) => {
            let token = token.trim();
            let token = token
                .strip_prefix("Bearer ")
                .or_else(|| token.strip_prefix("bearer "))
                .unwrap_or(token)
                .trim();
            if token.len() > config.limits.max_token_length {
                problems.push(TokenError::Invalid("token too long".into()));
            }
            let parts = jwt::split(token).map_err(|error| {
                ExplainError(format!(
                    "--token: {error}; an opaque token cannot be decoded, pass the issuer's \
                     introspection answer with --claims instead"
                ))
            })?;
            let algorithm = match jwt::peek_header(&parts) {
                Ok(header) => Some(format!("{:?}", header.alg)),
                Err(error) => {
                    problems.push(error);
                    None
                }
            };
            let claims = jwt::peek_claims(&parts)
                .map_err(|error| ExplainError(format!("--token: {error}")))?;
            let note = "decoded, NOT verified: the signature was not checked and the issuer \
                        was not asked; the gateway verifies both"
                .to_owned();
            ("token", claims, algorithm, note)
        }
        Credentials::Claims { path, text } => {
            let value: Value = serde_json::from_str(text)
                .map_err(|error| ExplainError(format!("{path}: not valid JSON: {error}")))?;
            let Value::Object(claims) = value else {
                return Err(ExplainError(format!(
                    "{path}: claims must be a JSON object"
                )));
            };
            let note = format!(
                "claims read from {path}: no token, so nothing was verified; the gateway \
                 accepts these claims only in a token it verifies"
            );
            ("claims", claims, None, note)
        }
    };
    let is_token = source == "token";

    let issuer_name = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
    let issuer = issuer_name
        .as_deref()
        .and_then(|name| config.issuers.iter().find(|i| i.issuer == name));
    match (&issuer_name, issuer) {
        (None, _) => problems.push(TokenError::Invalid("token has no issuer".into())),
        (Some(_), None) => problems.push(TokenError::Invalid("issuer not trusted".into())),
        (Some(_), Some(issuer)) => {
            let expected = route_audience.unwrap_or(&issuer.audience);
            check_claims(&claims, issuer, expected, is_token, &mut problems);
            if is_token && !issuer.jwt {
                problems.push(TokenError::Invalid("issuer does not sign JWTs".into()));
            }
            if let Some(alg) = &algorithm {
                let allowed = issuer.algorithms.iter().any(|a| format!("{a:?}") == *alg);
                if !allowed {
                    problems.push(TokenError::Invalid(
                        "signature algorithm not accepted".into(),
                    ));
                }
            }
        }
    }

    let default_mapping = ClaimMapping::default();
    let mapping = issuer.map_or(&default_mapping, |i| &i.claims);
    let identity = Identity::from_claims(issuer_name.clone().unwrap_or_default(), &claims, mapping);
    let patient_claim = mapping
        .patient
        .iter()
        .find_map(|name| claims.get(name))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    let report = TokenReport {
        source,
        verified: false,
        note,
        algorithm,
        issuer: issuer_name,
        issuer_configured: issuer.is_some(),
        audience: audiences(&claims),
        expected_audience: route_audience
            .map(str::to_owned)
            .or_else(|| issuer.map(|i| i.audience.clone())),
        route_audience: route_audience.is_some(),
        expires: time_claim(&claims, "exp"),
        not_before: time_claim(&claims, "nbf"),
        issued_at: time_claim(&claims, "iat"),
        problems: problems
            .into_iter()
            .map(|error| Problem {
                message: error.to_string(),
                answer: super::answer(&Refusal::Token(error)),
            })
            .collect(),
        identity: IdentityReport {
            subject: identity.caller.subject.clone(),
            client_id: identity.caller.client_id.clone(),
            fhir_user: identity.caller.fhir_user.clone(),
            patient: identity.caller.patient.clone(),
            encounter: identity.caller.encounter.clone(),
            fhir_context: identity.caller.fhir_context.clone(),
            scope: identity.caller.scope.clone(),
            token_id: identity.token_id.clone(),
            patient_claim_unusable: patient_claim.filter(|_| identity.caller.patient.is_none()),
            purposes_of_use: identity.caller.purposes_of_use.clone(),
        },
    };
    Ok(Decoded { identity, report })
}

/// The registered claims the gateway checks with the issuer's rules, `aud` against
/// `audience`. A token must carry `exp` and `aud`; a claims file is only checked on what it
/// holds.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    audience: &str,
    is_token: bool,
    problems: &mut Vec<TokenError>,
) {
    let now = now_seconds();
    let leeway = issuer.leeway.as_secs_f64();
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    match number("exp") {
        None if is_token => problems.push(TokenError::Invalid("token has no exp".into())),
        Some(exp) if exp < now - leeway => problems.push(TokenError::Expired),
        _ => {}
    }
    if number("nbf").is_some_and(|nbf| nbf > now + leeway) {
        problems.push(TokenError::Invalid("token not yet valid".into()));
    }
    if number("iat").is_some_and(|iat| iat > now + leeway) {
        problems.push(TokenError::Invalid("token issued in the future".into()));
    }
    let audiences = audiences(claims);
    if audiences.is_empty() {
        if is_token || claims.contains_key("aud") {
            problems.push(TokenError::Invalid("token has no aud".into()));
        }
    } else if !audiences.iter().any(|a| a == audience) {
        problems.push(TokenError::Invalid("audience not accepted".into()));
    }
    if let Some(longest) = issuer.max_token_lifetime
        && let (Some(exp), Some(iat)) = (number("exp"), number("iat"))
        && exp - iat > longest.as_secs_f64()
    {
        problems.push(TokenError::Invalid("token lifetime too long".into()));
    }
}

/// `aud` as a string or an array of strings.
fn audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    let seconds = claims.get(name)?.as_f64()?;
    if !(0.0..=253_402_300_799.0).contains(&seconds) {
        return Some(format!("{seconds} (out of range)"));
    }
    let at = UNIX_EPOCH + Duration::from_secs(seconds as u64);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
