//! The record step: one audit record per request, allowed or refused, appended to a durable
//! spool before the response is sent, then shipped to every configured sink.
//!
//! Requests wait only for the local spool ([`spool`]); sinks are fed by their own
//! [`shipper`] tasks, so a slow or unreachable sink never holds a clinical request. While
//! the spool cannot be written (or is full, with `when_full: refuse`) the gateway refuses new
//! requests with 503 before they reach the upstream. docs/AUDIT.md states the guarantees.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod audit_event;
pub mod query;
mod record;
pub mod shipper;
pub mod sink;
pub mod spool;

pub use audit_event::EventSource;
pub use record::{AuditDecision, AuditRecord, now_rfc3339, redact_path, redact_query, rfc3339};
pub use spool::SpoolError;

use crate::config;
use crate::metrics::Metrics;
use shipper::{Lag, Run, Shipper};
use sink::Sink;
use spool::{SpoolHandle, SpoolWriter};

/// Why the audit trail cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolOpenError),
    #[error(transparent)]
    Sink(#[from] sink::SinkOpenError),
    #[error("audit.sinks.{sink}.jsonl.path: the folder {folder} does not exist")]
    TrailFolder { sink: String, folder: String },
}

/// Appends records; cheap to clone, one per request handler.
#[derive(Debug, Clone)]
pub struct AuditLog {
    spool: SpoolHandle,
}

/// The running spool writer and shippers; [`AuditTrail::finish`] stops them.
pub struct AuditTrail {
    writer: SpoolWriter,
    control: watch::Sender<Run>,
    shippers: Vec<JoinHandle<()>>,
    reporter: JoinHandle<()>,
}

impl AuditLog {
    /// Appends a record and waits until the spool has it (as its fsync policy says).
    pub async fn record(&self, record: &AuditRecord) -> Result<(), SpoolError> {
        self.spool.append(record.to_json_line()).await
    }

    /// Whether the spool takes records; when not, requests are refused before they are
    /// forwarded.
    pub fn accepting(&self) -> bool {
        self.spool.accepting()
    }
}

impl AuditTrail {
    /// Opens the spool, the sinks, and starts a shipper per sink.
    pub fn start(
        config: &config::Audit,
        source: &EventSource,
        client: &reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<(AuditLog, Self), AuditOpenError> {
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for (name, sink) in &config.sinks {
            let (batch, backoff_max) = sink
                .network()
                .map_or((1000, Duration::from_secs(5)), |network| {
                    (network.batch, network.backoff_max)
                });
            let opened = Sink::open(name, sink, client, source)?;
            metrics.declare_audit_sink(name);
            sinks.push((name.clone(), opened, batch, backoff_max));
        }
        let names: Vec<String> = config.sinks.keys().cloned().collect();
        let (spool, writer) = spool::open(&config.spool, &names, metrics.clone())?;
        let (control, watching) = watch::channel(Run::Ship);
        let mut lags = Vec::new();
        let mut shippers = Vec::new();
        for (name, sink, batch, backoff_max) in sinks {
            let lag = Arc::new(Lag::default());
            lags.push((name.clone(), lag.clone()));
            let shipper = Shipper {
                name,
                sink,
                batch,
                backoff_max,
                spool: spool.clone(),
                metrics: metrics.clone(),
            };
            shippers.push(tokio::spawn(shipper.run(watching.clone(), lag)));
        }
        let reporter = tokio::spawn(async move {
            loop {
                for (name, lag) in &lags {
                    metrics.audit_lag(
                        name,
                        lag.records.load(std::sync::atomic::Ordering::Relaxed),
                        lag.oldest_age(),
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let trail = Self {
            writer,
            control,
            shippers,
            reporter,
        };
        Ok((AuditLog { spool }, trail))
    }

    /// Writes every record queued so far to the spool, then lets the shippers deliver what
    /// they can within `grace` and stops them. What is left stays in the spool for the next
    /// start.
    pub async fn finish(self, grace: Duration) {
        self.writer.close().await;
        let _ = self
            .control
            .send(Run::Drain(tokio::time::Instant::now() + grace));
        for shipper in self.shippers {
            let _ = shipper.await;
        }
        self.reporter.abort();
    }
}

/// Checks what the audit trail needs at start, without writing: folders and secret files.
pub fn preflight(config: &config::Audit) -> Result<(), AuditOpenError> {
    spool::preflight(&config.spool)?;
    for (name, sink) in &config.sinks {
        if let config::Sink::Jsonl(file) = sink {
            let folder = match file.path.parent() {
                Some(folder) if !folder.as_os_str().is_empty() => folder,
                _ => std::path::Path::new("."),
            };
            if !folder.is_dir() {
                return Err(AuditOpenError::TrailFolder {
                    sink: name.clone(),
                    folder: folder.display().to_string(),
                });
            }
        }
        if let Some(network) = sink.network() {
            sink::bearer_token(name, network)?;
        }
    }
    Ok(())
}
