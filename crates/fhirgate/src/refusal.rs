//! Every refusal the gateway makes, and the one place that turns it into a response.
//!
//! A [`Refusal`] knows its HTTP status, its OperationOutcome issue code, its RFC 6750
//! challenge and the short reason written to the audit trail. Bodies are FHIR R4
//! OperationOutcomes in the format the client negotiated ([`OutcomeFormat::negotiate`]):
//! XML when it asked for XML, JSON otherwise, and JSON for the 406 that says it asked for a
//! format fhirgate does not write.

use bytes::Bytes;
use fhirgate_policy::decision::Denial;
use fhirgate_policy::outcome::{IssueCode, OperationOutcome};
use fhirgate_policy::request::ClassifyError;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::token::{DpopChallenge, TokenError};

mod negotiate;

pub use negotiate::{NotAcceptable, OutcomeFormat, without_format_param};

/// The realm named in every Bearer challenge.
const REALM: &str = "fhirgate";

/// A request the gateway answers itself with an error.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Classify(#[from] ClassifyError),
    #[error("{}", .0.message)]
    Policy(Denial),
    #[error("{0}")]
    BadRequest(String),
    #[error("no FHIR API at this path")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {} s", .timeout.as_secs_f64())]
    BodyTimeout { timeout: std::time::Duration },
    /// `limits.max_upstream_requests` are at the FHIR server.
    #[error("the gateway has as many requests at the FHIR server as it allows; try again shortly")]
    UpstreamBusy,
    #[error("the FHIR server cannot be reached")]
    UpstreamUnavailable,
    /// The gateway has no valid access token of its own for the FHIR server, so the request
    /// is not sent.
    #[error("the gateway cannot authenticate to the FHIR server right now; try again later")]
    UpstreamCredentialUnavailable,
    #[error("the FHIR server did not answer in time")]
    UpstreamTimeout,
    /// Every server of the route is out of rotation: answered at once, nothing is sent.
    #[error("every server of this FHIR API is out of rotation")]
    UpstreamDown { retry_after: std::time::Duration },
    #[error("the FHIR server's response could not be checked: {0}")]
    UpstreamUnverifiable(String),
    #[error("the resource is outside what the access token allows")]
    ResponseWithheld,
    #[error("resource not found")]
    ResponseHidden,
    #[error("the conditional criteria match more resources than can be checked")]
    TooManyMatches,
    #[error("the rate-limit store is unavailable")]
    RateLimitUnavailable,
    #[error("the audit trail cannot be written; requests are refused until it can")]
    AuditUnavailable,
    #[error("rate limit {rule} exceeded")]
    Throttled {
        rule: String,
        retry_after: std::time::Duration,
    },
    #[error("cross-origin requests from this origin are not allowed")]
    CorsOriginNotAllowed,
    #[error("the authorization server's discovery document cannot be fetched; try again later")]
    DiscoveryUnavailable,
    /// No format the gateway writes satisfies `_format` or `Accept`.
    #[error("{0}")]
    NotAcceptable(#[from] NotAcceptable),
    /// XML asked for a response the gateway checks, which it checks in JSON only.
    #[error("the gateway checks this response and hands it on in FHIR JSON only")]
    JsonRequired,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Token(
                TokenError::Missing
                | TokenError::Invalid(_)
                | TokenError::Expired
                | TokenError::Dpop { .. },
            ) => StatusCode::UNAUTHORIZED,
            Self::Token(TokenError::Malformed(_)) => StatusCode::BAD_REQUEST,
            Self::Token(
                TokenError::KeysUnavailable { .. } | TokenError::IntrospectionUnavailable { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Classify(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Policy(denial) => {
                StatusCode::from_u16(denial.reason.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
            Self::ResponseWithheld | Self::CorsOriginNotAllowed => StatusCode::FORBIDDEN,
            Self::ResponseHidden => StatusCode::NOT_FOUND,
            Self::TooManyMatches => StatusCode::PRECONDITION_FAILED,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimitUnavailable
            | Self::AuditUnavailable
            | Self::DiscoveryUnavailable
            | Self::UpstreamCredentialUnavailable
            | Self::UpstreamDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable | Self::UpstreamUnverifiable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NotAcceptable(_) | Self::JsonRequired => StatusCode::NOT_ACCEPTABLE,
        }
    }

    pub fn issue_code(&self) -> IssueCode {
        match self {
            Self::Token(TokenError::Missing) => IssueCode::Login,
            Self::Token(TokenError::Invalid(_) | TokenError::Dpop { .. }) => IssueCode::Unknown,
            Self::Token(TokenError::Expired) => IssueCode::Expired,
            Self::Token(TokenError::Malformed(_)) => IssueCode::Invalid,
            Self::Token(
                TokenError::KeysUnavailable { .. } | TokenError::IntrospectionUnavailable { .. },
            ) => IssueCode::Transient,
            Self::Classify(_) | Self::BadRequest(_) => IssueCode::Invalid,
            Self::Policy(denial) => denial.reason.issue_code(),
            Self::ResponseWithheld | Self::CorsOriginNotAllowed => IssueCode::Forbidden,
            Self::ResponseHidden => IssueCode::NotFound,
            Self::TooManyMatches => IssueCode::Processing,
            Self::Throttled { .. } => IssueCode::Throttled,
            Self::RateLimitUnavailable
            | Self::AuditUnavailable
            | Self::DiscoveryUnavailable
            | Self::UpstreamCredentialUnavailable
            | Self::UpstreamDown { .. } => IssueCode::Transient,
            Self::NotFound => IssueCode::NotFound,
            Self::MethodNotAllowed => IssueCode::NotSupported,
            Self::BodyTooLarge { .. } => IssueCode::TooLong,
            Self::BodyTimeout { .. } => IssueCode::Timeout,
            Self::UpstreamBusy => IssueCode::Transient,
            Self::UpstreamUnavailable | Self::UpstreamUnverifiable(_) => IssueCode::Transient,
            Self::UpstreamTimeout => IssueCode::Timeout,
            Self::NotAcceptable(_) | Self::JsonRequired => IssueCode::NotSupported,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 section 3, RFC 9449 section 7.1), on 401
    /// and 403 only.
    pub fn challenge(&self) -> Option<String> {
        if let Self::Token(TokenError::Dpop {
            challenge,
            detail,
            algs,
        }) = self
        {
            let error = match challenge {
                DpopChallenge::InvalidProof => "invalid_dpop_proof",
                DpopChallenge::InvalidToken => "invalid_token",
            };
            return Some(format!(
                "DPoP algs=\"{algs}\", error=\"{error}\", error_description=\"{}\"",
                detail.replace(['"', '\\'], "'")
            ));
        }
        let error = match self {
            Self::Token(TokenError::Missing) => return Some(format!("Bearer realm=\"{REALM}\"")),
            Self::Token(TokenError::Invalid(_) | TokenError::Expired) => "invalid_token",
            // An empty or doubled credential holds no usable token: challenged too (RFC 6750
            // section 3), with the 400's error code.
            Self::Token(TokenError::Malformed(_)) => "invalid_request",
            Self::Policy(_) | Self::ResponseWithheld if self.status() == StatusCode::FORBIDDEN => {
                "insufficient_scope"
            }
            // Every other 401 and 403 still names the scheme (RFC 6750 section 3), without
            // an error code: the refusal is not about the token.
            _ if matches!(
                self.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) =>
            {
                return Some(format!("Bearer realm=\"{REALM}\""));
            }
            _ => return None,
        };
        Some(format!("Bearer realm=\"{REALM}\", error=\"{error}\""))
    }

    /// The short reason recorded in the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(TokenError::Missing) => "no_token",
            Self::Token(TokenError::Malformed(_)) => "invalid_request",
            Self::Token(TokenError::Invalid(_)) => "invalid_token",
            Self::Token(TokenError::Dpop {
                challenge: DpopChallenge::InvalidProof,
                ..
            }) => "invalid_dpop_proof",
            Self::Token(TokenError::Dpop {
                challenge: DpopChallenge::InvalidToken,
                ..
            }) => "dpop_binding",
            Self::Token(TokenError::Expired) => "token_expired",
            Self::Token(TokenError::KeysUnavailable { .. }) => "keys_unavailable",
            Self::Token(TokenError::IntrospectionUnavailable { .. }) => "introspection_unavailable",
            Self::Classify(_) | Self::BadRequest(_) => "bad_request",
            Self::Policy(denial) => denial.reason.label(),
            Self::ResponseWithheld | Self::ResponseHidden => "response_outside_grant",
            Self::TooManyMatches => "too_many_matches",
            Self::Throttled { .. } => "throttled",
            Self::RateLimitUnavailable => "rate_limit_store_unavailable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::NotFound => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::UpstreamBusy => "upstream_busy",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamCredentialUnavailable => "upstream_credential_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamDown { .. } => "upstream_down",
            Self::UpstreamUnverifiable(_) => "upstream_unverifiable",
            Self::CorsOriginNotAllowed => "cors_origin_not_allowed",
            Self::DiscoveryUnavailable => "discovery_unavailable",
            Self::NotAcceptable(_) => "not_acceptable",
            Self::JsonRequired => "json_required",
        }
    }

    /// The rule that refused, where a policy rule did.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Self::Policy(denial) => Some(denial.rule),
            _ => None,
        }
    }

    /// Text for the OperationOutcome: says what is wrong, never echoes a token or upstream detail.
    pub fn details(&self) -> String {
        match self {
            Self::Token(TokenError::Missing) => "An access token is required".into(),
            Self::Token(TokenError::Malformed(what)) => format!("Malformed credentials: {what}"),
            Self::Token(TokenError::Invalid(what)) => format!("Access token rejected: {what}"),
            Self::Token(TokenError::Dpop { detail, .. }) => {
                format!("Proof of possession rejected: {detail}")
            }
            Self::Token(TokenError::Expired) => "Access token expired".into(),
            Self::Token(TokenError::KeysUnavailable { .. }) => {
                "The token issuer's signing keys are unavailable; try again later".into()
            }
            Self::Token(TokenError::IntrospectionUnavailable { .. }) => {
                "The token issuer cannot confirm the access token right now; try again later".into()
            }
            Self::UpstreamUnverifiable(_) => {
                "The FHIR server's response could not be checked against the access token".into()
            }
            Self::UpstreamDown { retry_after } => format!(
                "The FHIR server is unavailable: every server of this FHIR API is out of \
                 rotation; retry after {} s",
                retry_seconds(*retry_after)
            ),
            Self::Throttled { rule, retry_after } => format!(
                "Rate limit '{rule}' exceeded; retry after {} s",
                retry_seconds(*retry_after)
            ),
            Self::NotAcceptable(_) => {
                "The gateway answers in FHIR R4 JSON (application/fhir+json) or XML \
                 (application/fhir+xml) only"
                    .into()
            }
            Self::JsonRequired => "The gateway checks this response against the access token \
                 and hands it on in FHIR JSON only; ask again with _format=json or \
                 Accept: application/fhir+json"
                .into(),
            other => other.to_string(),
        }
    }

    /// The OperationOutcome that explains the refusal.
    pub fn outcome(&self) -> OperationOutcome {
        let mut outcome = OperationOutcome::error(self.issue_code(), self.details());
        if let Self::Policy(denial) = self {
            for expression in &denial.expression {
                outcome = outcome.with_expression(expression.clone());
            }
        }
        if let Self::NotAcceptable(why) = self {
            outcome = outcome.with_diagnostics(why.to_string());
        }
        outcome
    }

    /// The response sent to the client, in `format` (JSON when the refusal is that no format
    /// fhirgate writes was acceptable).
    pub fn into_response(self, format: OutcomeFormat) -> Response<Body> {
        let format = match self {
            Self::NotAcceptable(_) => OutcomeFormat::Json,
            _ => format,
        };
        let outcome = self.outcome();
        let bytes = match format {
            OutcomeFormat::Json => outcome.to_json(),
            OutcomeFormat::Xml => outcome.to_xml(),
        };
        let mut response = Response::new(body::full(Bytes::from(bytes)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge()
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if matches!(
            self,
            Self::Token(
                TokenError::KeysUnavailable { .. } | TokenError::IntrospectionUnavailable { .. }
            )
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if matches!(
            self,
            Self::AuditUnavailable
                | Self::DiscoveryUnavailable
                | Self::UpstreamCredentialUnavailable
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if matches!(self, Self::RateLimitUnavailable | Self::UpstreamBusy) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::Throttled { retry_after, .. } | Self::UpstreamDown { retry_after } = &self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_seconds(*retry_after)),
            );
        }
        response
    }
}

/// The last check before a request goes upstream: the client accepts a format the gateway can
/// hand on. A response the gateway checks (`checked`) is read as JSON and only JSON goes on,
/// so XML cannot be had for it; an unchecked response passes in whatever format the upstream
/// answers.
pub fn forwardable(
    wanted: Result<OutcomeFormat, NotAcceptable>,
    checked: bool,
) -> Result<(), Refusal> {
    match wanted? {
        OutcomeFormat::Xml if checked => Err(Refusal::JsonRequired),
        _ => Ok(()),
    }
}

/// Whole seconds to wait, rounded up, at least one.
fn retry_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc6750() {
        let bare = Refusal::Token(TokenError::Missing).challenge().unwrap();
        assert_eq!(bare, "Bearer realm=\"fhirgate\"");
        let invalid = Refusal::Token(TokenError::Expired).challenge().unwrap();
        assert!(invalid.ends_with("error=\"invalid_token\""));
        assert!(Refusal::UpstreamTimeout.challenge().is_none());
        assert_eq!(
            Refusal::Token(TokenError::Malformed("empty bearer token"))
                .challenge()
                .unwrap(),
            "Bearer realm=\"fhirgate\", error=\"invalid_request\""
        );
        assert!(Refusal::ResponseHidden.challenge().is_none());
        assert_eq!(
            Refusal::ResponseWithheld.challenge().unwrap(),
            "Bearer realm=\"fhirgate\", error=\"insufficient_scope\""
        );
    }

    #[test]
    fn statuses_and_codes() {
        let cases = [
            (Refusal::Token(TokenError::Missing), 401, "login"),
            (Refusal::Token(TokenError::Expired), 401, "expired"),
            (
                Refusal::Token(TokenError::Invalid("x".into())),
                401,
                "unknown",
            ),
            (Refusal::UpstreamUnavailable, 502, "transient"),
            (Refusal::AuditUnavailable, 503, "transient"),
            (Refusal::UpstreamCredentialUnavailable, 503, "transient"),
            (Refusal::UpstreamTimeout, 504, "timeout"),
            (Refusal::BodyTooLarge { limit: 1 }, 413, "too-long"),
            (
                Refusal::BodyTimeout {
                    timeout: std::time::Duration::from_secs(1),
                },
                408,
                "timeout",
            ),
            (Refusal::UpstreamBusy, 503, "transient"),
            (Refusal::ResponseHidden, 404, "not-found"),
            (Refusal::TooManyMatches, 412, "processing"),
            (Refusal::CorsOriginNotAllowed, 403, "forbidden"),
            (Refusal::DiscoveryUnavailable, 503, "transient"),
            (
                Refusal::UpstreamDown {
                    retry_after: std::time::Duration::from_millis(1500),
                },
                503,
                "transient",
            ),
            (
                Refusal::NotAcceptable(NotAcceptable::Accept),
                406,
                "not-supported",
            ),
            (Refusal::JsonRequired, 406, "not-supported"),
        ];
        for (refusal, status, code) in cases {
            assert_eq!(refusal.status().as_u16(), status);
            assert_eq!(refusal.issue_code().code(), code);
        }
    }
}
