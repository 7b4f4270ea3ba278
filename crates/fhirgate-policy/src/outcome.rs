//! FHIR R4 OperationOutcome rendering (JSON and XML) for gateway-originated errors.
//!
//! JSON is produced from serde structs whose field order is the R4 element order; XML is written
//! by hand in the fixed R4 element order (`text`, then `issue`: `severity`, `code`, `details`,
//! `diagnostics`, `expression`) with escaping. Both carry the same generated narrative (an XHTML
//! `div` with one paragraph per issue) and the same strings: text is made a valid FHIR string
//! when it is set, so the two formats never differ. XML is UTF-8 without an XML declaration
//! (UTF-8 is XML's default encoding). Nothing here reads requests.

use serde::Serialize;
use serde::ser::SerializeStruct as _;

/// The XHTML namespace of narrative `div`s.
const XHTML: &str = "http://www.w3.org/1999/xhtml";

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    issue: Vec<Issue>,
}

/// `OperationOutcome.text`: a narrative generated from the issues.
#[derive(Serialize)]
struct Narrative {
    status: &'static str,
    div: String,
}

impl Serialize for OperationOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut outcome = s.serialize_struct("OperationOutcome", 3)?;
        outcome.serialize_field("resourceType", "OperationOutcome")?;
        outcome.serialize_field(
            "text",
            &Narrative {
                status: "generated",
                div: self.narrative(),
            },
        )?;
        outcome.serialize_field("issue", &self.issue)?;
        outcome.end()
    }
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
            details: None,
            diagnostics: None,
            expression: Vec::new(),
        };
        Self { issue: Vec::new() }.push(issue).with_details(details)
    }

    /// Adds another issue (its strings made valid FHIR strings, empty ones left out).
    pub fn push(mut self, issue: Issue) -> Self {
        let Issue {
            severity,
            code,
            details,
            diagnostics,
            expression,
        } = issue;
        self.issue.push(Issue {
            severity,
            code,
            details: details.and_then(|d| fhir_string(d.text).map(|text| Details { text })),
            diagnostics: diagnostics.and_then(fhir_string),
            expression: expression.into_iter().filter_map(fhir_string).collect(),
        });
        self
    }

    /// Sets `details.text` on the last issue (left out when empty).
    fn with_details(mut self, details: impl Into<String>) -> Self {
        if let Some(last) = self.issue.last_mut() {
            last.details = fhir_string(details.into()).map(|text| Details { text });
        }
        self
    }

    /// Sets `diagnostics` on the last issue (left out when empty).
    pub fn with_diagnostics(mut self, diagnostics: impl Into<String>) -> Self {
        if let Some(last) = self.issue.last_mut() {
            last.diagnostics = fhir_string(diagnostics.into());
        }
        self
    }

    /// Adds a FHIRPath `expression` to the last issue (unless empty).
    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        if let Some(last) = self.issue.last_mut() {
            last.expression.extend(fhir_string(expression.into()));
        }
        self
    }

    /// The narrative `div`: one paragraph per issue, `severity (code): details`, escaped.
    pub fn narrative(&self) -> String {
        let mut div = format!(r#"<div xmlns="{XHTML}">"#);
        for issue in &self.issue {
            div.push_str("<p>");
            div.push_str(issue.severity.code());
            div.push_str(" (");
            div.push_str(issue.code.code());
            div.push(')');
            if let Some(details) = &issue.details {
                div.push_str(": ");
                escape_text(&mut div, &details.text);
            }
            div.push_str("</p>");
        }
        div.push_str("</div>");
        div
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
        out.push_str("<text>");
        push_value(&mut out, "status", "generated");
        out.push_str(&self.narrative());
        out.push_str("</text>");
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

/// An element whose primitive value is its `value` attribute.
fn push_value(out: &mut String, element: &str, value: &str) {
    out.push('<');
    out.push_str(element);
    out.push_str(" value=\"");
    escape(out, value);
    out.push_str("\"/>");
}

/// Escapes element content (the narrative's text): `&`, `<` and `>`; characters XML 1.0 does
/// not allow become U+FFFD.
fn escape_text(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if allowed(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// Escapes an XML attribute value. Tab, line feed and carriage return become character
/// references (attribute normalisation would turn them into spaces); characters XML 1.0 does
/// not allow become U+FFFD.
fn escape(out: &mut String, value: &str) {
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
            c if allowed(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// May `c` stand in a FHIR string (and so in XML 1.0 and JSON alike)? FHIR strings exclude
/// code points below U+0020 but tab, line feed and carriage return; XML 1.0 excludes U+FFFE
/// and U+FFFF; the C1 controls and DEL carry no text and are excluded too.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || !(c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}'))
}

/// `text` as a FHIR string: characters that may not stand in one replaced by U+FFFD; `None`
/// when nothing but whitespace is left (FHIR strings are never empty).
fn fhir_string(text: String) -> Option<String> {
    let text = if text.chars().all(allowed) {
        text
    } else {
        text.chars()
            .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
            .collect()
    };
    (!text.trim().is_empty()).then_some(text)
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
            r#"{"resourceType":"OperationOutcome","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>error (forbidden): Scope does not permit search on Observation</p></div>"},"issue":[{"severity":"error","code":"forbidden","details":{"text":"Scope does not permit search on Observation"},"diagnostics":"required: patient/Observation.s"}]}"#
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
            concat!(
                "<OperationOutcome xmlns=\"http://hl7.org/fhir\">",
                "<text><status value=\"generated\"/>",
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>error (not-supported): ",
                "a &amp; &lt;b&gt; \"c\"\u{FFFD}</p></div></text>",
                "<issue><severity value=\"error\"/><code value=\"not-supported\"/>",
                "<details><text value=\"a &amp; &lt;b&gt; &quot;c&quot;\u{FFFD}\"/></details>",
                "<diagnostics value=\"x&#xA;y\"/><expression value=\"Bundle.entry[1]\"/>",
                "</issue></OperationOutcome>"
            )
        );
    }

    #[test]
    fn strings_are_fhir_strings_in_both_formats() {
        let oo = OperationOutcome::error(
            IssueCode::Invalid,
            "a\u{0}b\u{1b}c\u{7f}d\u{85}e\u{fffe}f\u{ffff}g\th",
        )
        .with_diagnostics("\u{8}");
        let text = "a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}f\u{fffd}g\th";
        let issue = &oo.issues()[0];
        assert_eq!(issue.details.as_ref().unwrap().text, text);
        assert_eq!(issue.diagnostics.as_deref(), Some("\u{fffd}"));
        let json: serde_json::Value = serde_json::from_slice(&oo.to_json()).unwrap();
        assert_eq!(json["issue"][0]["details"]["text"], text);
        let xml = String::from_utf8(oo.to_xml()).unwrap();
        assert!(
            xml.contains("a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}f\u{fffd}g&#x9;h"),
            "{xml}"
        );
        assert!(!xml.chars().any(|c| !allowed(c)), "{xml:?}");
    }

    #[test]
    fn empty_strings_are_left_out() {
        let oo = OperationOutcome::error(IssueCode::Exception, "  ")
            .with_diagnostics("")
            .with_expression("");
        let json = String::from_utf8(oo.to_json()).unwrap();
        assert!(
            json.ends_with(r#""issue":[{"severity":"error","code":"exception"}]}"#),
            "{json}"
        );
        assert!(json.contains("<p>error (exception)</p>"), "{json}");
        let pushed = OperationOutcome::error(IssueCode::Invalid, "x").push(Issue {
            severity: Severity::Warning,
            code: IssueCode::Value,
            details: Some(Details {
                text: String::new(),
            }),
            diagnostics: Some("d\u{0}".into()),
            expression: vec![String::new(), "Patient.id".into()],
        });
        let second = &pushed.issues()[1];
        assert_eq!(second.details, None);
        assert_eq!(second.diagnostics.as_deref(), Some("d\u{fffd}"));
        assert_eq!(second.expression, ["Patient.id"]);
        assert!(
            pushed
                .narrative()
                .ends_with("<p>error (invalid): x</p><p>warning (value)</p></div>")
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
