//! What a verified token says about the caller, normalised across identity providers.

use serde::Deserialize;

/// The claims the gateway reads from an access token.
#[derive(Debug, Deserialize)]
pub struct AccessClaims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub cid: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub scope: Option<ScopeClaim>,
    #[serde(default)]
    pub scp: Option<ScopeClaim>,
    #[serde(default)]
    pub patient: Option<String>,
    #[serde(default, rename = "fhirUser")]
    pub fhir_user: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub iat: Option<f64>,
}

/// Scopes as a space-separated string (RFC 9068) or an array (several identity providers).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

/// A verified caller: who, through which app, for which patient, with which scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub fhir_user: Option<String>,
    /// The patient in context, as a plain id.
    pub patient: Option<String>,
    /// The granted scopes, space-separated, as the token carried them.
    pub scope: Option<String>,
    pub jti: Option<String>,
}

impl Identity {
    /// Normalises verified claims.
    pub fn from_claims(issuer: String, claims: AccessClaims) -> Self {
        let scope = claims.scope.or(claims.scp).map(|claim| match claim {
            ScopeClaim::Text(text) => text,
            ScopeClaim::List(list) => list.join(" "),
        });
        Self {
            issuer,
            subject: claims.sub,
            client_id: claims.client_id.or(claims.cid).or(claims.azp),
            fhir_user: claims.fhir_user,
            patient: claims.patient.as_deref().and_then(patient_id),
            scope,
            jti: claims.jti,
        }
    }
}

/// The id of a patient claim given as `123`, `Patient/123` or `https://ehr/fhir/Patient/123`.
fn patient_id(value: &str) -> Option<String> {
    let id = match value.rsplit_once("Patient/") {
        Some((_, id)) => id,
        None => value,
    };
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> AccessClaims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn scope_string_or_array() {
        let a = Identity::from_claims("i".into(), claims(r#"{"scope":"a b"}"#));
        let b = Identity::from_claims("i".into(), claims(r#"{"scp":["a","b"]}"#));
        assert_eq!(a.scope.as_deref(), Some("a b"));
        assert_eq!(b.scope, a.scope);
    }

    #[test]
    fn patient_forms_are_normalised() {
        for form in ["123", "Patient/123", "https://ehr.test/fhir/Patient/123"] {
            let json = format!(r#"{{"patient":"{form}"}}"#);
            let id = Identity::from_claims("i".into(), claims(&json));
            assert_eq!(id.patient.as_deref(), Some("123"), "{form}");
        }
        let bad = Identity::from_claims("i".into(), claims(r#"{"patient":"a/b c"}"#));
        assert_eq!(bad.patient, None);
    }

    #[test]
    fn client_id_fallbacks() {
        let id = Identity::from_claims("i".into(), claims(r#"{"cid":"okta-app"}"#));
        assert_eq!(id.client_id.as_deref(), Some("okta-app"));
    }
}
