//! The record step: one audit record per request, allowed or refused, as a JSON line.
//!
//! Records are handed to a writer task over a channel, so a slow disk never holds a response;
//! the task appends whatever has queued up in one write and flushes it. On shutdown the
//! writer is told to close: it writes everything queued before that and stops, even while
//! idle connections still hold an [`AuditLog`]. A failed write is
//! logged; a durable spool that retries, and refuses requests when it cannot be written, is
//! not built yet.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::proxy::{ACCESS_TOKEN, param_name};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the gateway decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDecision {
    Allow,
    Deny,
}

/// One audit record. Never holds a token.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unique and time-ordered (UUID v7), so that a sink receiving a record twice can tell.
    pub record_id: String,
    /// The gateway process that decided (`instance_id`, or host name and process id).
    pub instance: String,
    pub time: String,
    pub request_id: String,
    pub client_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub fhir_user: Option<String>,
    pub patient: Option<String>,
    /// The encounter in context, and SMART 2.x `fhirContext` (compact JSON), when the token
    /// carries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fhir_context: Option<String>,
    pub token_id: Option<String>,
    pub scopes: Option<String>,
    pub source: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub interaction: Option<&'static str>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub decision: AuditDecision,
    pub reason: String,
    pub rule: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<usize>,
    pub latency_ms: f64,
}

/// A query as recorded: the value of an `access_token` parameter replaced, so a token a
/// client put in the URL never reaches the audit trail.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            if param_name(pair) == ACCESS_TOKEN {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                format!("{name}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Why the audit trail cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit file {path}: {source}")]
pub struct AuditOpenError {
    path: PathBuf,
    source: std::io::Error,
}

/// What the writer task receives.
#[derive(Debug)]
enum Message {
    Record(Box<AuditRecord>),
    Close,
}

/// Hands records to the writer task.
#[derive(Debug, Clone)]
pub struct AuditLog {
    sender: mpsc::UnboundedSender<Message>,
}

/// The writer task; [`AuditWriter::finish`] writes what is queued and stops it.
#[derive(Debug)]
pub struct AuditWriter {
    sender: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl AuditLog {
    /// Opens (creating if needed) the JSON lines file and starts the writer task.
    pub fn open(path: &Path) -> Result<(Self, AuditWriter), AuditOpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditOpenError {
                path: path.to_owned(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditOpenError {
                path: path.to_owned(),
                source,
            })?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::task::spawn_blocking(move || write_records(file, receiver));
        let writer = AuditWriter {
            sender: sender.clone(),
            task,
        };
        Ok((Self { sender }, writer))
    }

    /// Queues a record for writing.
    pub fn record(&self, record: AuditRecord) {
        if self.sender.send(Message::Record(Box::new(record))).is_err() {
            tracing::error!("audit writer has stopped; record not written");
        }
    }
}

impl AuditWriter {
    /// Writes every record queued so far, then stops the writer.
    pub async fn finish(self) {
        let _ = self.sender.send(Message::Close);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "audit writer failed");
        }
    }
}

fn write_records(file: std::fs::File, mut receiver: mpsc::UnboundedReceiver<Message>) {
    let mut out = std::io::BufWriter::new(file);
    let mut batch = Vec::new();
    let mut closing = false;
    while !closing {
        let Some(first) = receiver.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => batch.push(record),
                Message::Close => closing = true,
            }
            if !closing {
                next = receiver.try_recv().ok();
            }
        }
        for record in batch.drain(..) {
            let line = serde_json::to_vec(&record).expect("audit records serialise");
            if let Err(error) = out.write_all(&line).and_then(|()| out.write_all(b"\n")) {
                tracing::error!(%error, "audit write failed");
            }
        }
        if let Err(error) = out.flush() {
            tracing::error!(%error, "audit flush failed");
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
