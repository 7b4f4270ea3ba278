//! SMART discovery at the edge: the authorization server's own discovery document, fetched
//! when first needed and kept for `smart.cache_ttl`, and the `.well-known/smart-configuration`
//! document made from it ([`smart`]).
//!
//! One fetch runs at a time. When a fetch fails the last good document goes on being served
//! (it names endpoints, which rarely move), and no new fetch is tried for a few seconds;
//! without any good document the caller is told the document is unavailable.

mod idp;
mod smart;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::Instant;

pub use self::idp::{FetchError, Source};
pub use self::smart::{capabilities, merge_patch, oauth_uris, synthesise};

use crate::config::Config;

/// Longest wait between two fetches after one failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The smart-configuration as published.
#[derive(Debug)]
pub struct Document {
    /// The JSON body.
    pub body: Bytes,
    /// The `oauth-uris` sub-extensions the CapabilityStatement names: `(name, URL)`.
    pub oauth_uris: Vec<(&'static str, String)>,
}

/// A document and how long a client may keep it.
#[derive(Debug, Clone)]
pub struct Current {
    pub document: Arc<Document>,
    /// What is left of the document's lifetime; zero for a document kept past it.
    pub max_age: Duration,
    /// The document is kept past its lifetime because the authorization server cannot be
    /// reached.
    pub stale: bool,
}

/// What the last fetch left.
#[derive(Default, Clone)]
struct Held {
    document: Option<(Arc<Document>, Instant)>,
    failure: Option<(Instant, FetchError)>,
}

/// The authorization server's discovery document and the smart-configuration made from it.
pub struct Discovery {
    source: Source,
    http: reqwest::Client,
    ttl: Duration,
    overrides: Map<String, Value>,
    held: Mutex<Held>,
    /// Held while a fetch runs, so that one fetch serves every request waiting on it.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("issuer", &self.source.issuer())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Discovery {
    /// Discovery for the configuration's authorization issuer; `None` when its document
    /// cannot be located (an issuer that is not an http(s) URL, without `smart.discovery_url`).
    pub fn new(config: &Config, http: reqwest::Client) -> Option<Self> {
        let smart = config.smart.clone().unwrap_or_default();
        let source = Source::new(config.authorization_issuer(), smart.discovery_url.as_ref())?;
        Some(Self {
            source,
            http,
            ttl: smart.cache_ttl,
            overrides: smart.configuration_overrides,
            held: Mutex::new(Held::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The current document: the kept one while it is fresh, else a new fetch; the kept one
    /// past its lifetime when the fetch fails or another is under way.
    pub async fn current(&self) -> Result<Current, FetchError> {
        let asked = Instant::now();
        let held = self.held();
        if let Some(current) = self.fresh(&held, asked) {
            return Ok(current);
        }
        if let Some((at, error)) = &held.failure
            && at.elapsed() < self.retry_wait()
        {
            return stale(&held).ok_or_else(|| error.clone());
        }
        // While a fetch is under way, a kept document is served rather than waited on.
        let _fetching = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => match stale(&held) {
                Some(current) => return Ok(current),
                None => self.fetching.lock().await,
            },
        };
        // Another request may have fetched while this one waited.
        let held = self.held();
        if let Some(current) = self.fresh(&held, asked) {
            return Ok(current);
        }
        if let Some((at, error)) = &held.failure
            && *at >= asked
        {
            return stale(&held).ok_or_else(|| error.clone());
        }
        self.fetch(&held).await
    }

    /// Fetches the document now and keeps what comes of it.
    async fn fetch(&self, held: &Held) -> Result<Current, FetchError> {
        match self.source.fetch(&self.http).await {
            Ok(found) => {
                let document = Arc::new(self.publish(&found));
                let mut kept = self.lock();
                kept.document = Some((document.clone(), Instant::now()));
                kept.failure = None;
                Ok(Current {
                    document,
                    max_age: self.ttl,
                    stale: false,
                })
            }
            Err(error) => {
                let kept_one = held.document.is_some();
                tracing::warn!(issuer = %self.source.issuer(), %error, serving_last_good = kept_one, "authorization server discovery failed");
                self.lock().failure = Some((Instant::now(), error.clone()));
                stale(held).ok_or(error)
            }
        }
    }

    /// The smart-configuration for a fetched document, rendered once.
    fn publish(&self, found: &Map<String, Value>) -> Document {
        let configuration = synthesise(found, &self.overrides);
        if !configuration.contains_key("code_challenge_methods_supported") {
            tracing::warn!(issuer = %self.source.issuer(), "the authorization server does not advertise PKCE S256; code_challenge_methods_supported is left out");
        }
        let oauth_uris = oauth_uris(&configuration);
        let body = serde_json::to_vec(&Value::Object(configuration)).unwrap_or_default();
        Document {
            body: Bytes::from(body),
            oauth_uris,
        }
    }

    /// The kept document when it is younger than its lifetime at `now`.
    fn fresh(&self, held: &Held, now: Instant) -> Option<Current> {
        let (document, fetched) = held.document.as_ref()?;
        let age = now.saturating_duration_since(*fetched);
        (age < self.ttl).then(|| Current {
            document: document.clone(),
            max_age: self.ttl - age,
            stale: false,
        })
    }

    fn retry_wait(&self) -> Duration {
        RETRY_AFTER_FAILURE.min(self.ttl)
    }

    fn held(&self) -> Held {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The kept document past its lifetime, if there is one.
fn stale(held: &Held) -> Option<Current> {
    let (document, _) = held.document.as_ref()?;
    Some(Current {
        document: document.clone(),
        max_age: Duration::ZERO,
        stale: true,
    })
}
