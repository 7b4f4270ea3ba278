//! Configuration reload without a restart, on SIGHUP and when the config file's content
//! changes (looked at every [`WATCH_INTERVAL`]; an editor's or Kubernetes' replace-by-rename
//! is seen like an edit in place).
//!
//! The file is read and checked in full, and a new [`Gateway`] is built from it (its issuers'
//! keys fetched) before one atomic swap puts it in use: a request takes the gateway in use
//! when it arrives and finishes under it, so requests running during a reload finish under
//! the configuration they started with. A file that cannot be used leaves the running
//! configuration as it is; the error, with its line, goes to the log and
//! `fhirgate_config_reloads_total{outcome="error"}` counts it.
//!
//! What the process holds from its start (its listeners and their connection limits, TLS,
//! the cap on upstream requests, the audit spool and sinks, telemetry) changes only on
//! restart: a reload that changes it is refused and names it.
//! The TLS certificate and key files' content is taken up on its own
//! ([`crate::proxy::ServerCertificate`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::proxy::Gateway;
use crate::run::{Shared, StartError, build_gateway};

/// The gateway in use, swapped whole by a reload.
pub type LiveGateway = Arc<ArcSwap<Gateway>>;

/// How often the config file is looked at for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Sections a running process cannot take over, by their path (`.` between keys).
const RESTART_ONLY: [&str; 7] = [
    "listen",
    "admin_listen",
    "tls",
    "audit",
    "telemetry",
    "limits.connections",
    "limits.max_upstream_requests",
];

/// What set a reload off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: the file is read again even when it looks unchanged.
    Signal,
    /// The file's content changed.
    Change,
}

/// What starts a look at a file: SIGHUP, or the next tick of a watch interval.
pub struct Triggers {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    interval: Duration,
}

impl Triggers {
    /// SIGHUP (where the process can receive it) and a tick every `interval`.
    pub fn new(interval: Duration) -> Self {
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler; files are still watched");
                None
            }
        };
        Self {
            #[cfg(unix)]
            hangup,
            interval,
        }
    }

    /// The next trigger, or none once `stop` turns true.
    pub async fn next(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Trigger> {
        #[cfg(unix)]
        let signalled = async {
            match self.hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = signalled => Some(Trigger::Signal),
            () = tokio::time::sleep(self.interval) => Some(Trigger::Change),
            _ = stop.wait_for(|stop| *stop) => None,
        }
    }
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Change => "file change",
        }
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {keys} change only on restart")]
    RestartOnly { path: String, keys: String },
    #[error("{0}")]
    Start(#[from] StartError),
    /// A route's upstream token could not be fetched while the running route of that name
    /// holds a valid one: taking it up would refuse every request of that route.
    #[error(
        "{path}: no upstream access token could be fetched for it (client_credentials of route {routes}, whose running token is valid)"
    )]
    NoUpstreamToken { path: String, routes: String },
}

/// The configuration file, as it was when the process read it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

impl ConfigFile {
    /// Reads the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    /// The checked configuration it holds.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::parse(&self.text, &self.path.display().to_string())
    }
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    path: PathBuf,
    live: LiveGateway,
    shared: Shared,
    state: Mutex<State>,
}

struct State {
    /// The restart-only sections of the configuration in use.
    fixed: Value,
    /// The text looked at last, used or not: a file that failed is reported once, not at
    /// every look.
    seen: String,
}

impl Reloader {
    /// A reloader of `file`, whose configuration `live` serves.
    pub fn new(file: &ConfigFile, live: LiveGateway, shared: Shared) -> Self {
        Self {
            path: file.path.clone(),
            live,
            shared,
            state: Mutex::new(State {
                fixed: restart_only(&file.text),
                seen: file.text.clone(),
            }),
        }
    }

