//! The configuration's JSON Schema (`fhirgate schema`), made from the same types the file is
//! read into, with their doc comments as descriptions. Values the gateway reads from text of
//! its own syntax (durations, URLs, header names, SMART letters, networks) are described here
//! as the strings a file holds.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::edge::AllowedOrigin;
use super::{BasePath, Config, HttpUrl};

/// The JSON Schema of the configuration file (draft 2020-12).
pub fn config_schema() -> Value {
    let mut schema = schemars::schema_for!(Config);
    schema.insert("title".into(), Value::from("fhirgate configuration"));
    let mut schema = schema.to_value();
    durations_as_text(&mut schema);
    schema
}

/// Default durations are written as a file would hold them (`30s`), not as the seconds and
/// nanoseconds a `Duration` serialises to.
fn durations_as_text(value: &mut Value) {
    match value {
        Value::Object(members) => {
            if let Some(default) = members.get_mut("default")
                && let Some(duration) = as_duration(default)
            {
                *default = Value::from(humantime::format_duration(duration).to_string());
            }
            members.values_mut().for_each(durations_as_text);
        }
        Value::Array(items) => items.iter_mut().for_each(durations_as_text),
        _ => {}
    }
}

fn as_duration(value: &Value) -> Option<std::time::Duration> {
    let members = value.as_object()?;
    if members.len() != 2 {
        return None;
    }
    let secs = members.get("secs")?.as_u64()?;
    let nanos = u32::try_from(members.get("nanos")?.as_u64()?).ok()?;
    Some(std::time::Duration::new(secs, nanos))
}

/// Declares a string-valued schema for a type read from text.
macro_rules! text_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// A duration as text: `500ms`, `30s`, `5m`, `1h 30m`.
pub struct DurationText;
/// An HTTP header name.
pub struct HeaderNameText;
/// SMART v2 permission letters, in `cruds` order.
pub struct PermsText;
/// An IP address or network in CIDR notation.
pub struct NetworkText;

text_schema!(DurationText, "Duration", {
    "type": "string",
    "description": "A duration: a number and a unit (ms, s, m, h, d), several summed: `500ms`, `30s`, `1h 30m`.",
    "pattern": "^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$",
    "examples": ["30s", "5m"]
});
text_schema!(HeaderNameText, "HeaderName", {
    "type": "string",
    "description": "An HTTP header name.",
    "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
});
text_schema!(PermsText, "SmartPermissions", {
    "type": "string",
    "description": "SMART v2 permission letters, each at most once and in the order c, r, u, d, s.",
    "pattern": "^c?r?u?d?s?$",
    "minLength": 1
});
text_schema!(NetworkText, "Network", {
    "type": "string",
    "description": "An IP address (`192.0.2.7`) or network in CIDR notation (`10.0.0.0/8`).",
    "examples": ["10.0.0.0/8", "192.0.2.7"]
});
text_schema!(HttpUrl, "HttpUrl", {
    "type": "string",
    "format": "uri",
    "description": "An absolute http or https URL without query or fragment.",
    "pattern": "^[hH][tT][tT][pP][sS]?://[^?#]+$"
});
text_schema!(BasePath, "BasePath", {
    "type": "string",
    "description": "A path that starts with `/` (the empty path for the root), without a trailing `/`.",
    "pattern": "^(/[^?#]*[^/?#])?$"
});
text_schema!(AllowedOrigin, "Origin", {
    "type": "string",
    "description": "`*`, or an origin as browsers send it: `scheme://host[:port]` (http or https, no path).",
    "pattern": "^(\\*|[hH][tT][tT][pP][sS]?://[^/?#]+)$"
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of the object schema at `pointer` (a JSON pointer into the schema).
    fn properties<'a>(schema: &'a Value, pointer: &str) -> Vec<&'a str> {
        let mut keys: Vec<&str> = schema
            .pointer(pointer)
            .and_then(Value::as_object)
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn the_schema_names_every_top_level_key_and_requires_the_required_ones() {
        let schema = config_schema();
        let top = properties(&schema, "/properties");
        for key in [
            "version",
            "listen",
            "admin_listen",
            "upstream",
            "routes",
            "issuers",
            "audit",
            "tls",
        ] {
            assert!(top.contains(&key), "{key} in {top:?}");
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for key in ["listen", "issuers", "audit"] {
            assert!(required.contains(&key), "{key} in {required:?}");
        }
        // One of them is required, which the file's reader checks.
        assert!(!required.contains(&"upstream") && !required.contains(&"routes"));
        assert!(!required.contains(&"tls") && !required.contains(&"admin_listen"));
        assert_eq!(
            schema["properties"]["admin_listen"]["default"],
            "127.0.0.1:8081"
        );
        // Unknown keys are refused by the file's reader, and so by the schema.
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
    }

    #[test]
    fn durations_and_urls_are_described_as_the_text_a_file_holds() {
        let schema = config_schema();
        let text = schema.to_string();
        let defs = &schema["$defs"];
        assert_eq!(defs["Duration"]["type"], "string");
        assert_eq!(defs["HttpUrl"]["type"], "string");
        // No Rust shape leaks in: a std Duration would be an object of secs and nanos.
        assert!(!text.contains("\"nanos\""), "{text}");
        assert!(!text.contains("\"secs\""), "{text}");
        let upstream = &defs["Upstream"]["properties"];
        assert_eq!(upstream["connect_timeout"]["$ref"], "#/$defs/Duration");
        assert_eq!(upstream["connect_timeout"]["default"], "2s");
        assert_eq!(
            defs["Spool"]["properties"]["fsync_interval"]["default"],
            "100ms"
        );
        assert_eq!(upstream["url"]["$ref"], "#/$defs/HttpUrl");
        let route = &defs["Route"]["properties"];
        assert_eq!(route["path"]["$ref"], "#/$defs/BasePath");
        assert_eq!(
            defs["PassiveHealth"]["properties"]["cool_down"]["default"],
            "10s"
        );
    }
}
