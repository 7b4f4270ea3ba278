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

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod query;
mod record;
pub use record::{AuditDecision, AuditRecord, now_rfc3339, redact_query, rfc3339};

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
    pub fn open(config: &crate::config::Audit) -> Result<(Self, AuditWriter), AuditOpenError> {
        let path = first_file(config);
        let path = path.as_path();
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

fn first_file(config: &crate::config::Audit) -> PathBuf {
    config
        .sinks
        .values()
        .find_map(|sink| match sink {
            crate::config::Sink::Jsonl(file) => Some(file.path.clone()),
            _ => None,
        })
        .unwrap_or_else(|| config.spool.path.join("records.jsonl"))
}

/// Checks what the audit trail needs at start without writing: the folders exist or can be
/// made, and secret files can be read.
pub fn preflight(config: &crate::config::Audit) -> Result<(), AuditOpenError> {
    let path = first_file(config);
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(AuditOpenError {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "folder does not exist"),
        });
    }
    Ok(())
}
