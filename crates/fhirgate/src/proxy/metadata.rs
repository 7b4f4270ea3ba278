//! The `metadata` endpoint: the upstream's CapabilityStatement as the edge states it.
//!
//! The upstream's own base URL is replaced by the public base throughout the body, and
//! every `rest` entry of a JSON statement gets the gateway's `security`: SMART-on-FHIR, the
//! `oauth-uris` of the smart-configuration and whether CORS is configured. The plain JSON
//! statement (no query, JSON asked for or nothing particular) is kept for
//! `metadata.cache_ttl`; other requests (XML, `mode=`, `_summary=` ...) go upstream each
//! time, XML with the base replaced and its security left as the upstream wrote it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::rewrite::Rewrite;
use crate::body::{self, Body};
use crate::discovery::Document;

/// The extension of SMART App Launch 1.0 that names the OAuth endpoints in a
/// CapabilityStatement.
pub const OAUTH_URIS: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";
/// The code system of `rest.security.service`.
const SECURITY_SERVICE: &str = "http://terminology.hl7.org/CodeSystem/restful-security-service";

/// An upstream answer the endpoint keeps: a 200 with a JSON body.
#[derive(Debug)]
pub struct Statement {
    /// The body as the upstream sent it.
    pub text: String,
    pub content_type: HeaderValue,
}

/// What the edge says about its security, for one rendering.
pub struct Security<'a> {
    /// CORS is configured for the FHIR API.
    pub cors: bool,
    /// The smart-configuration whose endpoints `oauth-uris` names; none while discovery is
    /// unavailable or not configured.
    pub discovery: Option<&'a Arc<Document>>,
}

/// A statement rendered for one public base and one smart-configuration.
#[derive(Debug)]
struct Rendered {
    base: String,
    discovery: Option<Arc<Document>>,
    body: Bytes,
}

#[derive(Debug, Clone)]
struct Held {
    statement: Arc<Statement>,
    fetched: Instant,
    rendered: Option<Arc<Rendered>>,
}

/// The kept CapabilityStatement.
#[derive(Debug)]
pub struct MetadataCache {
    ttl: Duration,
    held: Mutex<Option<Held>>,
    /// Held while the statement is fetched, so that one upstream call serves every request
    /// waiting on it.
    pub fetching: tokio::sync::Mutex<()>,
}

impl MetadataCache {
    /// A cache keeping the statement for `ttl` (nothing for zero).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            held: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The kept statement while it is younger than the lifetime.
    pub fn fresh(&self) -> Option<Arc<Statement>> {
        let held = self.lock().clone()?;
        (held.fetched.elapsed() < self.ttl).then_some(held.statement)
    }

    /// Keeps a statement just fetched.
    pub fn keep(&self, statement: Arc<Statement>) {
        if self.ttl.is_zero() {
            return;
        }
        *self.lock() = Some(Held {
            statement,
            fetched: Instant::now(),
            rendered: None,
        });
    }

    /// The body for `statement` as the client at `base` gets it with `security`: the kept
    /// rendering when it was made from the same statement for the same base and the same
    /// smart-configuration (or one is unavailable now), else a new one, kept.
    pub fn body(
        &self,
        statement: &Arc<Statement>,
        upstream_base: &str,
        base: &str,
        security: &Security<'_>,
    ) -> Bytes {
        if let Some(rendered) = self.rendered(statement, base, security) {
            return rendered.body.clone();
        }
        let body = render(&statement.text, upstream_base, base, security);
        let mut held = self.lock();
        if let Some(held) = held.as_mut()
            && Arc::ptr_eq(&held.statement, statement)
        {
            held.rendered = Some(Arc::new(Rendered {
                base: base.to_owned(),
                discovery: security.discovery.cloned(),
                body: body.clone(),
            }));
        }
        body
    }

