//! The sinks records are shipped to: a JSON lines file, standard output, an HTTP collector,
//! a FHIR server taking AuditEvents. Each acknowledges a batch or fails it whole.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::AuditRecord;
use super::audit_event::{self, EventSource};
use crate::config;

/// Why a sink did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("refused the batch: {0}")]
    Rejected(String),
}

/// Why a sink cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkOpenError {
    #[error("audit.sinks.{sink}: cannot open {path}: {source}")]
    File {
        sink: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit.sinks.{sink}.{source}")]
    Token {
        sink: String,
        source: config::BearerTokenError,
    },
}

/// An open sink.
pub enum Sink {
    Jsonl(Arc<Mutex<TrailFile>>),
    Stdout,
    Http(Poster),
    Fhir(Poster, EventSource),
}

/// A client for a network sink.
pub struct Poster {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    token: Option<String>,
}

impl Sink {
    /// Opens the sink `name` as configured.
    pub fn open(
        name: &str,
        config: &config::Sink,
        client: &reqwest::Client,
        source: &EventSource,
    ) -> Result<Self, SinkOpenError> {
        Ok(match config {
            config::Sink::Jsonl(file) => Self::Jsonl(Arc::new(Mutex::new(
                TrailFile::open(file).map_err(|source| SinkOpenError::File {
                    sink: name.to_owned(),
                    path: file.path.clone(),
                    source,
                })?,
            ))),
            config::Sink::Stdout(_) => Self::Stdout,
            config::Sink::Http(http) => Self::Http(Poster::new(name, http, client)?),
            config::Sink::Fhir(fhir) => {
                let mut source = source.clone();
                if let Some(site) = &fhir.site {
                    source.site = Some(site.clone());
                }
                Self::Fhir(Poster::new(name, fhir, client)?, source)
            }
        })
    }

    /// Delivers encoded records; `Ok` means the sink has them.
    pub async fn deliver(&mut self, lines: &[Bytes]) -> Result<(), SinkError> {
        match self {
            Self::Jsonl(file) => {
                let file = file.clone();
                let lines = lines.to_vec();
                tokio::task::spawn_blocking(move || {
                    file.lock().expect("trail file").append(&lines)
                })
                .await
                .map_err(std::io::Error::other)??;
                Ok(())
            }
            Self::Stdout => {
                // A pipe that backs up blocks this thread, never the runtime.
                let lines = lines.to_vec();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut out = std::io::stdout().lock();
                    for line in &lines {
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()
                })
                .await
                .map_err(std::io::Error::other)??;
                Ok(())
            }
            Self::Http(poster) => {
                let mut body =
                    Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (i, line) in lines.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(line);
                }
                body.push(b']');
                poster.post(body, "application/json").await.map(drop)
            }
            Self::Fhir(poster, source) => {
                let mut events = Vec::with_capacity(lines.len());
                for line in lines {
                    match serde_json::from_slice::<AuditRecord>(line) {
                        Ok(record) => events.push(audit_event::audit_event(&record, source)),
                        Err(error) => {
                            // Not a record this gateway wrote: nothing a retry could fix.
                            tracing::error!(%error, "skipping an unreadable audit record in the spool");
                        }
                    }
                }
                if events.is_empty() {
                    return Ok(());
                }
                let bundle = audit_event::batch_bundle(&events);
                let body = serde_json::to_vec(&bundle).expect("bundles serialise");
                let answer = poster.post(body, "application/fhir+json").await?;
                audit_event::batch_acknowledged(&answer, events.len())
                    .map_err(|error| SinkError::Rejected(error.to_string()))
            }
        }
    }
}

/// The bearer token a network sink sends, from its file or its environment variable.
pub(crate) fn bearer_token(
    name: &str,
    delivery: &config::NetworkSink,
) -> Result<Option<String>, SinkOpenError> {
    config::bearer_token(
        delivery.bearer_token_file.as_deref(),
        delivery.bearer_token_env.as_deref(),
    )
    .map_err(|source| SinkOpenError::Token {
        sink: name.to_owned(),
        source,
    })
}

impl Poster {
    fn new(
        name: &str,
        delivery: &config::NetworkSink,
        client: &reqwest::Client,
    ) -> Result<Self, SinkOpenError> {
        let token = bearer_token(name, delivery)?;
        Ok(Self {
            client: client.clone(),
            url: delivery.url.as_str(),
            timeout: delivery.timeout,
            token,
        })
    }

    /// POSTs a body; the answer's body when the status is 2xx.
    async fn post(&self, body: Vec<u8>, content_type: &str) -> Result<Bytes, SinkError> {
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, content_type)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(SinkError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    }
}

/// The JSON lines trail file, rotated by size.
pub struct TrailFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_bytes: u64,
    keep: usize,
    /// The id of the last record in the file when it was opened: a batch sent again after a
    /// crash is written from the record after it, so the file holds each record once.
    resume_after: Option<String>,
}

