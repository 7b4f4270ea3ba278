//! FHIR R4 OperationOutcome rendering (JSON and XML) for gateway-originated errors.
//!
//! JSON is produced from serde structs whose field order is the R4 element order; XML is written
//! by hand in the fixed R4 element order with attribute escaping. Nothing here reads requests.

use serde::Serialize;

/// R4 IssueType codes used by the gateway (`http://hl7.org/fhir/issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// `invalid`
    Invalid,
    /// `structure`
    Structure,
    /// `required`
    Required,
    /// `value`
    Value,
    /// `invariant`
    Invariant,
    /// `security`
    Security,
    /// `login`
    Login,
    /// `unknown`
    Unknown,
    /// `expired`
    Expired,
    /// `forbidden`
    Forbidden,
    /// `suppressed`
    Suppressed,
    /// `processing`
    Processing,
    /// `not-supported`
    NotSupported,
    /// `duplicate`
    Duplicate,
    /// `not-found`
    NotFound,
    /// `too-long`
    TooLong,
    /// `too-costly`
    TooCostly,
    /// `business-rule`
    BusinessRule,
    /// `conflict`
    Conflict,
    /// `transient`
    Transient,
    /// `no-store`
    NoStore,
    /// `exception`
    Exception,
    /// `timeout`
    Timeout,
    /// `throttled`
    Throttled,
    /// `informational`
    Informational,
}

impl IssueCode {
    /// The FHIR code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Invariant => "invariant",
            Self::Security => "security",
            Self::Login => "login",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Forbidden => "forbidden",
            Self::Suppressed => "suppressed",
            Self::Processing => "processing",
            Self::NotSupported => "not-supported",
            Self::Duplicate => "duplicate",
            Self::NotFound => "not-found",
            Self::TooLong => "too-long",
            Self::TooCostly => "too-costly",
            Self::BusinessRule => "business-rule",
            Self::Conflict => "conflict",
            Self::Transient => "transient",
            Self::NoStore => "no-store",
            Self::Exception => "exception",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Informational => "informational",
        }
    }
}

impl Serialize for IssueCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// Issue severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `fatal`
    Fatal,
    /// `error`
    Error,
    /// `warning`
    Warning,
    /// `information`
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// `issue.details` (CodeableConcept with text only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details {
    /// Human-readable text.
    pub text: String,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Severity.
    pub severity: Severity,
    /// IssueType code.
    pub code: IssueCode,
    /// Human text (`details.text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    /// Technical detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// FHIRPath expressions of offending elements.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// An R4 OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationOutcome {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    issue: Vec<Issue>,
}

impl OperationOutcome {
    /// One issue of severity `error`.
    pub fn error(code: IssueCode, details: impl Into<String>) -> Self {
        Self::single(Severity::Error, code, details)
    }

    /// One issue with the given severity.
    pub fn single(severity: Severity, code: IssueCode, details: impl Into<String>) -> Self {
        let issue = Issue {
            severity,
            code,
            details: Some(Details {
                text: details.into(),
            }),
            diagnostics: None,
            expression: Vec::new(),
        };
        Self {
            resource_type: "OperationOutcome",
            issue: vec![issue],
        }
    }

    /// Adds another issue.
    pub fn push(mut self, issue: Issue) -> Self {
        self.issue.push(issue);
        self
    }

    /// Sets `diagnostics` on the last issue.
    pub fn with_diagnostics(mut self, diagnostics: impl Into<String>) -> Self {
        if let Some(last) = self.issue.last_mut() {
            last.diagnostics = Some(diagnostics.into());
        }
        self
    }

    /// Adds a FHIRPath `expression` to the last issue.
    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        if let Some(last) = self.issue.last_mut() {
            last.expression.push(expression.into());
        }
        self
    }

    /// The issues.
    pub fn issues(&self) -> &[Issue] {
        &self.issue
    }

    /// Renders `application/fhir+json`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Renders `application/fhir+xml`.
    pub fn to_xml(&self) -> Vec<u8> {
        let mut out = String::from(r#"<OperationOutcome xmlns="http://hl7.org/fhir">"#);
        for issue in &self.issue {
            out.push_str("<issue>");
            push_value(&mut out, "severity", issue.severity.code());
            push_value(&mut out, "code", issue.code.code());
            if let Some(details) = &issue.details {
                out.push_str("<details>");
                push_value(&mut out, "text", &details.text);
                out.push_str("</details>");
            }
            if let Some(d) = &issue.diagnostics {
                push_value(&mut out, "diagnostics", d);
            }
            for e in &issue.expression {
                push_value(&mut out, "expression", e);
            }
            out.push_str("</issue>");
        }
        out.push_str("</OperationOutcome>");
        out.into_bytes()
    }
}

fn push_value(out: &mut String, element: &str, value: &str) {
    out.push('<');
    out.push_str(element);
    out.push_str(" value=\"");
    escape_attr(out, value);
    out.push_str("\"/>");
}

/// Escapes an XML attribute value; control characters not allowed in XML 1.0 become U+FFFD.
fn escape_attr(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_exact() {
        let oo = OperationOutcome::error(
            IssueCode::Forbidden,
            "Scope does not permit search on Observation",
        )
        .with_diagnostics("required: patient/Observation.s");
        let json = String::from_utf8(oo.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden","details":{"text":"Scope does not permit search on Observation"},"diagnostics":"required: patient/Observation.s"}]}"#
        );
    }

    #[test]
    fn xml_is_exact_and_escaped() {
        let oo = OperationOutcome::error(IssueCode::NotSupported, "a & <b> \"c\"\u{1}")
            .with_diagnostics("x\ny")
            .with_expression("Bundle.entry[1]");
        let xml = String::from_utf8(oo.to_xml()).unwrap();
        assert_eq!(
            xml,
            "<OperationOutcome xmlns=\"http://hl7.org/fhir\"><issue><severity value=\"error\"/><code value=\"not-supported\"/><details><text value=\"a &amp; &lt;b&gt; &quot;c&quot;\u{FFFD}\"/></details><diagnostics value=\"x&#xA;y\"/><expression value=\"Bundle.entry[1]\"/></issue></OperationOutcome>"
        );
    }

    #[test]
    fn codes() {
        assert_eq!(IssueCode::TooLong.code(), "too-long");
        assert_eq!(IssueCode::NotSupported.code(), "not-supported");
        let warn = OperationOutcome::single(Severity::Warning, IssueCode::Suppressed, "x");
        assert!(
            String::from_utf8(warn.to_json())
                .unwrap()
                .contains(r#""severity":"warning","code":"suppressed""#)
        );
    }
}
