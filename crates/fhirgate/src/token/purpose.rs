//! Purposes of use (v3-ActReason codes such as `TREAT` or `BTG`) as a token claim or a
//! request header gives them, reduced to their codes.
//!
//! A claim may hold a space-separated string, an array of strings, a Coding object
//! (`{"system": ..., "code": ...}`) or an array of them; a header holds codes separated by
//! commas or spaces. A code written as `system|CODE`, `...#CODE` or a URL ending in `/CODE`
//! counts as `CODE`; the system is not checked. What is not a code token is dropped, and at most
//! [`MAX_PURPOSES`] codes are kept from one source, each once.

use serde_json::Value;

/// Most codes kept from one claim or header.
pub const MAX_PURPOSES: usize = 8;
/// Longest code kept.
const MAX_CODE_LENGTH: usize = 64;

/// The codes of a purpose-of-use claim's value, in order.
pub fn from_claim(value: &Value) -> Vec<String> {
    let mut codes = Vec::new();
    match value {
        Value::Array(items) => items.iter().for_each(|item| item_codes(item, &mut codes)),
        other => item_codes(other, &mut codes),
    }
    keep(codes)
}

/// The codes of a header's values, separated by commas or spaces, in order.
pub fn from_header<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let codes = values
        .into_iter()
        .flat_map(|value| value.split(|c: char| c == ',' || c.is_ascii_whitespace()))
        .filter_map(reduce)
        .collect();
    keep(codes)
}

/// One string (space-separated codes) or one Coding.
fn item_codes(item: &Value, codes: &mut Vec<String>) {
    match item {
        Value::String(text) => codes.extend(text.split_ascii_whitespace().filter_map(reduce)),
        Value::Object(coding) => {
            if let Some(code) = coding.get("code").and_then(Value::as_str)
                && is_code(code)
            {
                codes.push(code.to_owned());
            }
        }
        _ => {}
    }
}

/// A code as written (`CODE`, `system|CODE`, `...#CODE`, `https://.../CODE`,
/// `urn:...:CODE`), reduced to the code; `None` when what is left is no code token.
pub fn reduce(text: &str) -> Option<String> {
    let code = if let Some((_, code)) = text.rsplit_once('|') {
        code
    } else if let Some((_, code)) = text.rsplit_once('#') {
        code
    } else if text.contains("://") {
        text.rsplit('/').next().unwrap_or_default()
    } else if text.starts_with("urn:") {
        text.rsplit(':').next().unwrap_or_default()
    } else {
        text
    };
    is_code(code).then(|| code.to_owned())
}

/// A code token fhirgate keeps: 1 to 64 visible ASCII characters, none of them a separator
/// (`,`, `|`, `#`, `/`). FHIR codes have no whitespace; these rules also keep them safe in a
/// header, a log line and an audit record.
pub fn is_code(text: &str) -> bool {
    (1..=MAX_CODE_LENGTH).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'|' | b'#' | b'/'))
}

/// Each code once, in order, at most [`MAX_PURPOSES`].
fn keep(codes: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for code in codes {
        if kept.len() == MAX_PURPOSES {
            break;
        }
        if !kept.contains(&code) {
            kept.push(code);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_claim_shape_gives_its_codes() {
        let system = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
        for value in [
            json!("BTG"),
            json!("TREAT BTG"),
            json!(["TREAT", "BTG"]),
            json!({ "system": system, "code": "BTG" }),
            json!([{ "system": system, "code": "TREAT" }, { "code": "BTG" }]),
            json!([
                "urn:oid:2.16.840.1.113883.5.8#TREAT",
                format!("{system}|BTG")
            ]),
            json!([format!("{system}/BTG")]),
        ] {
            let codes = from_claim(&value);
            assert!(codes.contains(&"BTG".to_owned()), "{value}: {codes:?}");
            assert!(
                codes.iter().all(|c| c == "BTG" || c == "TREAT"),
                "{codes:?}"
            );
        }
        assert_eq!(from_claim(&json!("TREAT BTG")), ["TREAT", "BTG"]);
    }

    #[test]
    fn what_is_not_a_code_is_dropped() {
        for value in [
            json!(null),
            json!(7),
            json!(true),
            json!(""),
            json!({ "system": "x" }),
            json!({ "code": "B T G" }),
            json!({ "code": "a|BTG" }),
            json!([["BTG"]]),
            json!("x|"),
            json!("https://example.org/"),
            json!("BTG\u{e9}"),
            json!("a,b"),
        ] {
            assert!(from_claim(&value).is_empty(), "{value}");
        }
        let long = "A".repeat(65);
        assert!(from_claim(&json!(long)).is_empty());
        assert_eq!(from_claim(&json!("A".repeat(64))).len(), 1);
        assert_eq!(
            from_claim(&json!(["BTG", 5, {"code": "TREAT"}])),
            ["BTG", "TREAT"]
        );
    }

    #[test]
    fn codes_are_kept_once_and_at_most_eight() {
        assert_eq!(from_claim(&json!("BTG BTG ETREAT BTG")), ["BTG", "ETREAT"]);
        let many: Vec<String> = (0..20).map(|n| format!("C{n}")).collect();
        let kept = from_claim(&json!(many));
        assert_eq!(kept.len(), MAX_PURPOSES);
        assert_eq!(kept[0], "C0");
        assert_eq!(kept[7], "C7");
    }

    #[test]
    fn a_header_lists_codes_with_commas_or_spaces() {
        assert_eq!(from_header(["BTG"]), ["BTG"]);
        assert_eq!(from_header(["TREAT, BTG"]), ["TREAT", "BTG"]);
        assert_eq!(
            from_header(["TREAT", "ETREAT BTG,,"]),
            ["TREAT", "ETREAT", "BTG"]
        );
        assert_eq!(
            from_header(["http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG"]),
            ["BTG"]
        );
        assert!(from_header(["", " , "]).is_empty());
    }
}