    fn rendered(
        &self,
        statement: &Arc<Statement>,
        base: &str,
        security: &Security<'_>,
    ) -> Option<Arc<Rendered>> {
        let held = self.lock().clone()?;
        let rendered = held.rendered?;
        let same_discovery = match (security.discovery, &rendered.discovery) {
            (None, _) => true,
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            (Some(_), None) => false,
        };
        (Arc::ptr_eq(&held.statement, statement) && rendered.base == base && same_discovery)
            .then_some(rendered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A statement's text with the upstream base replaced and, when it is a JSON
/// CapabilityStatement, the edge's security declared; the replaced text alone otherwise.
pub fn render(text: &str, upstream_base: &str, base: &str, security: &Security<'_>) -> Bytes {
    let replaced = replace_base(text, upstream_base, base);
    let Ok(mut statement) = serde_json::from_str::<Value>(&replaced) else {
        return Bytes::from(replaced);
    };
    if statement["resourceType"] != "CapabilityStatement" {
        return Bytes::from(replaced);
    }
    declare_security(&mut statement, security);
    serde_json::to_vec(&statement).map_or_else(|_| Bytes::from(replaced), Bytes::from)
}

/// `text` with the upstream's base URL made the public base wherever it stands as a whole
/// URL prefix (plain or JSON-escaped), as [`Rewrite`] does for every other answer.
pub fn replace_base(text: &str, upstream_base: &str, base: &str) -> String {
    Rewrite::hiding(upstream_base, base)
        .and_then(|rewrite| rewrite.apply(text.as_bytes()))
        .and_then(|rewritten| String::from_utf8(rewritten).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// Sets `security` on every `rest` entry of mode `server` (every entry when none names a
/// mode), adding a server entry when there is none.
pub fn declare_security(statement: &mut Value, security: &Security<'_>) {
    let declared = security_element(security);
    let Some(object) = statement.as_object_mut() else {
        return;
    };
    let rest = object
        .entry("rest")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !rest.is_array() {
        *rest = Value::Array(Vec::new());
    }
    let Some(entries) = rest.as_array_mut() else {
        return;
    };
    let servers = entries.iter().filter(|e| e["mode"] == "server").count();
    let mut set = 0;
    for entry in entries.iter_mut() {
        let is_server = entry["mode"] == "server" || (servers == 0 && entry.get("mode").is_none());
        if let Some(entry) = entry.as_object_mut().filter(|_| is_server) {
            entry.insert("security".into(), declared.clone());
            set += 1;
        }
    }
    if set == 0 {
        entries.push(json!({"mode": "server", "security": declared}));
    }
}

/// The `rest.security` element of the edge.
fn security_element(security: &Security<'_>) -> Value {
    let mut element = serde_json::Map::new();
    if let Some(document) = security.discovery
        && !document.oauth_uris.is_empty()
    {
        let uris: Vec<Value> = document
            .oauth_uris
            .iter()
            .map(|(name, url)| json!({"url": name, "valueUri": url}))
            .collect();
        element.insert(
            "extension".into(),
            json!([{"url": OAUTH_URIS, "extension": uris}]),
        );
    }
    element.insert("cors".into(), Value::Bool(security.cors));
    element.insert(
        "service".into(),
        json!([{
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
        }]),
    );
    element.insert(
        "description".into(),
        Value::from(
            "Every request except this statement and .well-known/smart-configuration needs a \
             SMART App Launch access token; the endpoints and capabilities are in \
             .well-known/smart-configuration.",
        ),
    );
    Value::Object(element)
}

/// Is a `Content-Type` a JSON one (`application/fhir+json`, `application/json`, ...)?
pub fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .is_some_and(|media| media.ends_with("/json") || media.ends_with("+json"))
}

/// The answer with a body the endpoint made.
pub fn reply(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Arc<Document> {
        Arc::new(Document {
            body: Bytes::new(),
            oauth_uris: vec![
                ("authorize", "https://as.example/auth".into()),
                ("token", "https://as.example/token".into()),
            ],
        })
    }

    #[test]
    fn security_replaces_the_upstreams_and_the_base_is_public() {
        let text = r#"{"resourceType":"CapabilityStatement","url":"http://10.0.0.5:8080/fhir/metadata","implementation":{"url":"http://10.0.0.5:8080/fhir"},"rest":[{"mode":"server","security":{"cors":true,"description":"none"},"resource":[]},{"mode":"client"}]}"#;
        let discovery = document();
        let security = Security {
            cors: false,
            discovery: Some(&discovery),
        };
        let body = render(
            text,
            "http://10.0.0.5:8080/fhir",
            "https://gw.example/fhir",
            &security,
        );
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("10.0.0.5"));
        assert_eq!(out["implementation"]["url"], "https://gw.example/fhir");
        assert_eq!(out["url"], "https://gw.example/fhir/metadata");
        let server = &out["rest"][0]["security"];
        assert_eq!(server["cors"], false);
        assert_eq!(server["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        assert_eq!(server["extension"][0]["url"], OAUTH_URIS);
        assert_eq!(server["extension"][0]["extension"][1]["url"], "token");
        assert_eq!(
            server["extension"][0]["extension"][1]["valueUri"],
            "https://as.example/token"
        );
        assert!(
            out["rest"][1].get("security").is_none(),
            "client entries are left"
        );
    }

    #[test]
    fn a_statement_without_rest_gets_a_server_entry() {
        let mut statement = json!({"resourceType": "CapabilityStatement"});
        declare_security(
            &mut statement,
            &Security {
                cors: true,
                discovery: None,
            },
        );
        assert_eq!(statement["rest"][0]["mode"], "server");
        assert_eq!(statement["rest"][0]["security"]["cors"], true);
        assert!(statement["rest"][0]["security"].get("extension").is_none());
    }

    #[test]
    fn other_bodies_only_lose_the_upstream_base() {
        let security = Security {
            cors: false,
            discovery: None,
        };
        let xml =
            "<CapabilityStatement><url value=\"http://u/fhir/metadata\"/></CapabilityStatement>";
        assert_eq!(
            render(xml, "http://u/fhir", "https://gw/fhir", &security),
            Bytes::from(
                "<CapabilityStatement><url value=\"https://gw/fhir/metadata\"/></CapabilityStatement>"
            )
        );
        let outcome = r#"{"resourceType":"OperationOutcome"}"#;
        assert_eq!(render(outcome, "http://u/fhir", "x", &security), outcome);
    }

    #[test]
    fn renderings_are_kept_per_base_and_discovery() {
        let cache = MetadataCache::new(Duration::from_secs(60));
        let statement = Arc::new(Statement {
            text:
                r#"{"resourceType":"CapabilityStatement","implementation":{"url":"http://u/fhir"}}"#
                    .into(),
            content_type: HeaderValue::from_static("application/fhir+json"),
        });
        cache.keep(statement.clone());
        assert!(cache.fresh().is_some());
        let discovery = document();
        let with = Security {
            cors: false,
            discovery: Some(&discovery),
        };
        let first = cache.body(&statement, "http://u/fhir", "https://a/fhir", &with);
        assert!(
            cache
                .rendered(&statement, "https://a/fhir", &with)
                .is_some()
        );
        assert!(
            cache
                .rendered(&statement, "https://b/fhir", &with)
                .is_none()
        );
        let without = Security {
            cors: false,
            discovery: None,
        };
        let again = cache.body(&statement, "http://u/fhir", "https://a/fhir", &without);
        assert_eq!(
            first, again,
            "an unavailable discovery keeps the last rendering"
        );
        let other = document();
        let changed = Security {
            cors: false,
            discovery: Some(&other),
        };
        assert!(
            cache
                .rendered(&statement, "https://a/fhir", &changed)
                .is_none()
        );

        let uncached = MetadataCache::new(Duration::ZERO);
        uncached.keep(statement);
        assert!(uncached.fresh().is_none());
    }

    #[test]
    fn json_content_types() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&value("application/fhir+json;charset=utf-8"))));
        assert!(is_json(Some(&value("application/json"))));
        assert!(!is_json(Some(&value("application/fhir+xml"))));
        assert!(!is_json(None));
    }
}
