//! CORS at the edge: which origins' pages may call the FHIR API, preflights answered by the
//! gateway, and the `Access-Control-*` headers of every answer.
//!
//! Only the gateway speaks CORS: `Access-Control-*` headers from the upstream are removed
//! from every response, and the client's CORS request headers never go upstream. The public
//! endpoints (`metadata`, `.well-known/smart-configuration`) allow any origin; the rest of
//! the API allows the configured origins only.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::config::{self, AllowedOrigin};
use crate::refusal::Refusal;

/// Methods of the FHIR API a page may use.
const API_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, HEAD";
/// Methods of the public endpoints.
const PUBLIC_METHODS: &str = "GET, HEAD";
/// The prefix of every CORS response header.
const PREFIX: &str = "access-control-";

/// The CORS behaviour of the gateway, from the `cors` section.
#[derive(Debug)]
pub struct CorsPolicy {
    /// The allowed origins and credentials; no cross-origin API calls when absent.
    api: Option<ApiOrigins>,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
}

#[derive(Debug)]
struct ApiOrigins {
    /// Any origin (`*`), or only these.
    origins: AllowedOrigins,
    credentials: bool,
}

#[derive(Debug)]
enum AllowedOrigins {
    Any,
    Listed(Vec<String>),
}

/// What a response tells the browser about the request's origin.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// `Access-Control-Allow-Origin`: `*` or the request's origin; none when not allowed.
    allow_origin: Option<HeaderValue>,
    /// The answer depends on the `Origin` header (`Vary: Origin`).
    varies: bool,
    credentials: bool,
    /// For a preflight: the methods it allows.
    preflight: Option<&'static str>,
}

impl Allowance {
    /// Whether the request's origin may make it.
    pub fn allowed(&self) -> bool {
        self.allow_origin.is_some()
    }
}

impl CorsPolicy {
    /// The policy for the `cors` section; the defaults of its lists without one.
    pub fn new(config: Option<&config::Cors>) -> Self {
        let list = |names: &[HeaderName]| {
            let joined = names
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        let api = config.map(|cors| ApiOrigins {
            origins: if cors.allowed_origins.contains(&AllowedOrigin::Any) {
                AllowedOrigins::Any
            } else {
                AllowedOrigins::Listed(
                    cors.allowed_origins
                        .iter()
                        .filter_map(|origin| match origin {
                            AllowedOrigin::Exact(text) => Some(text.clone()),
                            AllowedOrigin::Any => None,
                        })
                        .collect(),
                )
            },
            credentials: cors.allow_credentials,
        });
        let (allow, expose, max_age) = match config {
            Some(cors) => (
                list(&cors.allow_headers),
                list(&cors.expose_headers),
                cors.max_age.as_secs(),
            ),
            None => (
                list(&config::default_allow_headers()),
                list(&config::default_expose_headers()),
                600,
            ),
        };
        Self {
            api,
            allow_headers: allow,
            expose_headers: expose,
            max_age: HeaderValue::from(max_age),
        }
    }

    /// Whether cross-origin calls to the FHIR API are configured at all.
    pub fn configured(&self) -> bool {
        self.api.is_some()
    }

    /// What the answer to a request for `path` will say about its origin; `base_path` is
    /// that of the route the request took, if any.
    pub fn allowance(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        base_path: Option<&str>,
    ) -> Allowance {
        let preflight = is_preflight(method, headers);
        if base_path.is_some_and(|base| is_public_path(path, base)) {
            return Allowance {
                allow_origin: Some(HeaderValue::from_static("*")),
                varies: false,
                credentials: false,
                preflight: preflight.then_some(PUBLIC_METHODS),
            };
        }
        let Some(api) = &self.api else {
            return Allowance::default();
        };
        let origin = headers.get(header::ORIGIN);
        let allow_origin = match (&api.origins, origin) {
            (AllowedOrigins::Any, Some(_)) => Some(HeaderValue::from_static("*")),
            (AllowedOrigins::Listed(listed), Some(origin)) => origin
                .to_str()
                .ok()
                .filter(|text| listed.iter().any(|o| o.eq_ignore_ascii_case(text)))
                .map(|_| origin.clone()),
            (_, None) => None,
        };
        Allowance {
            varies: matches!(api.origins, AllowedOrigins::Listed(_)),
            credentials: api.credentials && allow_origin.is_some(),
            allow_origin,
            preflight: preflight.then_some(API_METHODS),
        }
    }

    /// The preflight step: a preflight under the public base from an origin that may make
    /// the request is answered here with 204 (its headers come with [`CorsPolicy::apply`]);
    /// one from any other origin is refused with 403, without CORS headers.
    pub fn answer_preflight(
        &self,
        parts: &http::request::Parts,
        base_path: Option<&str>,
    ) -> Result<Response<Body>, Refusal> {
        relative_path(parts.uri.path(), base_path.ok_or(Refusal::NotFound)?)
            .ok_or(Refusal::NotFound)?;
        let allowance = self.allowance(&parts.method, parts.uri.path(), &parts.headers, base_path);
        if !allowance.allowed() {
            return Err(Refusal::CorsOriginNotAllowed);
        }
        let mut response = Response::new(body::full(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }

    /// Replaces any `Access-Control-*` headers of a response with the gateway's own for
    /// `allowance`; a preflight answered with success also gets the methods, headers and
    /// lifetime it allows.
    pub fn apply(&self, allowance: &Allowance, success: bool, headers: &mut HeaderMap) {
        strip(headers);
        if allowance.varies {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = &allowance.allow_origin else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if allowance.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        match allowance.preflight {
            Some(methods) if success => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(methods),
                );
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    self.allow_headers.clone(),
                );
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            }
            Some(_) => {}
            None => {
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    self.expose_headers.clone(),
                );
            }
        }
    }
}

