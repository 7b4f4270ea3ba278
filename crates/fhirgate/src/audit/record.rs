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

impl AuditRecord {
    /// The record as one JSON line (without its newline), byte for byte what its `Serialize`
    /// makes of it, written directly: a record is written for every request, and its strings
    /// rarely need escaping, which one check per string finds faster than the serialiser's
    /// escaping loop. Strings that do need it, and numbers, go through serde_json.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = Line(Vec::with_capacity(1024));
        line.text("record_id", &self.record_id);
        line.text("instance", &self.instance);
        line.text("time", &self.time);
        line.text("started", &self.started);
        line.text("request_id", &self.request_id);
        line.text_if_some("route", self.route.as_deref());
        line.text_or_null("client_id", self.client_id.as_deref());
        line.text_or_null("issuer", self.issuer.as_deref());
        line.text_or_null("subject", self.subject.as_deref());
        line.text_or_null("fhir_user", self.fhir_user.as_deref());
        line.text_or_null("patient", self.patient.as_deref());
        line.text_if_some("encounter", self.encounter.as_deref());
        line.text_if_some("fhir_context", self.fhir_context.as_deref());
        line.text_or_null("token_id", self.token_id.as_deref());
        line.text_or_null("scopes", self.scopes.as_deref());
        line.text("source", &self.source);
        line.text("method", &self.method);
        line.text("path", &self.path);
        line.text_or_null("query", self.query.as_deref());
        line.text_or_null("interaction", self.interaction.as_deref());
        line.text_or_null("resource_type", self.resource_type.as_deref());
        line.text_or_null("resource_id", self.resource_id.as_deref());
        line.text_if_some("target_patient", self.target_patient.as_deref());
        line.text("decision", self.decision.as_str());
        line.text("reason", &self.reason);
        line.text_or_null("rule", self.rule.as_deref());
        line.value("status", &self.status);
        line.value("upstream_status", &self.upstream_status);
        if let Some(withheld) = &self.withheld {
            line.value("withheld", withheld);
        }
        line.value("latency_ms", &self.latency_ms);
        if let Some(upstream) = &self.upstream_latency_ms {
            line.value("upstream_latency_ms", upstream);
        }
        line.text_if_some("purpose_of_use", self.purpose_of_use.as_deref());
        if self.break_glass {
            line.value("break_glass", &true);
        }
        let Line(mut bytes) = line;
        bytes.push(b'}');
        bytes
    }
}

/// A JSON object being written member by member.
struct Line(Vec<u8>);

impl Line {
    /// `"name":`, after a comma unless it is the first member. Names are plain ASCII.
    fn name(&mut self, name: &str) {
        self.0.push(if self.0.is_empty() { b'{' } else { b',' });
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn text(&mut self, name: &str, text: &str) {
        self.name(name);
        // serde_json escapes `"`, `\` and control characters only; text without them is
        // written as it is. (A fold without early exit, so that the check runs on whole
        // vectors of bytes.)
        let plain = !text.bytes().fold(false, |escape, b| {
            escape | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.0.push(b'"');
            self.0.extend_from_slice(text.as_bytes());
            self.0.push(b'"');
        } else {
            serde_json::to_writer(&mut self.0, text).expect("strings serialise");
        }
    }

    fn text_or_null(&mut self, name: &str, text: Option<&str>) {
        match text {
            Some(text) => self.text(name, text),
            None => {
                self.name(name);
                self.0.extend_from_slice(b"null");
            }
        }
    }

    fn text_if_some(&mut self, name: &str, text: Option<&str>) {
        if let Some(text) = text {
            self.text(name, text);
        }
    }

    fn value(&mut self, name: &str, value: &impl Serialize) {
        self.name(name);
        serde_json::to_writer(&mut self.0, value).expect("numbers serialise");
    }
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
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-zA-Z0-9:/.\\-]{1,40}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}\u{e9}\u{2028}a]{0,12}",
        ]
    }

    prop_compose! {
        fn record()(
            ids in proptest::collection::vec(text(), 10),
            optional in proptest::collection::vec(proptest::option::of(text()), 17),
            status in any::<u16>(),
            upstream_status in proptest::option::of(any::<u16>()),
            withheld in proptest::option::of(any::<usize>()),
            latency_ms in prop_oneof![any::<f64>(), 0.0..1e4f64],
            upstream_latency_ms in proptest::option::of(0.0..1e4f64),
            decision in prop_oneof![
                Just(AuditDecision::Allow),
                Just(AuditDecision::Deny),
                Just(AuditDecision::Filter),
            ],
            break_glass in any::<bool>(),
        ) -> AuditRecord {
            let mut ids = ids.into_iter();
            let mut optional = optional.into_iter();
            let mut next = || ids.next().unwrap();
            let mut maybe = || optional.next().unwrap();
            AuditRecord {
                record_id: next(),
                instance: next(),
                time: next(),
                started: next(),
                request_id: next(),
                route: maybe().map(Cow::Owned),
                client_id: maybe(),
                issuer: maybe(),
                subject: maybe(),
                fhir_user: maybe(),
                patient: maybe(),
                encounter: maybe(),
                fhir_context: maybe(),
                token_id: maybe(),
                scopes: maybe(),
                source: next(),
                method: next(),
                path: next(),
                query: maybe(),
                interaction: maybe().map(Cow::Owned),
                resource_type: maybe(),
                resource_id: maybe(),
                target_patient: maybe(),
                decision,
                reason: next(),
                rule: maybe(),
                status,
                upstream_status,
                withheld,
                latency_ms,
                upstream_latency_ms,
                purpose_of_use: maybe(),
                break_glass,
            }
        }
    }

    proptest! {
        /// The line written directly is the line serde_json makes of the record.
        #[test]
        fn a_record_is_written_as_serde_json_writes_it(record in record()) {
            prop_assert_eq!(
                String::from_utf8(record.to_json_line()).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
    }

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
