//! `routes`: several FHIR APIs behind one gateway, each under a public base path (and
//! optionally a host) of its own, with its own upstream, audience and servers; and what every
//! upstream section says about its servers (addresses, balancing, health, retries).
//!
//! A configuration gives either the top-level `upstream` section (one route, named `default`,
//! as every configuration before routes did) or a `routes` list. Once checked, both come to
//! [`Config::routes`]: the `upstream` section is made into the one route it stands for.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{BasePath, Config, HttpUrl, Upstream, duration};

/// Most servers one upstream may list.
pub const MAX_SERVERS: usize = 64;

/// One FHIR API behind the gateway.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Names the route in metrics, audit records and logs: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Path under which clients reach this route's FHIR API, e.g. `/tenant-a/fhir`. The
    /// longest path that matches a request wins.
    pub path: BasePath,
    /// Only requests naming this host (`Host`, or HTTP/2's `:authority`; port and letter case
    /// ignored) take the route; any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// The audience (`aud`) tokens must name on this route; the `audience` of the token's
    /// issuer when absent. A route whose tenants must not share tokens gives each its own.
    #[serde(default)]
    pub audience: Option<String>,
    /// The route's public FHIR base URL as clients address it; made of the connection's
    /// scheme, the request's `Host` and `path` when absent (as the top-level `public_url`).
    #[serde(default)]
    pub public_url: Option<HttpUrl>,
    /// The FHIR server behind the route: the settings of the top-level `upstream` section,
    /// without `public_base_path` (the route's `path` is that).
    pub upstream: Upstream,
}

/// How requests are spread over an upstream's servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each server in turn.
    #[default]
    RoundRobin,
    /// The server with the fewest requests waiting for an answer.
    LeastOutstanding,
}

/// When servers are taken out of rotation and brought back.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// From the requests themselves: failures in a row take a server out.
    #[serde(default)]
    pub passive: PassiveHealth,
    /// Periodic checks of each server; none when absent.
    #[serde(default)]
    pub active: Option<ActiveHealth>,
}

/// Health from the requests a server fails.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Failures in a row (no connection, no answer in time, connection broken) that take a
    /// server out of rotation.
    #[serde(default = "default_passive_failures")]
    pub failures: u32,
    /// How long a server taken out stays out before requests try it again (without active
    /// checks; with them, the checks bring it back).
    #[serde(default = "default_cool_down", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub cool_down: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            failures: default_passive_failures(),
            cool_down: default_cool_down(),
        }
    }
}

/// Periodic checks: a `GET` of `path` under the FHIR base on each server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    /// Path under the FHIR base that is fetched, e.g. `metadata`; a 2xx answer is healthy.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// Time between two checks of a server.
    #[serde(default = "default_check_interval", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub interval: Duration,
    /// Time a check may take, its answer's body included.
    #[serde(default = "default_check_timeout", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub timeout: Duration,
    /// Healthy checks in a row that bring a server that is out back into rotation.
    #[serde(default = "default_healthy")]
    pub healthy: u32,
    /// Failed checks in a row that take a server out of rotation.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: u32,
}

/// Where one server of an upstream listens: `host:port`, or `host` for the port of the
/// upstream's `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// The address as written, which names the server in metrics and logs.
    pub text: String,
    pub host: String,
    pub port: Option<u16>,
}

impl ServerAddress {
    /// Parses `host[:port]` (a name, an IPv4 address, or an IPv6 address in brackets).
    pub fn parse(text: &str) -> Result<Self, String> {
        let problem = || {
            format!(
                "{text:?} is not a server address such as \"10.0.0.5:8080\" or \"fhir-1.internal\""
            )
        };
        if text.is_empty()
            || text.contains(['/', '?', '#', '@', '\\'])
            || text.contains(char::is_whitespace)
        {
            return Err(problem());
        }
        let authority: http::uri::Authority = text.parse().map_err(|_| problem())?;
        let host = authority.host().to_owned();
        if host.is_empty() {
            return Err(problem());
        }
        let port_written = text.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        let port = authority.port_u16();
        if port_written && port.is_none() {
            return Err(problem());
        }
        Ok(Self {
            text: text.to_owned(),
            host,
            port,
        })
    }

    /// `host:port`, with `default_port` where none is written.
    pub fn socket_text(&self, default_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(default_port))
    }
}

