//! The `break_glass` section: when an emergency purpose of use lets a user's request through
//! that the token's scopes do not cover (docs/BREAK-GLASS.md). Off when the section is
//! absent.
//!
//! Every value is checked while parsing, so a bad one is reported with its line.

use fhirgate_policy::break_glass::Emergency;
use fhirgate_policy::scope::{Perms, is_resource_type};
use http::HeaderName;
use serde::{Deserialize, Deserializer};

use super::default_true;
use crate::token::purpose;

/// Break-the-glass: which purposes of use break it, where they may come from, what the
/// emergency grants and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    /// Purpose-of-use codes that break the glass; v3-ActReason `BTG` by default.
    #[serde(default = "default_codes", deserialize_with = "codes")]
    pub codes: Vec<String>,
    /// A request header a client may state purposes of use in (codes separated by commas or
    /// spaces). Not read when absent: then only the token's claim counts.
    #[serde(default, deserialize_with = "header")]
    #[schemars(with = "Option<super::schema::HeaderNameText>")]
    pub header: Option<HeaderName>,
    /// SMART v2 letters (`cruds`, in that order) the emergency grants; `rs` by default.
    #[serde(default = "default_permissions", deserialize_with = "permissions")]
    #[schemars(with = "super::schema::PermsText")]
    pub permissions: Perms,
    /// Resource types the emergency grants the letters on; every type when empty.
    #[serde(default, deserialize_with = "resource_types")]
    pub resource_types: Vec<String>,
    /// The `client_id`s that may break the glass; any client when empty.
    #[serde(default, deserialize_with = "clients")]
    pub clients: Vec<String>,
    /// Only tokens that name their user (`fhirUser`) may break the glass.
    #[serde(default = "default_true")]
    pub require_fhir_user: bool,
}

impl Default for BreakGlass {
    fn default() -> Self {
        Self {
            codes: default_codes(),
            header: None,
            permissions: default_permissions(),
            resource_types: Vec::new(),
            clients: Vec::new(),
            require_fhir_user: true,
        }
    }
}

impl BreakGlass {
    /// What the emergency adds to a user's grant.
    pub fn emergency(&self) -> Emergency {
        Emergency {
            permissions: self.permissions,
            resource_types: self.resource_types.clone(),
        }
    }
}

/// Headers that carry credentials, frame the message or mean something else to the gateway
/// (negotiation, CORS, conditional writes, the client's address): never a purpose of use.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "dpop",
    "cookie",
    "cookie2",
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "x-request-id",
    "accept",
    "accept-encoding",
    "origin",
    "prefer",
    "if-none-exist",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-http-method-override",
    "x-method-override",
];

fn default_codes() -> Vec<String> {
    vec!["BTG".to_owned()]
}

fn default_permissions() -> Perms {
    Perms::R.union(Perms::S)
}

/// The section itself: present means on, so an empty `break_glass:` is refused rather than
/// read as absent.
pub(super) fn section<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BreakGlass>, D::Error> {
    match Option::<BreakGlass>::deserialize(deserializer)? {
        Some(section) => Ok(Some(section)),
        None => Err(serde::de::Error::custom(
            "break_glass is empty: give its keys, or `break_glass: {}` for the defaults, or \
             remove it to keep break-the-glass off",
        )),
    }
}

fn codes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let codes = Vec::<String>::deserialize(deserializer)?;
    if codes.is_empty() {
        return Err(serde::de::Error::custom(
            "name at least one purpose-of-use code, e.g. [BTG]",
        ));
    }
    if let Some(bad) = codes.iter().find(|code| !purpose::is_code(code)) {
        return Err(serde::de::Error::custom(format!(
            "{bad:?} is not a purpose-of-use code: 1 to 64 visible ASCII characters without \
             ',', '|', '#' or '/' (write the code alone, e.g. BTG)"
        )));
    }
    Ok(codes)
}

fn header<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<HeaderName>, D::Error> {
    let text = String::deserialize(deserializer)?;
    let name = HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an HTTP header name")))?;
    let reserved = RESERVED_HEADERS.contains(&name.as_str())
        || name.as_str().starts_with("x-fhirgate-")
        || name.as_str().starts_with("access-control-");
    if reserved {
        return Err(serde::de::Error::custom(format!(
            "{text:?} cannot carry a purpose of use: it has another meaning to the gateway"
        )));
    }
    Ok(Some(name))
}

fn permissions<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Perms, D::Error> {
    let text = String::deserialize(deserializer)?;
    match Perms::parse(&text) {
        Some((perms, true)) if !perms.is_empty() => Ok(perms),
        _ => Err(serde::de::Error::custom(format!(
            "{text:?} is not SMART v2 permissions: letters in the order c r u d s, e.g. \"rs\""
        ))),
    }
}

