//! Form-encoded query strings: decoding for classification, encoding for narrowing.
//!
//! Decoding follows `application/x-www-form-urlencoded` (`+` is a space, `%XX` bytes, UTF-8).
//! Narrowing never rewrites what the client sent: [`narrowed_query`] keeps the original bytes and
//! appends the extra pairs, percent-encoded.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};

/// Characters left unencoded when fhirgate appends a parameter (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A query or form body that is not valid form encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter {0:?} is not valid UTF-8 after percent-decoding")]
pub struct QueryError(pub String);

/// Decodes `a=b&c=d` into name/value pairs; pieces without `=` get an empty value, empty pieces
/// are skipped.
pub fn parse_pairs(raw: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut out = Vec::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        out.push((decode(name)?, decode(value)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let spaced = s.replace('+', " ");
    percent_decode(spaced.as_bytes())
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueryError(s.chars().take(64).collect()))
}

/// Percent-encodes one name or value for a query string.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Returns `original` byte for byte with `add` appended as `&name=value` pairs (encoded).
///
/// Used for GET query strings and equally for `POST _search` form bodies.
pub fn narrowed_query(original: Option<&str>, add: &[(String, String)]) -> String {
    let mut out = original.unwrap_or("").to_owned();
    for (name, value) in add {
        if !out.is_empty() && !out.ends_with('&') {
            out.push('&');
        }
        out.push_str(&encode(name));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_and_plus() {
        let p = parse_pairs("Observation%3Asubject=Patient%2F1&code=a+b&&flag").unwrap();
        assert_eq!(p[0], ("Observation:subject".into(), "Patient/1".into()));
        assert_eq!(p[1], ("code".into(), "a b".into()));
        assert_eq!(p[2], ("flag".into(), String::new()));
        assert!(parse_pairs("a=%FF").is_err());
    }

    #[test]
    fn narrowing_keeps_original_bytes() {
        let add = vec![("subject".to_owned(), "Patient/1".to_owned())];
        assert_eq!(
            narrowed_query(Some("code=a%7Cb&x=+"), &add),
            "code=a%7Cb&x=+&subject=Patient%2F1"
        );
        assert_eq!(narrowed_query(None, &add), "subject=Patient%2F1");
        assert_eq!(
            narrowed_query(Some("a=1&"), &add),
            "a=1&subject=Patient%2F1"
        );
        assert_eq!(narrowed_query(Some("a=1"), &[]), "a=1");
    }
}