/// A `servers` list: each entry checked, and never empty.
pub(super) fn servers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ServerAddress>>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    if texts.is_empty() {
        return Err(serde::de::Error::custom(
            "name at least one server, or leave `servers` out to use the host and port of `url`",
        ));
    }
    if texts.len() > MAX_SERVERS {
        return Err(serde::de::Error::custom(format!(
            "at most {MAX_SERVERS} servers"
        )));
    }
    texts
        .iter()
        .map(|text| ServerAddress::parse(text).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Upstream {
    /// The servers that serve `url`: `servers`, or `url`'s own host and port.
    pub fn server_addresses(&self) -> Vec<ServerAddress> {
        if let Some(servers) = &self.servers {
            return servers.clone();
        }
        let authority = self
            .url
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let host = self.url.uri().host().map(str::to_owned).unwrap_or_default();
        vec![ServerAddress {
            text: authority,
            host,
            port: self.url.uri().port_u16(),
        }]
    }

    /// The port a server without one of its own listens on: `url`'s, or its scheme's.
    pub fn default_port(&self) -> u16 {
        let uri = self.url.uri();
        uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        })
    }
}

impl Config {
    /// The rules of `upstream` and `routes`: exactly one of them, route names, paths and
    /// hosts that tell the routes apart, and each upstream's servers and health.
    pub(super) fn validate_routes(&self) -> Result<(), (String, String)> {
        match (&self.upstream, self.routes.is_empty()) {
            (Some(_), false) => {
                return Err((
                    "routes".into(),
                    "give either `upstream` (one route) or `routes`, not both".into(),
                ));
            }
            (None, true) => {
                return Err((
                    "upstream".into(),
                    "is required: give `upstream` (one route) or `routes`".into(),
                ));
            }
            (Some(upstream), true) => {
                if upstream.public_base_path.is_none() {
                    return Err((
                        "upstream.public_base_path".into(),
                        "is required: the path under which clients reach the FHIR API, e.g. \"/fhir\""
                            .into(),
                    ));
                }
                return validate_upstream("upstream", upstream);
            }
            (None, false) => {}
        }
        if self.public_url.is_some() {
            return Err((
                "public_url".into(),
                "with `routes`, give each route its own `public_url`".into(),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let name_ok = !route.name.is_empty()
                && route
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err((
                    key("name"),
                    "must be letters, digits, '-', '_' and '.'".into(),
                ));
            }
            if route.name == "none" {
                return Err((
                    key("name"),
                    "\"none\" names requests that match no route in metrics; choose another name"
                        .into(),
                ));
            }
            if let Some(j) = self.routes[..i].iter().position(|r| r.name == route.name) {
                return Err((
                    key("name"),
                    format!("routes[{j}] is named {:?} too", route.name),
                ));
            }
            if let Some(host) = &route.host
                && !is_host_name(host)
            {
                return Err((
                    key("host"),
                    format!(
                        "{host:?} is not a host name such as \"a.fhir.example.org\" (no scheme, port or path)"
                    ),
                ));
            }
            if let Some(j) = self.routes[..i].iter().position(|other| {
                other.path == route.path && same_host(other.host.as_deref(), route.host.as_deref())
            }) {
                let path = match route.path.as_str() {
                    "" => "/",
                    path => path,
                };
                let host = match &route.host {
                    Some(host) => format!(" for host {host:?}"),
                    None => String::new(),
                };
                return Err((
                    key("path"),
                    format!(
                        "routes[{j}] ({:?}) has the same base path {path:?}{host}, so one of them could never be reached",
                        self.routes[j].name
                    ),
                ));
            }
            if route.audience.as_deref().is_some_and(str::is_empty) {
                return Err((key("audience"), "must not be empty".into()));
            }
            // A route audience that is also an issuer's `audience` is one that every route
            // without an audience of its own accepts: this route's tokens would pass there.
            if let Some(audience) = &route.audience
                && let Some(issuer) = self.issuers.iter().find(|i| &i.audience == audience)
                && let Some(j) = self.routes.iter().position(|r| r.audience.is_none())
            {
                return Err((
                    key("audience"),
                    format!(
                        "{audience:?} is also the audience of issuer {:?}, which routes[{j}] ({:?}) accepts for having no audience of its own, so this route's tokens would pass there; give this route an audience no issuer has, or leave it out",
                        issuer.issuer, self.routes[j].name
                    ),
                ));
            }
            if route.upstream.public_base_path.is_some() {
                return Err((
                    key("upstream.public_base_path"),
                    format!("a route's public base path is its `path` (routes[{i}].path)"),
                ));
            }
            validate_upstream(&key("upstream"), &route.upstream)?;
        }
        Ok(())
    }

    /// Makes the `upstream` section the one route it stands for, named `default`, with the
    /// top-level `public_url`.
    pub(super) fn normalize_routes(&mut self) {
        if let Some(upstream) = &self.upstream
            && self.routes.is_empty()
        {
            self.routes.push(Route {
                name: "default".into(),
                path: upstream
                    .public_base_path
                    .clone()
                    .unwrap_or(BasePath(String::new())),
                host: None,
                audience: None,
                public_url: self.public_url.clone(),
                upstream: upstream.clone(),
            });
        }
    }

    /// The route a request to `path` naming `host` takes: the longest matching base path,
    /// a route for its host before one for any host.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .filter(|route| {
                under_base_path(path, route.path.as_str())
                    && route
                        .host
                        .as_deref()
                        .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
            })
            .max_by_key(|route| (route.path.as_str().len(), route.host.is_some()))
    }
}

