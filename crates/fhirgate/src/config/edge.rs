//! The sections that shape what the edge says about itself: `smart` (the
//! `.well-known/smart-configuration` document), `metadata` (the CapabilityStatement cache) and
//! `cors` (browser apps on other origins).

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Config, HttpUrl, duration};

/// SMART discovery: which issuer's OpenID / OAuth discovery document the
/// `.well-known/smart-configuration` document is made from, how long it is kept, and what an
/// operator adds or changes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Smart {
    /// The issuer (`issuers[].issuer`) that is the authorization server apps are sent to;
    /// the first issuer when absent.
    #[serde(default)]
    pub authorization_issuer: Option<String>,
    /// Where that issuer's discovery document is. When absent,
    /// `{issuer}/.well-known/openid-configuration`, then the RFC 8414
    /// `.well-known/oauth-authorization-server` location of the issuer.
    #[serde(default)]
    pub discovery_url: Option<HttpUrl>,
    /// How long a fetched discovery document (and the smart-configuration made from it) is
    /// used before it is fetched again; also the longest `Cache-Control: max-age` clients get.
    #[serde(default = "default_smart_ttl", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub cache_ttl: Duration,
    /// Members merged into the synthesised document last, as a JSON merge patch (RFC 7396):
    /// a value replaces the member, `null` removes it, a map merges into a map.
    #[serde(default)]
    pub configuration_overrides: Map<String, Value>,
}

impl Default for Smart {
    fn default() -> Self {
        Self {
            authorization_issuer: None,
            discovery_url: None,
            cache_ttl: default_smart_ttl(),
            configuration_overrides: Map::new(),
        }
    }
}

/// The CapabilityStatement served at `metadata`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// How long the upstream's JSON CapabilityStatement is kept; `0s` fetches it for every
    /// request.
    #[serde(default = "default_metadata_ttl", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub cache_ttl: Duration,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            cache_ttl: default_metadata_ttl(),
        }
    }
}

/// Cross-origin requests to the FHIR API from browser apps.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins (`scheme://host[:port]`) whose pages may call the API, or `["*"]` for any.
    pub allowed_origins: Vec<AllowedOrigin>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, client certificates); not
    /// with `*`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight answer (`Access-Control-Max-Age`).
    #[serde(default = "default_cors_max_age", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub max_age: Duration,
    /// Request headers a page may send (`Access-Control-Allow-Headers`).
    #[serde(default = "default_allow_headers", deserialize_with = "header_names")]
    #[schemars(with = "Vec<super::schema::HeaderNameText>")]
    pub allow_headers: Vec<HeaderName>,
    /// Response headers a page may read (`Access-Control-Expose-Headers`).
    #[serde(default = "default_expose_headers", deserialize_with = "header_names")]
    #[schemars(with = "Vec<super::schema::HeaderNameText>")]
    pub expose_headers: Vec<HeaderName>,
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigin {
    /// `*`: any origin.
    Any,
    /// An origin as browsers serialise it: lower-case scheme and host, the port only when it
    /// is not the scheme's default.
    Exact(String),
}

impl AllowedOrigin {
    /// Parses `*` or `scheme://host[:port]` (http or https; no path, query or user info).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let problem =
            || format!("{text:?} is not an origin such as \"https://app.example.org\" or \"*\"");
        let (scheme, rest) = text.split_once("://").ok_or_else(problem)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => "443",
            "http" => "80",
            _ => return Err(problem()),
        };
        let forbidden = |c: char| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace();
        if rest.is_empty() || rest.contains(forbidden) {
            return Err(problem());
        }
        let authority: http::uri::Authority = rest.parse().map_err(|_| problem())?;
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(problem());
        }
        // A port is written after the last ':' outside an IPv6 literal's brackets.
        let port_written = rest.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        let origin = match authority.port_u16() {
            None if port_written => return Err(problem()),
            Some(port) if port.to_string() != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        };
        Ok(Self::Exact(origin))
    }
}

