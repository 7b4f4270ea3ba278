//! A borrowed view of an audit record: the fields a query filters on and an accounting
//! shows, read from a line without copying its strings.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, Visitor};

use crate::audit::AuditDecision;

/// A string field, borrowed from the line unless JSON escapes made it differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The fields of an [`crate::audit::AuditRecord`] that a query reads. Only `record_id`,
/// `time` and `decision` are required, so records written before a field existed still
/// match; the others are absent when the record lacks them or holds `null`.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary<'a> {
    #[serde(borrow)]
    pub record_id: Text<'a>,
    #[serde(borrow)]
    pub time: Text<'a>,
    pub decision: AuditDecision,
    #[serde(borrow, default)]
    pub client_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub subject: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub fhir_user: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub patient: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub target_patient: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub scopes: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub method: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub path: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub query: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub interaction: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub resource_type: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub resource_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub reason: Option<Text<'a>>,
    /// The route the request took; absent from records of requests no route took.
    #[serde(borrow, default)]
    pub route: Option<Text<'a>>,
    #[serde(default)]
    pub status: Option<u16>,
    /// Allowed only under break-the-glass (absent, so false, otherwise).
    #[serde(default)]
    pub break_glass: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let line = r#"{"record_id":"r1","time":"2026-12-04T03:45:12.345Z","decision":"deny","patient":"pat-\u0031","subject":null,"status":403,"extra":{"a":[1]}}"#;
        let summary: Summary<'_> = serde_json::from_str(line).unwrap();
        assert!(matches!(summary.record_id.0, Cow::Borrowed("r1")));
        assert_eq!(summary.patient.unwrap().as_str(), "pat-1");
        assert_eq!(summary.subject, None);
        assert_eq!(summary.client_id, None);
        assert_eq!(summary.status, Some(403));
        assert_eq!(summary.decision, AuditDecision::Deny);
    }

    #[test]
    fn a_record_without_its_identity_does_not_parse() {
        for line in [
            r#"{"time":"2026-12-04T03:45:12.345Z","decision":"deny"}"#,
            r#"{"record_id":"r1","decision":"deny"}"#,
            r#"{"record_id":"r1","time":"2026-12-04T03:45:12.345Z","decision":"maybe"}"#,
        ] {
            assert!(serde_json::from_str::<Summary<'_>>(line).is_err(), "{line}");
        }
    }
}