fn resource_types<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let types = Vec::<String>::deserialize(deserializer)?;
    if let Some(bad) = types.iter().find(|t| !is_resource_type(t)) {
        return Err(serde::de::Error::custom(format!(
            "{bad:?} is not an R4 resource type (leave the list empty for every type)"
        )));
    }
    Ok(types)
}

fn clients<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let clients = Vec::<String>::deserialize(deserializer)?;
    if clients.iter().any(|c| c.trim().is_empty()) {
        return Err(serde::de::Error::custom("a client_id must not be empty"));
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EMBEDDED_DEFAULT};

    fn parse(section: &str) -> Result<Config, String> {
        Config::parse(&format!("{EMBEDDED_DEFAULT}{section}"), "f.yaml").map_err(|e| e.to_string())
    }

    /// The line of the section's first key in a parsed document.
    fn first_line() -> usize {
        EMBEDDED_DEFAULT.lines().count() + 2
    }

    #[test]
    fn absent_is_off_and_empty_braces_are_the_defaults() {
        assert!(Config::embedded_default().break_glass.is_none());
        let config = parse("break_glass: {}\n").unwrap();
        let section = config.break_glass.unwrap();
        assert_eq!(section, BreakGlass::default());
        assert_eq!(section.codes, ["BTG"]);
        assert_eq!(section.permissions, Perms::R.union(Perms::S));
        assert!(section.header.is_none());
        assert!(section.require_fhir_user);
        let empty = parse("break_glass:\n").unwrap_err();
        assert!(empty.contains("break_glass is empty"), "{empty}");
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            "break_glass:\n  codes: [BTG, ETREAT]\n  header: \"X-Purpose-Of-Use\"\n  permissions: crs\n  resource_types: [Observation, Condition]\n  clients: [ward-app]\n  require_fhir_user: false\n",
        )
        .unwrap();
        let section = config.break_glass.unwrap();
        assert_eq!(section.codes, ["BTG", "ETREAT"]);
        assert_eq!(
            section.header,
            Some(HeaderName::from_static("x-purpose-of-use"))
        );
        assert_eq!(
            section.permissions,
            Perms::C.union(Perms::R).union(Perms::S)
        );
        assert_eq!(section.resource_types, ["Observation", "Condition"]);
        assert_eq!(section.clients, ["ward-app"]);
        assert!(!section.require_fhir_user);
        let emergency = section.emergency();
        assert_eq!(emergency.resource_types, ["Observation", "Condition"]);
        assert_eq!(emergency.permissions.to_string(), "crs");
    }

    #[test]
    fn bad_values_name_their_line_and_why() {
        let line = first_line();
        for (section, why) in [
            (
                "break_glass:\n  codes: []\n",
                "at least one purpose-of-use code",
            ),
            (
                "break_glass:\n  codes: [\"a|BTG\"]\n",
                "not a purpose-of-use code",
            ),
            (
                "break_glass:\n  codes: [\"B T G\"]\n",
                "not a purpose-of-use code",
            ),
            (
                "break_glass:\n  header: \"bad header\"\n",
                "not an HTTP header name",
            ),
            ("break_glass:\n  header: Authorization\n", "another meaning"),
            (
                "break_glass:\n  header: X-Fhirgate-Scope\n",
                "another meaning",
            ),
            (
                "break_glass:\n  permissions: sr\n",
                "not SMART v2 permissions",
            ),
            (
                "break_glass:\n  permissions: read\n",
                "not SMART v2 permissions",
            ),
            (
                "break_glass:\n  permissions: \"\"\n",
                "not SMART v2 permissions",
            ),
            (
                "break_glass:\n  permissions: rsx\n",
                "not SMART v2 permissions",
            ),
            (
                "break_glass:\n  resource_types: [observation]\n",
                "not an R4 resource type",
            ),
            (
                "break_glass:\n  resource_types: [\"*\"]\n",
                "not an R4 resource type",
            ),
            (
                "break_glass:\n  clients: [\"\"]\n",
                "client_id must not be empty",
            ),
            (
                "break_glass:\n  require_fhir_user: maybe\n",
                "require_fhir_user",
            ),
            ("break_glass:\n  code: [BTG]\n", "code"),
        ] {
            let error = parse(section).unwrap_err();
            assert!(error.contains(why), "{section}: {error}");
            assert!(
                error.starts_with(&format!("f.yaml:{line}:")),
                "{section}: {error}"
            );
        }
    }
}