/// Is `path` the base path `base` or under it?
pub fn under_base_path(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The host of a `Host` value, without its port (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn same_host(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// A DNS name or an IP address (IPv6 in brackets), without port.
fn is_host_name(host: &str) -> bool {
    if host.starts_with('[') {
        return host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The rules of one upstream section, its keys under `at`.
fn validate_upstream(at: &str, upstream: &Upstream) -> Result<(), (String, String)> {
    upstream.validate_credential(at)?;
    let key = |k: &str| format!("{at}.{k}");
    if let Some(servers) = &upstream.servers {
        let default_port = upstream.default_port();
        for (i, server) in servers.iter().enumerate() {
            let socket = server.socket_text(default_port);
            if let Some(j) = servers[..i]
                .iter()
                .position(|s| s.socket_text(default_port).eq_ignore_ascii_case(&socket))
            {
                return Err((
                    key(&format!("servers[{i}]")),
                    format!("{socket} is servers[{j}] already"),
                ));
            }
        }
    }
    let passive = &upstream.health.passive;
    if passive.failures == 0 {
        return Err((key("health.passive.failures"), "must be at least 1".into()));
    }
    if passive.cool_down.is_zero() {
        return Err((
            key("health.passive.cool_down"),
            "must be longer than zero".into(),
        ));
    }
    if let Some(active) = &upstream.health.active {
        let path = active.path.trim_start_matches('/');
        let plain = path
            .split('/')
            .all(|segment| segment != ".." && segment != "." && !segment.contains(['?', '#', ' ']));
        if !plain || path.is_empty() {
            return Err((
                key("health.active.path"),
                "must be a plain path under the FHIR base, such as \"metadata\"".into(),
            ));
        }
        let problem = if active.interval.is_zero() {
            Some(("interval", "must be longer than zero"))
        } else if active.timeout.is_zero() {
            Some(("timeout", "must be longer than zero"))
        } else if active.healthy == 0 {
            Some(("healthy", "must be at least 1"))
        } else if active.unhealthy == 0 {
            Some(("unhealthy", "must be at least 1"))
        } else {
            None
        };
        if let Some((field, message)) = problem {
            return Err((key(&format!("health.active.{field}")), message.into()));
        }
    }
    if upstream.retries > 10 {
        return Err((key("retries"), "must be at most 10".into()));
    }
    Ok(())
}

pub(super) fn default_retries() -> u32 {
    1
}
fn default_passive_failures() -> u32 {
    3
}
fn default_cool_down() -> Duration {
    Duration::from_secs(10)
}
fn default_check_path() -> String {
    "metadata".to_owned()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EMBEDDED_DEFAULT;

    const HEAD: &str = r#"listen: "127.0.0.1:8080"
issuers:
  - issuer: "https://idp.example"
    audience: "https://gw.example/fhir"
audit:
  spool: { path: "spool" }
  sinks: { trail: { jsonl: { path: "audit.jsonl" } } }
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "f.yaml").map_err(|e| e.to_string())
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn an_upstream_section_is_the_default_route() {
        let config = Config::embedded_default();
        let route = &config.routes[0];
        assert_eq!(route.name, "default");
        assert_eq!(route.audience, None);
        assert_eq!(route.upstream.retries, 1);
        assert_eq!(route.upstream.balance, Balance::RoundRobin);
        assert!(!route.upstream.http2);
        assert_eq!(route.upstream.health.passive.failures, 3);
        assert!(route.upstream.health.active.is_none());
        let servers = route.upstream.server_addresses();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].text, "127.0.0.1:8091");
    }

    #[test]
    fn routes_are_read_with_their_servers_and_health() {
        let text = format!(
            r#"{HEAD}routes:
  - name: tenant-a
    path: "/a/fhir"
    audience: "https://gw.example/a/fhir"
    upstream:
      url: "http://fhir-a.internal:8080/fhir"
      servers: ["10.0.0.5:8080", "10.0.0.6", "[::1]:9000"]
      balance: least-outstanding
      retries: 2
      http2: true
      health:
        passive: {{ failures: 1, cool_down: "30s" }}
        active: {{ interval: "5s" }}
  - name: tenant-b
    path: "/b/fhir"
    host: "B.example.org"
    upstream:
      url: "https://fhir-b.internal/fhir"
"#
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.routes.len(), 2);
        let a = &config.routes[0].upstream;
        assert_eq!(a.balance, Balance::LeastOutstanding);
        assert_eq!(a.retries, 2);
        assert!(a.http2);
        let servers = a.server_addresses();
        assert_eq!(
            servers
                .iter()
                .map(|s| s.socket_text(a.default_port()))
                .collect::<Vec<_>>(),
            ["10.0.0.5:8080", "10.0.0.6:8080", "[::1]:9000"]
        );
        let active = a.health.active.as_ref().unwrap();
        assert_eq!(active.path, "metadata");
        assert_eq!(active.interval, Duration::from_secs(5));
        assert_eq!((active.healthy, active.unhealthy), (2, 3));
        assert_eq!(a.health.passive.cool_down, Duration::from_secs(30));
        let b = &config.routes[1];
        assert_eq!(b.upstream.server_addresses()[0].text, "fhir-b.internal");
        assert_eq!(b.upstream.default_port(), 443);

        assert_eq!(
            config
                .route_for(Some("b.example.org:443"), "/b/fhir/Patient")
                .map(|r| r.name.as_str()),
            Some("tenant-b")
        );
        assert!(config.route_for(Some("other"), "/b/fhir/Patient").is_none());
        assert!(config.route_for(None, "/a/fhirx").is_none());
        assert_eq!(
            config.route_for(None, "/a/fhir").map(|r| r.name.as_str()),
            Some("tenant-a")
        );
    }

    #[test]
    fn the_longest_path_and_then_a_host_match_win() {
        let text = format!(
            r#"{HEAD}routes:
  - {{ name: root, path: "/", upstream: {{ url: "http://r/fhir" }} }}
  - {{ name: fhir, path: "/fhir", upstream: {{ url: "http://f/fhir" }} }}
  - {{ name: fhir-x, path: "/fhir", host: "x.example", upstream: {{ url: "http://x/fhir" }} }}
  - {{ name: deep, path: "/fhir/r4", upstream: {{ url: "http://d/fhir" }} }}
"#
        );
        let config = parse(&text).unwrap();
        let name = |host: Option<&str>, path: &str| {
            config
                .route_for(host, path)
                .map(|r| r.name.clone())
                .unwrap()
        };
        assert_eq!(name(None, "/other"), "root");
        assert_eq!(name(None, "/fhir/Patient"), "fhir");
        assert_eq!(name(Some("X.example:8080"), "/fhir/Patient"), "fhir-x");
        assert_eq!(name(Some("x.example"), "/fhir/r4/Patient"), "deep");
        assert_eq!(name(None, "/fhir/r45"), "fhir");
    }

    #[test]
    fn route_mistakes_are_refused_with_their_line() {
        let both = format!(
            "{EMBEDDED_DEFAULT}routes:\n  - {{ name: a, path: \"/a\", upstream: {{ url: \"http://a/fhir\" }} }}\n"
        );
        let err = parse(&both).unwrap_err();
        let line = line_of(&both, "routes:");
        assert!(
            err.starts_with(&format!("f.yaml:{line}:")) && err.contains("not both"),
            "{err}"
        );

        let same = format!(
            r#"{HEAD}routes:
  - name: a
    path: "/fhir/"
    upstream: {{ url: "http://a/fhir" }}
  - name: b
    path: "/fhir"
    upstream: {{ url: "http://b/fhir" }}
"#
        );
        let err = parse(&same).unwrap_err();
        let line = same
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains("path:"))
            .unwrap()
            + 1;
        assert!(
            err.starts_with(&format!("f.yaml:{line}:")) && err.contains("routes[1].path"),
            "{err}"
        );
        assert!(err.contains("same base path \"/fhir\""), "{err}");

        let empty = format!(
            r#"{HEAD}routes:
  - name: a
    path: "/a"
    upstream:
      url: "http://a/fhir"
      servers: []
"#
        );
        let err = parse(&empty).unwrap_err();
        let line = line_of(&empty, "servers:");
        assert!(err.starts_with(&format!("f.yaml:{line}:")), "{err}");
        assert!(err.contains("at least one server"), "{err}");

        for (bad, named) in [
            ("name: \"a b\"\n    path: \"/a\"", "routes[0].name"),
            ("name: none\n    path: \"/a\"", "routes[0].name"),
            (
                "name: a\n    path: \"/a\"\n    host: \"http://x\"",
                "routes[0].host",
            ),
            (
                "name: a\n    path: \"/a\"\n    audience: \"\"",
                "routes[0].audience",
            ),
        ] {
            let text =
                format!("{HEAD}routes:\n  - {bad}\n    upstream: {{ url: \"http://a/fhir\" }}\n");
            let err = parse(&text).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
            assert!(
                err.starts_with("f.yaml:") && err.as_bytes()[7].is_ascii_digit(),
                "{err}"
            );
        }
        let neither = HEAD.to_owned();
        assert!(
            parse(&neither)
                .unwrap_err()
                .contains("upstream: is required")
        );
        let public_url = format!(
            "{HEAD}public_url: \"https://gw.example/fhir\"\nroutes:\n  - {{ name: a, path: \"/a\", upstream: {{ url: \"http://a/fhir\" }} }}\n"
        );
        assert!(parse(&public_url).unwrap_err().contains("public_url"));
        let base_path_in_route = format!(
            "{HEAD}routes:\n  - {{ name: a, path: \"/a\", upstream: {{ url: \"http://a/fhir\", public_base_path: \"/a\" }} }}\n"
        );
        assert!(
            parse(&base_path_in_route)
                .unwrap_err()
                .contains("routes[0].upstream.public_base_path")
        );
        let no_base_path = EMBEDDED_DEFAULT.replace("  public_base_path: \"/fhir\"\n", "");
        assert!(
            parse(&no_base_path)
                .unwrap_err()
                .contains("upstream.public_base_path: is required")
        );
    }

    #[test]
    fn server_lists_and_health_are_checked() {
        let with = |upstream: &str| {
            EMBEDDED_DEFAULT.replace(
                "  response_timeout: \"30s\"\n",
                &format!("  response_timeout: \"30s\"\n{upstream}"),
            )
        };
        let ok = parse(&with("  servers: [\"a:1\", \"b\"]\n")).unwrap();
        assert_eq!(ok.routes[0].upstream.server_addresses().len(), 2);
        for (bad, named) in [
            ("  servers: [\"a:1\", \"A:1\"]\n", "upstream.servers[1]"),
            (
                "  servers: [\"127.0.0.1:8091\", \"127.0.0.1\"]\n",
                "upstream.servers[1]",
            ),
            ("  servers: [\"http://a:1\"]\n", "not a server address"),
            ("  servers: [\"a:x\"]\n", "not a server address"),
            (
                "  health: { passive: { failures: 0 } }\n",
                "health.passive.failures",
            ),
            (
                "  health: { passive: { cool_down: \"0s\" } }\n",
                "cool_down",
            ),
            (
                "  health: { active: { path: \"../x\" } }\n",
                "health.active.path",
            ),
            (
                "  health: { active: { healthy: 0 } }\n",
                "health.active.healthy",
            ),
            (
                "  health: { active: { interval: \"0s\" } }\n",
                "health.active.interval",
            ),
            ("  balance: random\n", "balance"),
            ("  retries: 11\n", "upstream.retries"),
        ] {
            let text = with(bad);
            let err = parse(&text).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
            let line = line_of(&text, bad.trim().split(':').next().unwrap());
            assert!(
                err.starts_with(&format!("f.yaml:{line}:")),
                "{bad}: {err} (line {line})"
            );
        }
    }

    #[test]
    fn policy_base_urls_are_the_routes_own() {
        let text = format!(
            r#"{HEAD}routes:
  - name: a
    path: "/a/fhir"
    audience: "https://gw.example/a/fhir"
    upstream: {{ url: "http://a.internal/fhir" }}
  - name: b
    path: "/b/fhir"
    public_url: "https://b.example/fhir"
    upstream: {{ url: "http://b.internal/fhir" }}
"#
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.route_policy_options(&config.routes[0]).base_urls,
            ["https://gw.example/a/fhir", "http://a.internal/fhir"]
        );
        assert_eq!(
            config.route_policy_options(&config.routes[1]).base_urls,
            [
                "https://gw.example/fhir",
                "https://b.example/fhir",
                "http://b.internal/fhir"
            ]
        );
    }
}