impl TrailFile {
    fn open(config: &config::JsonlSink) -> std::io::Result<Self> {
        super::spool::cut_torn_line(&config.path).or_else(|error| match error.kind() {
            std::io::ErrorKind::NotFound => Ok(0),
            _ => Err(error),
        })?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            resume_after: last_record_id(&config.path)?,
            path: config.path.clone(),
            file,
            size,
            rotate_bytes: config.rotate_bytes,
            keep: config.keep,
        })
    }

    fn append(&mut self, lines: &[Bytes]) -> std::io::Result<()> {
        let mut lines = lines;
        if let Some(last) = self.resume_after.take()
            && let Some(at) = lines
                .iter()
                .position(|line| record_id(line).as_deref() == Some(&last))
        {
            lines = &lines[at + 1..];
        }
        let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        if bytes == 0 {
            return Ok(());
        }
        if self.size > 0 && self.size + bytes > self.rotate_bytes {
            self.rotate()?;
        }
        let mut data = Vec::with_capacity(bytes as usize);
        for line in lines {
            data.extend_from_slice(line);
            data.push(b'\n');
        }
        self.file.write_all(&data)?;
        self.file.sync_data()?;
        self.size += bytes;
        Ok(())
    }

    /// Renames the file to `<path>.<UTC time>` and starts a new one; deletes rotated files
    /// beyond `keep`.
    fn rotate(&mut self) -> std::io::Result<()> {
        // Names sort in time order, newest last, so that pruning removes the oldest.
        let newest = rotated_files(&self.path)?.pop();
        let rotated = loop {
            let candidate = suffixed(&self.path, &rotation_stamp(std::time::SystemTime::now()));
            if newest.as_ref().is_none_or(|newest| candidate > *newest) {
                break candidate;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        tracing::info!(trail = %self.path.display(), rotated = %rotated.display(), "audit trail rotated");
        if self.keep > 0 {
            let mut old = rotated_files(&self.path)?;
            while old.len() > self.keep {
                let oldest = old.remove(0);
                fs::remove_file(&oldest)?;
            }
        }
        Ok(())
    }
}

/// `20261204T034512.345Z`: the UTC time of a rotation, as rotated files are named.
fn rotation_stamp(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(time)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Rotated files of the trail at `path`, oldest first.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let Some(stem) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{stem}.");
    let mut found: Vec<PathBuf> = fs::read_dir(folder)?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|name| {
                name.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    Ok(found)
}

fn record_id(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        record_id: String,
    }
    serde_json::from_slice::<Id>(line)
        .ok()
        .map(|id| id.record_id)
}

/// The record id of the file's last complete line.
fn last_record_id(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(tail
        .split(|&b| b == b'\n')
        .rev()
        .find(|line| !line.is_empty())
        .and_then(record_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Vec<Bytes> {
        range
            .map(|n| {
                Bytes::from(format!(
                    r#"{{"record_id":"r{n:04}","pad":"{}"}}"#,
                    "y".repeat(60)
                ))
            })
            .collect()
    }

    fn ids_in(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| record_id(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn the_trail_rotates_by_size_keeps_what_it_should_and_skips_a_batch_sent_again() {
        let folder = std::env::temp_dir().join(format!("fhirgate-trail-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&folder).unwrap();
        let config = config::JsonlSink {
            path: folder.join("audit.jsonl"),
            rotate_bytes: 1000,
            keep: 2,
        };
        let mut trail = TrailFile::open(&config).unwrap();
        for n in 0..5 {
            trail.append(&lines(n * 10..n * 10 + 10)).unwrap();
        }
        let rotated = rotated_files(&config.path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(fs::metadata(&config.path).unwrap().len() <= 1000);
        let last = ids_in(&config.path);
        assert_eq!(last.last().map(String::as_str), Some("r0049"));

        // After a crash the shipper sends its last batch again: only what is new is written,
        // and a torn line left by the crash is cut first.
        drop(trail);
        let mut file = OpenOptions::new().append(true).open(&config.path).unwrap();
        file.write_all(br#"{"record_id":"r00"#).unwrap();
        drop(file);
        let mut trail = TrailFile::open(&config).unwrap();
        trail.append(&lines(40..55)).unwrap();
        let rotated = rotated_files(&config.path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let all: Vec<String> = rotated
            .iter()
            .chain(std::iter::once(&config.path))
            .flat_map(|p| ids_in(p))
            .collect();
        let tail: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .skip_while(|id| *id != "r0040")
            .collect();
        let expected: Vec<String> = (40..55).map(|n| format!("r{n:04}")).collect();
        assert_eq!(
            tail,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let _ = fs::remove_dir_all(&folder);
    }
}