/// An `OPTIONS` request with `Origin` and `Access-Control-Request-Method`: a browser asking
/// whether it may send the real request.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether `path` is one of the public endpoints under the public base path, whatever the
/// method.
pub fn is_public_path(path: &str, base_path: &str) -> bool {
    path.strip_prefix(base_path)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|relative| super::pipeline::is_public(&Method::GET, relative))
}

/// The path of a preflight relative to the public base, or `None` outside it.
pub fn relative_path<'a>(path: &'a str, base_path: &str) -> Option<&'a str> {
    match path.strip_prefix(base_path)? {
        "" | "/" => Some(""),
        rest => rest.strip_prefix('/'),
    }
}

/// Removes every `Access-Control-*` header.
fn strip(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The client's CORS request headers: never sent upstream.
pub const CLIENT_CORS_HEADERS: [&str; 3] = [
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        let cors = config::Cors {
            allowed_origins: origins
                .iter()
                .map(|o| AllowedOrigin::parse(o).unwrap())
                .collect(),
            allow_credentials: credentials,
            max_age: std::time::Duration::from_secs(600),
            allow_headers: config::default_allow_headers(),
            expose_headers: config::default_expose_headers(),
        };
        CorsPolicy::new(Some(&cors))
    }

    fn request(origin: Option<&str>, preflight: bool) -> (Method, HeaderMap) {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("GET"),
            );
            (Method::OPTIONS, headers)
        } else {
            (Method::GET, headers)
        }
    }

    fn answer(policy: &CorsPolicy, origin: Option<&str>, preflight: bool, path: &str) -> HeaderMap {
        let (method, headers) = request(origin, preflight);
        let allowance = policy.allowance(&method, path, &headers, Some("/fhir"));
        let mut out = HeaderMap::new();
        out.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://upstream-said.example"),
        );
        out.insert(header::VARY, HeaderValue::from_static("Accept"));
        policy.apply(&allowance, true, &mut out);
        out
    }

    #[test]
    fn listed_origins_are_named_and_others_get_nothing() {
        let policy = policy(&["https://app.example.org"], false);
        let allowed = answer(
            &policy,
            Some("https://app.example.org"),
            false,
            "/fhir/Patient",
        );
        assert_eq!(
            allowed["access-control-allow-origin"],
            "https://app.example.org"
        );
        assert!(
            allowed["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("www-authenticate")
        );
        let vary: Vec<_> = allowed.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Origin"]);
        assert!(!allowed.contains_key("access-control-allow-credentials"));

        let other = answer(
            &policy,
            Some("https://evil.example"),
            false,
            "/fhir/Patient",
        );
        assert!(
            other.keys().all(|n| !n.as_str().starts_with(PREFIX)),
            "{other:?}"
        );
        let none = answer(&policy, None, false, "/fhir/Patient");
        assert!(none.keys().all(|n| !n.as_str().starts_with(PREFIX)));
    }

    #[test]
    fn preflights_list_methods_headers_and_lifetime() {
        let policy = policy(&["https://app.example.org"], true);
        let out = answer(
            &policy,
            Some("https://app.example.org"),
            true,
            "/fhir/Patient",
        );
        assert_eq!(out["access-control-allow-methods"], API_METHODS);
        assert!(
            out["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        assert_eq!(out["access-control-max-age"], "600");
        assert_eq!(out["access-control-allow-credentials"], "true");
        let (method, headers) = request(Some("https://evil.example"), true);
        let refused = policy.allowance(&method, "/fhir/Patient", &headers, Some("/fhir"));
        assert!(!refused.allowed());
    }

    #[test]
    fn public_endpoints_allow_any_origin_and_star_needs_no_vary() {
        let unconfigured = CorsPolicy::new(None);
        for path in ["/fhir/metadata", "/fhir/.well-known/smart-configuration"] {
            let out = answer(&unconfigured, Some("https://anyone.example"), false, path);
            assert_eq!(out["access-control-allow-origin"], "*");
            let preflight = answer(&unconfigured, Some("https://anyone.example"), true, path);
            assert_eq!(preflight["access-control-allow-methods"], PUBLIC_METHODS);
        }
        let api = answer(
            &unconfigured,
            Some("https://anyone.example"),
            false,
            "/fhir/Patient",
        );
        assert!(!api.contains_key("access-control-allow-origin"));

        let any = policy(&["*"], false);
        let out = answer(&any, Some("https://anyone.example"), false, "/fhir/Patient");
        assert_eq!(out["access-control-allow-origin"], "*");
        let vary: Vec<_> = out.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept"]);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("/fhir/Patient/1", "/fhir"), Some("Patient/1"));
        assert_eq!(relative_path("/fhir", "/fhir"), Some(""));
        assert_eq!(relative_path("/fhirx", "/fhir"), None);
        assert!(is_public_path("/fhir/metadata", "/fhir"));
        assert!(!is_public_path("/fhir/metadatax", "/fhir"));
    }
}
