//! The gateway's own access token for the FHIR server, got by the OAuth client-credentials
//! grant (RFC 6749 section 4.4) and kept fresh.
//!
//! A token is fetched before the gateway serves and again at 80 % of its lifetime; a failed
//! fetch is retried with growing delays while the token held goes on being used until it
//! expires. A request that finds no valid token is refused (503) and never sent upstream
//! without its credential. The token and the client secret are never logged: the token
//! lives in a header value marked sensitive, the secret only in the request that carries it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use serde::Deserialize;

use crate::config::{ClientCredentials, ClientSecretError, SecretAuth};
use crate::metrics::{Metrics, Route, TokenFetch};

/// Largest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// Lifetime assumed for a token whose answer has no `expires_in`.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(300);
/// Share of a token's lifetime after which a new one is fetched.
const REFRESH_AT: f64 = 0.8;
/// The shortest wait before a refresh, however short-lived the token.
const MIN_REFRESH: Duration = Duration::from_millis(200);
/// How long before its expiry a token stops being sent, at most (a tenth of its lifetime
/// when that is shorter), so that none arrives upstream expired.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// First and longest wait before retrying a failed fetch.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
/// Longest wait before retrying while no usable token is held: requests are refused
/// meanwhile and told to come back after this long (`Retry-After: 5`), so a token endpoint
/// that is back is taken up as soon as they do.
const LONGEST_RETRY_WITHOUT_TOKEN: Duration = Duration::from_secs(5);

/// Why a token could not be fetched. Never carries the secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    /// An error answer, with its RFC 6749 error code (or `none`).
    #[error("the token endpoint refused with status {status} ({error})")]
    Refused { status: u16, error: String },
    #[error("the token endpoint's answer is unusable: {0}")]
    Invalid(&'static str),
}

impl FetchError {
    fn outcome(&self) -> TokenFetch {
        match self {
            Self::Unreachable(_) => TokenFetch::Unreachable,
            Self::Refused { .. } => TokenFetch::Refused,
            Self::Invalid(_) => TokenFetch::Invalid,
        }
    }
}

/// A successful token answer (RFC 6749 section 5.1).
#[derive(Deserialize)]
struct Issued {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

/// An error answer (RFC 6749 section 5.2); only its code is kept.
#[derive(Deserialize)]
struct Refusal {
    error: Option<String>,
}

/// A token in use and when it stops being usable.
struct Held {
    authorization: HeaderValue,
    usable_until: Instant,
}

/// The client-credentials grant of one upstream and the token it last got.
pub struct UpstreamToken {
    grant: ClientCredentials,
    secret: String,
    http: reqwest::Client,
    held: ArcSwapOption<Held>,
    route: Route,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("token_endpoint", &self.grant.token_endpoint.as_str())
            .field("client_id", &self.grant.client_id)
            .field("held", &self.held.load().is_some())
            .finish_non_exhaustive()
    }
}

