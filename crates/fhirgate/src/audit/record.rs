//! The audit record: what the gateway decided about one request, and everything needed to
//! prove who reached which data, with which token, under which rule.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::proxy::{ACCESS_TOKEN, param_name};

/// What the gateway decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDecision {
    /// Forwarded, and the response passed on as the upstream sent it or checked whole.
    Allow,
    /// Refused.
    Deny,
    /// Forwarded, with entries withheld from the response.
    Filter,
}

impl AuditDecision {
    /// The decision's name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Filter => "filter",
        }
    }
}

/// One audit record. Never holds a token: `token_id` is the token's `jti`, or a digest of
/// an opaque token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique and time-ordered (UUID v7), so that a sink receiving a record twice can tell.
    pub record_id: String,
    /// The gateway process that decided (`instance_id`, or host name and process id).
    pub instance: String,
    /// When the record was made, as the response was ready (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// When the request arrived.
    pub started: String,
    pub request_id: String,
    /// The route the request took (`default` for the `upstream` section); absent when it
    /// matched none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Cow<'static, str>>,
    pub client_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub fhir_user: Option<String>,
    /// The patient in the token's launch context.
    pub patient: Option<String>,
    /// The encounter in context, and SMART 2.x `fhirContext` (compact JSON), when the token
    /// carries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_context: Option<String>,
    pub token_id: Option<String>,
    /// The scopes the token grants, as it states them.
    pub scopes: Option<String>,
    /// The client's address.
    pub source: String,
    pub method: String,
    pub path: String,
    /// The query, with any token value redacted (see [`redact_query`]).
    pub query: Option<String>,
    /// FHIR restful interaction (`read`, `search-type`, ...).
    pub interaction: Option<Cow<'static, str>>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// The patient whose record the request itself names (`Patient/X`, `Patient/X/...`,
    /// `?patient=X`, `?subject=Patient/X`), when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_patient: Option<String>,
    pub decision: AuditDecision,
    /// Why, as a stable code (`allowed`, `insufficient_scope`, `other_patient`, ...).
    pub reason: String,
    /// The grant rule that allowed the request, or the one that refused it.
    pub rule: Option<String>,
    /// The status the client was answered with.
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// Entries withheld from a checked response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<usize>,
    /// From arrival to the response being ready.
    pub latency_ms: f64,
    /// Time spent waiting for the upstream, when it was called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_latency_ms: Option<f64>,
    /// The purposes of use the request stated (v3-ActReason codes, space-separated), whether
    /// or not they changed the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<String>,
    /// The request was allowed only under break-the-glass. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// A query as recorded: the value of an `access_token` parameter (in any letter case), and
/// any value shaped like a JWT, replaced, so a token a client put in the URL never reaches the
/// audit trail.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if param_name(pair).eq_ignore_ascii_case(ACCESS_TOKEN) || looks_like_jwt(value) {
                format!("{name}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A path as recorded: a segment shaped like a JWT replaced.
pub fn redact_path(path: &str) -> String {
    if !path.split('/').any(looks_like_jwt) {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| {
            if looks_like_jwt(segment) {
                "[redacted]"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Three base64url parts, the first a JSON object (`eyJ`): a JWS or JWE compact token.
fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    text.len() >= 24
        && (parts.len() == 3 || parts.len() == 5)
        && parts[0].starts_with("eyJ")
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'%' | b'='))
        })
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLUEifQ.c2lnbmF0dXJlLWJ5dGVz";

    #[test]
    fn tokens_in_queries_and_paths_are_redacted_whatever_they_are_called() {
        assert_eq!(
            redact_query(&format!("ACCESS_TOKEN={JWT}&patient=pat-A")),
            "ACCESS_TOKEN=[redacted]&patient=pat-A"
        );
        assert_eq!(redact_query(&format!("token={JWT}")), "token=[redacted]");
        assert_eq!(
            redact_query("access_token=opaque123"),
            "access_token=[redacted]"
        );
        assert_eq!(
            redact_query("code=abc.def.ghi&_count=5"),
            "code=abc.def.ghi&_count=5"
        );
        assert_eq!(
            redact_path(&format!("/fhir/Observation/{JWT}")),
            "/fhir/Observation/[redacted]"
        );
        assert_eq!(redact_path("/fhir/Patient/pat-A"), "/fhir/Patient/pat-A");
    }
}
