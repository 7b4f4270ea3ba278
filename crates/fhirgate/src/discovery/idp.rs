//! Fetching the authorization server's own discovery document (OpenID Connect Discovery 1.0,
//! or RFC 8414 authorization server metadata).

use serde_json::{Map, Value};

use crate::config::HttpUrl;

/// Largest discovery document accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// Where an issuer's discovery document is looked for, in order.
#[derive(Debug, Clone)]
pub struct Source {
    issuer: String,
    urls: Vec<String>,
}

/// Why a discovery document could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} returned an unusable document: {reason}")]
    Document { url: String, reason: String },
}

impl Source {
    /// The locations for `issuer`: `discovery_url` alone when given, else the OpenID location
    /// and then the RFC 8414 one. `None` when the issuer is not an http(s) URL and no
    /// `discovery_url` is given: there is nowhere to look.
    pub fn new(issuer: &str, discovery_url: Option<&HttpUrl>) -> Option<Self> {
        let urls = match discovery_url {
            Some(url) => vec![url.as_str()],
            None => well_known(issuer)?,
        };
        Some(Self {
            issuer: issuer.to_owned(),
            urls,
        })
    }

    /// The issuer whose document this is.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The first document found, in location order; the first location's error when none is.
    pub async fn fetch(&self, http: &reqwest::Client) -> Result<Map<String, Value>, FetchError> {
        let mut first_error = None;
        for url in &self.urls {
            match self.fetch_one(http, url).await {
                Ok(document) => return Ok(document),
                Err(error) => {
                    tracing::debug!(issuer = %self.issuer, %error, "discovery location failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| FetchError::Document {
            url: self.issuer.clone(),
            reason: "no discovery location".into(),
        }))
    }

    /// One location: a JSON object of at most [`MAX_DOCUMENT`] bytes naming this issuer.
    async fn fetch_one(
        &self,
        http: &reqwest::Client,
        url: &str,
    ) -> Result<Map<String, Value>, FetchError> {
        let http_error = |e: reqwest::Error| FetchError::Http {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let document_error = |reason: &str| FetchError::Document {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let response = http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(document_error("document too large"));
        }
        let body = response.bytes().await.map_err(http_error)?;
        if body.len() > MAX_DOCUMENT {
            return Err(document_error("document too large"));
        }
        let document: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| document_error(&e.to_string()))?;
        // OpenID Connect Discovery 4.3 and RFC 8414 3.3: a document for another issuer is
        // not this issuer's, whoever serves it.
        if document.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(document_error("the document names another issuer"));
        }
        Ok(document)
    }
}

/// The well-known locations of an http(s) issuer: OpenID's (appended to the issuer) and RFC
/// 8414's (inserted between host and path).
fn well_known(issuer: &str) -> Option<Vec<String>> {
    let uri: http::Uri = issuer.parse().ok()?;
    let scheme = uri
        .scheme_str()
        .filter(|s| matches!(*s, "http" | "https"))?;
    let authority = uri.authority()?;
    if uri.query().is_some() {
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    let trimmed = issuer.trim_end_matches('/');
    Some(vec![
        format!("{trimmed}/.well-known/openid-configuration"),
        format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_locations() {
        assert_eq!(
            well_known("https://as.example/realms/smart").unwrap(),
            vec![
                "https://as.example/realms/smart/.well-known/openid-configuration",
                "https://as.example/.well-known/oauth-authorization-server/realms/smart",
            ]
        );
        assert_eq!(
            well_known("http://127.0.0.1:9000").unwrap(),
            vec![
                "http://127.0.0.1:9000/.well-known/openid-configuration",
                "http://127.0.0.1:9000/.well-known/oauth-authorization-server",
            ]
        );
        assert!(well_known("urn:example:as").is_none());
        assert!(Source::new("urn:example:as", None).is_none());
    }
}