    /// Reads the file again and, when it can be used, puts it in use. `Ok(false)`: a change
    /// look found the file as it was (or unreadable for now, as during a replace).
    pub async fn reload(&self, trigger: Trigger) -> Result<bool, ReloadError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(_) if trigger == Trigger::Change => return Ok(false),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: self.path.clone(),
                    source,
                }
                .into());
            }
        };
        let fixed = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if trigger == Trigger::Change && state.seen == text {
                return Ok(false);
            }
            state.seen.clone_from(&text);
            state.fixed.clone()
        };
        let origin = self.path.display().to_string();
        let config = Config::parse(&text, &origin)?;
        let changed = changed_sections(&fixed, &restart_only(&text));
        if !changed.is_empty() {
            return Err(ReloadError::RestartOnly {
                path: origin,
                keys: changed.join(", "),
            });
        }
        let gateway = build_gateway(config, &self.shared).await?;
        // Route by route: one whose token cannot be had now while its running namesake holds
        // one, whatever the other routes hold.
        let running = self.live.load();
        let lost: Vec<&str> = gateway
            .routes
            .iter()
            .filter(|route| !route.upstream.has_credential())
            .filter(|route| {
                running
                    .routes
                    .iter()
                    .any(|old| old.name == route.name && old.upstream.has_credential())
            })
            .map(|route| route.name.as_str())
            .collect();
        if !lost.is_empty() {
            return Err(ReloadError::NoUpstreamToken {
                path: origin,
                routes: lost.join(", "),
            });
        }
        self.live.store(gateway);
        Ok(true)
    }

    /// Reloads on SIGHUP and on every change of the file until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut triggers = Triggers::new(WATCH_INTERVAL);
        loop {
            let Some(trigger) = triggers.next(&mut stop).await else {
                return;
            };
            self.report(trigger, self.reload(trigger).await);
        }
    }

    fn report(&self, trigger: Trigger, outcome: Result<bool, ReloadError>) {
        let path = self.path.display();
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                self.shared.metrics.config_reload(true);
                self.shared.metrics.config_loaded(unix_now());
                tracing::info!(%path, trigger = trigger.as_str(), "configuration reloaded");
            }
            Err(error) => {
                self.shared.metrics.config_reload(false);
                tracing::error!(%path, trigger = trigger.as_str(), %error, "configuration reload refused; the running configuration is kept");
            }
        }
    }
}

/// The restart-only sections of a configuration text, as data (`Null` where one is absent,
/// or the text is not YAML, which the full check reports).
fn restart_only(text: &str) -> Value {
    let document: Value = serde_saphyr::from_str(text).unwrap_or(Value::Null);
    Value::Object(
        RESTART_ONLY
            .iter()
            .map(|path| {
                let section = path
                    .split('.')
                    .try_fold(&document, |value, key| value.get(key))
                    .cloned()
                    .unwrap_or(Value::Null);
                ((*path).to_owned(), section)
            })
            .collect(),
    )
}

fn changed_sections(before: &Value, after: &Value) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .copied()
        .filter(|key| before.get(key) != after.get(key))
        .collect()
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:8081"
audit:
  spool: { path: "/var/lib/fhirgate/spool" }
issuers:
  - issuer: "https://idp.example"
"#;

    #[test]
    fn only_the_restart_only_sections_are_compared() {
        let before = restart_only(BASE);
        let more_issuers = format!("{BASE}  - issuer: \"https://idp2.example\"\n");
        assert!(changed_sections(&before, &restart_only(&more_issuers)).is_empty());
        let moved = BASE.replace("8080", "9090");
        assert_eq!(changed_sections(&before, &restart_only(&moved)), ["listen"]);
        let spool = BASE.replace("/var/lib/fhirgate/spool", "/tmp/spool");
        assert_eq!(changed_sections(&before, &restart_only(&spool)), ["audit"]);
        let tls = format!("{BASE}tls:\n  certificate: /etc/c.pem\n");
        assert_eq!(changed_sections(&before, &restart_only(&tls)), ["tls"]);
        let body_limit = format!("{BASE}limits:\n  max_request_body: 1024\n");
        assert!(changed_sections(&before, &restart_only(&body_limit)).is_empty());
        let connections = format!("{BASE}limits:\n  connections:\n    max_open: 10\n");
        assert_eq!(
            changed_sections(&before, &restart_only(&connections)),
            ["limits.connections"]
        );
    }

    #[test]
    fn the_same_section_written_differently_is_unchanged() {
        let flow = BASE.replace(
            "audit:\n  spool: { path: \"/var/lib/fhirgate/spool\" }",
            "audit:\n  spool:\n    path: /var/lib/fhirgate/spool",
        );
        assert_ne!(flow, BASE);
        assert!(changed_sections(&restart_only(BASE), &restart_only(&flow)).is_empty());
    }
}