/// Why the grant cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum GrantSetupError {
    #[error(transparent)]
    Secret(#[from] ClientSecretError),
    #[error("cannot build the token endpoint's HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl UpstreamToken {
    /// The grant, its secret read now so that a mistake fails start-up and `fhirgate check`.
    /// Nothing is fetched yet.
    pub fn new(
        grant: &ClientCredentials,
        route: Route,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GrantSetupError> {
        let secret = grant.secret()?;
        let http = reqwest::Client::builder()
            .connect_timeout(grant.timeout)
            .timeout(grant.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        metrics.declare_upstream_token(route);
        Ok(Self {
            grant: grant.clone(),
            secret,
            http,
            held: ArcSwapOption::empty(),
            route,
            metrics,
        })
    }

    /// The `Authorization` value to send now; `None` while no unexpired token is held.
    pub fn authorization(&self) -> Option<HeaderValue> {
        self.held
            .load()
            .as_ref()
            .filter(|held| Instant::now() < held.usable_until)
            .map(|held| held.authorization.clone())
    }

    /// Fetches a token and puts it in use; how long until the next refresh is due.
    pub async fn fetch(&self) -> Result<Duration, FetchError> {
        let fetched = self.request().await;
        let outcome = fetched
            .as_ref()
            .map_or_else(FetchError::outcome, |_| TokenFetch::Ok);
        self.metrics.upstream_token_fetch(self.route, outcome);
        let (authorization, lifetime) = fetched.inspect_err(|error| {
            tracing::warn!(
                token_endpoint = %self.grant.token_endpoint.as_str(),
                client_id = %self.grant.client_id,
                %error,
                "upstream access token fetch failed"
            );
        })?;
        let margin = EXPIRY_MARGIN.min(lifetime / 10);
        self.held.store(Some(Arc::new(Held {
            authorization,
            usable_until: Instant::now() + lifetime - margin,
        })));
        tracing::debug!(
            client_id = %self.grant.client_id,
            lifetime_s = lifetime.as_secs_f64(),
            "upstream access token fetched"
        );
        Ok(lifetime.mul_f64(REFRESH_AT).max(MIN_REFRESH))
    }

    /// Keeps the token fresh until the upstream is dropped: a refresh at 80 % of each
    /// token's lifetime, retries after a failure at 1 s, 2 s, 4 s ... up to a minute, never
    /// later than half the time the token held has left, and every 5 s at most while no
    /// usable token is held.
    pub async fn keep_fresh(token: Weak<Self>, first: Result<Duration, FetchError>) {
        let mut last = first;
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match &last {
                Ok(due) => {
                    retry = FIRST_RETRY;
                    *due
                }
                Err(_) => {
                    let Some(token) = token.upgrade() else {
                        return;
                    };
                    let wait = retry_wait(retry, token.remaining());
                    retry = (retry * 2).min(LONGEST_RETRY);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
            let Some(token) = token.upgrade() else {
                return;
            };
            last = token.fetch().await;
        }
    }

    /// How long the token held stays usable; `None` when none is.
    fn remaining(&self) -> Option<Duration> {
        let held = self.held.load();
        let held = held.as_ref()?;
        held.usable_until.checked_duration_since(Instant::now())
    }

    /// One token request and its answer read.
    async fn request(&self) -> Result<(HeaderValue, Duration), FetchError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        for (name, value) in [
            ("scope", &self.grant.scope),
            ("audience", &self.grant.audience),
            ("resource", &self.grant.resource),
        ] {
            if let Some(value) = value {
                form.push((name, value));
            }
        }
        let mut request = self.http.post(self.grant.token_endpoint.as_str());
        match self.grant.auth {
            SecretAuth::ClientSecretBasic => {
                request = request.basic_auth(
                    crate::token::form_encode(&self.grant.client_id),
                    Some(crate::token::form_encode(&self.secret)),
                );
            }
            SecretAuth::ClientSecretPost => {
                form.push(("client_id", &self.grant.client_id));
                form.push(("client_secret", &self.secret));
            }
        }
        let response = request
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|error| FetchError::Unreachable(without_url(&error)))?;
        let status = response.status();
        let body = read_limited(response).await?;
        if !status.is_success() {
            let error = serde_json::from_slice::<Refusal>(&body)
                .ok()
                .and_then(|refusal| refusal.error)
                .filter(|code| code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "none".to_owned());
            return Err(FetchError::Refused {
                status: status.as_u16(),
                error,
            });
        }
        issued(&body)
    }
}

/// How long to wait before retrying a failed fetch: the growing `retry`, but no later than
/// half the time the token held has `left`, and no longer than
/// [`LONGEST_RETRY_WITHOUT_TOKEN`] while no usable token is held.
fn retry_wait(retry: Duration, left: Option<Duration>) -> Duration {
    let wait = match left {
        Some(left) => retry.min(left / 2),
        None => retry.min(LONGEST_RETRY_WITHOUT_TOKEN),
    };
    wait.max(MIN_REFRESH)
}

/// The bearer token and its lifetime in a successful answer.
fn issued(body: &[u8]) -> Result<(HeaderValue, Duration), FetchError> {
    let issued: Issued = serde_json::from_slice(body)
        .map_err(|_| FetchError::Invalid("not a JSON token response"))?;
    if !issued.token_type.eq_ignore_ascii_case("bearer") {
        return Err(FetchError::Invalid("token_type is not Bearer"));
    }
    let is_b64token = !issued.access_token.is_empty()
        && issued.access_token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    if !is_b64token {
        return Err(FetchError::Invalid("access_token is not a bearer token"));
    }
    let lifetime = match issued.expires_in {
        None => ASSUMED_LIFETIME,
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::from_secs_f64(seconds.min(86_400.0 * 366.0))
        }
        Some(_) => return Err(FetchError::Invalid("expires_in is not a positive number")),
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", issued.access_token))
        .map_err(|_| FetchError::Invalid("access_token is not a bearer token"))?;
    authorization.set_sensitive(true);
    Ok((authorization, lifetime))
}

/// The answer's body, at most [`MAX_ANSWER`] bytes.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| FetchError::Unreachable(without_url(&error)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(FetchError::Invalid("the answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error's text without the URL (which is logged beside it).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_answer_gives_a_sensitive_header_and_its_lifetime() {
        let (value, lifetime) =
            issued(br#"{"access_token":"abc.def-1","token_type":"bearer","expires_in":120}"#)
                .unwrap();
        assert_eq!(value, "Bearer abc.def-1");
        assert!(value.is_sensitive());
        assert_eq!(lifetime, Duration::from_secs(120));
        let (_, assumed) = issued(br#"{"access_token":"t","token_type":"Bearer"}"#).unwrap();
        assert_eq!(assumed, ASSUMED_LIFETIME);
    }

    #[test]
    fn answers_that_are_not_usable_bearer_tokens_are_refused() {
        for body in [
            &br#"{"access_token":"t","token_type":"DPoP","expires_in":60}"#[..],
            br#"{"access_token":"","token_type":"Bearer"}"#,
            br#"{"access_token":"a b","token_type":"Bearer"}"#,
            br#"{"access_token":"t\r\nx: y","token_type":"Bearer"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":-5}"#,
            br#"{"token_type":"Bearer"}"#,
            b"<html>",
        ] {
            assert!(
                matches!(issued(body), Err(FetchError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn retries_wait_less_while_no_token_is_held() {
        let s = Duration::from_secs;
        // A token held: the growing wait, but no later than half of what it has left.
        assert_eq!(retry_wait(s(1), Some(s(100))), s(1));
        assert_eq!(retry_wait(s(60), Some(s(100))), s(50));
        assert_eq!(retry_wait(s(8), Some(s(4))), s(2));
        assert_eq!(retry_wait(s(8), Some(Duration::ZERO)), MIN_REFRESH);
        // None held, so requests are refused: at most the Retry-After they are given.
        assert_eq!(retry_wait(s(1), None), s(1));
        assert_eq!(retry_wait(s(2), None), s(2));
        assert_eq!(retry_wait(s(32), None), LONGEST_RETRY_WITHOUT_TOKEN);
        assert_eq!(retry_wait(LONGEST_RETRY, None), LONGEST_RETRY_WITHOUT_TOKEN);
    }

    #[test]
    fn errors_name_no_token() {
        let error = FetchError::Refused {
            status: 401,
            error: "invalid_client".into(),
        };
        assert_eq!(
            error.to_string(),
            "the token endpoint refused with status 401 (invalid_client)"
        );
        assert_eq!(error.outcome(), TokenFetch::Refused);
    }
}