impl<'de> Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A list of HTTP header names, each checked.
fn header_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<HeaderName>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
                serde::de::Error::custom(format!("{text:?} is not an HTTP header name"))
            })
        })
        .collect()
}

fn default_smart_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_metadata_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

/// Headers SMART apps send: the token and its DPoP proof, FHIR's conditional and content
/// headers, and the request id.
pub fn default_allow_headers() -> Vec<HeaderName> {
    [
        "authorization",
        "content-type",
        "accept",
        "if-match",
        "if-none-exist",
        "if-none-match",
        "if-modified-since",
        "prefer",
        "x-request-id",
        "dpop",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect()
}

/// Headers a browser app needs to read: where a created resource is, its version, the
/// request id, challenges and retry hints, rate-limit standing, and whether the request broke
/// the glass.
pub fn default_expose_headers() -> Vec<HeaderName> {
    [
        "location",
        "content-location",
        "etag",
        "last-modified",
        "x-request-id",
        "www-authenticate",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "x-fhirgate-break-glass",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect()
}

impl Config {
    /// The issuer whose discovery document the smart-configuration is made from:
    /// `smart.authorization_issuer`, else the first issuer.
    pub fn authorization_issuer(&self) -> &str {
        self.smart
            .as_ref()
            .and_then(|s| s.authorization_issuer.as_deref())
            .or_else(|| self.issuers.first().map(|i| i.issuer.as_str()))
            .unwrap_or_default()
    }

    /// Rules of the `smart`, `metadata` and `cors` sections that span several keys.
    pub(super) fn validate_edge(&self) -> Result<(), (String, String)> {
        if let Some(smart) = &self.smart {
            validate_smart(self, smart)?;
        }
        if let Some(cors) = &self.cors {
            validate_cors(cors)?;
        }
        Ok(())
    }
}

fn validate_smart(config: &Config, smart: &Smart) -> Result<(), (String, String)> {
    if let Some(named) = &smart.authorization_issuer
        && !config.issuers.iter().any(|i| &i.issuer == named)
    {
        return Err((
            "smart.authorization_issuer".into(),
            "must be the issuer of one of `issuers`".into(),
        ));
    }
    if smart.cache_ttl.is_zero() {
        return Err(("smart.cache_ttl".into(), "must be longer than zero".into()));
    }
    if smart.discovery_url.is_none() && HttpUrl::parse(config.authorization_issuer()).is_err() {
        return Err((
            "smart.discovery_url".into(),
            "is required: the authorization issuer is not an http(s) URL, so its discovery \
             document cannot be found from it"
                .into(),
        ));
    }
    Ok(())
}

fn validate_cors(cors: &Cors) -> Result<(), (String, String)> {
    let any = cors.allowed_origins.contains(&AllowedOrigin::Any);
    if cors.allowed_origins.is_empty() {
        return Err((
            "cors.allowed_origins".into(),
            "name at least one origin, or remove the cors section".into(),
        ));
    }
    if any && cors.allowed_origins.len() > 1 {
        return Err((
            "cors.allowed_origins".into(),
            "\"*\" allows every origin and must be the only entry".into(),
        ));
    }
    if any && cors.allow_credentials {
        return Err((
            "cors.allow_credentials".into(),
            "cannot be true with \"*\": browsers refuse credentials for any origin; name the \
             origins"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EMBEDDED_DEFAULT;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{EMBEDDED_DEFAULT}{extra}"), "f.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn origins_are_normalised_like_browsers_send_them() {
        let exact = |s: &str| AllowedOrigin::Exact(s.to_owned());
        assert_eq!(
            AllowedOrigin::parse("https://App.Example.org"),
            Ok(exact("https://app.example.org"))
        );
        assert_eq!(
            AllowedOrigin::parse("https://app.example.org:443"),
            Ok(exact("https://app.example.org"))
        );
        assert_eq!(
            AllowedOrigin::parse("http://localhost:3000"),
            Ok(exact("http://localhost:3000"))
        );
        assert_eq!(
            AllowedOrigin::parse("http://[::1]:8080"),
            Ok(exact("http://[::1]:8080"))
        );
        assert_eq!(AllowedOrigin::parse("*"), Ok(AllowedOrigin::Any));
        for bad in [
            "https://app.example.org/",
            "https://app.example.org/path",
            "app.example.org",
            "ftp://app.example.org",
            "https://user@app.example.org",
            "https://app.example.org?x=1",
            "https://",
            "https://app.example.org:",
            "https://app.example.org:99999",
            "null",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cors_section_is_strict_and_names_the_line() {
        let config = parse(
            "cors:\n  allowed_origins: [\"https://app.example.org\"]\n  max_age: \"10m\"\n  expose_headers: [\"Location\"]\n",
        )
        .unwrap();
        let cors = config.cors.unwrap();
        assert_eq!(cors.max_age, Duration::from_secs(600));
        assert_eq!(
            cors.expose_headers,
            vec![HeaderName::from_static("location")]
        );
        assert!(
            cors.allow_headers
                .contains(&HeaderName::from_static("dpop"))
        );

        let bad_origin =
            parse("cors:\n  allowed_origins: [\"https://app.example.org/x\"]\n").unwrap_err();
        let line = EMBEDDED_DEFAULT.lines().count() + 2;
        assert!(
            bad_origin.starts_with(&format!("f.yaml:{line}:")),
            "{bad_origin}"
        );
        for (bad, key) in [
            ("cors:\n  allowed_origins: []\n", "cors.allowed_origins"),
            (
                "cors:\n  allowed_origins: [\"*\", \"https://a.example\"]\n",
                "cors.allowed_origins",
            ),
            (
                "cors:\n  allowed_origins: [\"*\"]\n  allow_credentials: true\n",
                "cors.allow_credentials",
            ),
            ("cors:\n  allowed_origin: [\"*\"]\n", "allowed_origin"),
            (
                "cors:\n  allowed_origins: [\"*\"]\n  expose_headers: [\"bad header\"]\n",
                "bad header",
            ),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(key), "{bad}: {error}");
        }
        assert!(parse("cors:\n  allowed_origins: [\"*\"]\n").is_ok());
    }

    #[test]
    fn smart_section_names_a_configured_issuer() {
        let config = parse(
            "smart:\n  cache_ttl: \"1m\"\n  configuration_overrides:\n    capabilities: [\"launch-ehr\"]\n    user_access_brand_bundle: \"https://brands.example/b.json\"\nmetadata:\n  cache_ttl: \"0s\"\n",
        )
        .unwrap();
        let smart = config.smart.as_ref().unwrap();
        assert_eq!(smart.cache_ttl, Duration::from_secs(60));
        assert_eq!(
            smart.configuration_overrides["capabilities"],
            serde_json::json!(["launch-ehr"])
        );
        assert_eq!(config.metadata.cache_ttl, Duration::ZERO);
        assert_eq!(config.authorization_issuer(), "http://127.0.0.1:9000");

        for (bad, key) in [
            (
                "smart:\n  authorization_issuer: \"http://elsewhere\"\n",
                "smart.authorization_issuer",
            ),
            ("smart:\n  cache_ttl: \"0s\"\n", "smart.cache_ttl"),
            (
                "smart:\n  configuration_overrides: [1]\n",
                "configuration_overrides",
            ),
            ("smart:\n  discovery: \"x\"\n", "discovery"),
            ("metadata:\n  cache_ttl: \"soon\"\n", "cache_ttl"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(key), "{bad}: {error}");
        }
        let opaque_name = EMBEDDED_DEFAULT.replace(
            "issuer: \"http://127.0.0.1:9000\"",
            "issuer: \"urn:example:as\"\n    jwks_uri: \"http://127.0.0.1:9000/jwks\"",
        );
        let without = Config::parse(&format!("{opaque_name}smart: {{}}\n"), "f").unwrap_err();
        assert!(
            without.to_string().contains("smart.discovery_url"),
            "{without}"
        );
        let with = format!(
            "{opaque_name}smart:\n  discovery_url: \"http://127.0.0.1:9000/.well-known/openid-configuration\"\n"
        );
        assert!(Config::parse(&with, "f").is_ok());
    }
}
