//! The `audit` section: the durable spool and the sinks records are shipped to.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use super::{HttpUrl, duration};

/// Where the audit trail goes: every record is appended to the spool before its response
/// is sent, then shipped to each sink on its own.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// The local spool every record is written to first.
    pub spool: Spool,
    /// Sinks by name; the name keys the sink's cursor in the spool, so renaming a sink makes
    /// it start again from the oldest record the spool holds.
    pub sinks: IndexMap<String, Sink>,
}

/// The durable local spool.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// Folder of segment files and sink cursors; created when missing.
    pub path: PathBuf,
    /// Most bytes of unshipped records held; what happens beyond is `when_full`.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a new segment file is started; shipped segments are deleted whole.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// When appended records are flushed to stable storage.
    #[serde(default)]
    pub fsync: Fsync,
    /// With `fsync: interval`, how often.
    #[serde(default = "default_fsync_interval", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub fsync_interval: Duration,
    /// What to do when the spool holds `max_bytes` of records no sink has taken yet.
    #[serde(default)]
    pub when_full: WhenFull,
}

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// Before the response of each request is sent (batched across concurrent requests):
    /// records survive a power loss.
    Always,
    /// Every `fsync_interval`: records survive a crash of the process at once, and a power
    /// loss except the last interval.
    #[default]
    Interval,
    /// Left to the operating system.
    Never,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Refuse new requests with 503 until the sinks catch up: no record is lost.
    #[default]
    Refuse,
    /// Delete the oldest segment, unshipped records and all, and count them as dropped.
    DropOldest,
}

/// One destination of audit records.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Sink {
    /// A JSON lines file, one record per line, rotated by size.
    Jsonl(JsonlSink),
    /// JSON lines on standard output (logs go to standard error).
    Stdout(StdoutSink),
    /// Batches of records POSTed as a JSON array; any 2xx acknowledges a batch.
    Http(NetworkSink),
    /// FHIR AuditEvents (IHE BALP shapes) in batch Bundles, `PUT AuditEvent/<record id>`.
    Fhir(NetworkSink),
}

/// A JSON lines file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSink {
    /// The file appended to; rotated files sit next to it as `<path>.<UTC time>`, e.g.
    /// `audit.jsonl.20261204T034512.345Z`, so their names sort in time order.
    pub path: PathBuf,
    /// Size after which the file is rotated.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated files kept; older ones are deleted. 0 keeps them all.
    #[serde(default)]
    pub keep: usize,
}

/// Standard output.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {}

/// A network sink: an HTTP collector taking JSON arrays of records, or a FHIR server taking
/// AuditEvents (which may be another server than the clinical one).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSink {
    /// Where batches are POSTed: the collector's URL, or the FHIR base URL.
    pub url: HttpUrl,
    /// FHIR sinks only: `AuditEvent.source.site`.
    #[serde(default)]
    pub site: Option<String>,
    /// Most records per request.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Time allowed for one request.
    #[serde(default = "default_sink_timeout", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub timeout: Duration,
    /// Longest wait between retries (they start at 100 ms and double).
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    #[schemars(with = "super::schema::DurationText")]
    pub backoff_max: Duration,
    /// A file holding a bearer token sent as `Authorization`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding that token, instead of a file.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
}

impl Audit {
    /// Rules spanning several keys; `(key, message)` on the first broken one.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.sinks.is_empty() {
            return Err((
                "audit.sinks".into(),
                "name at least one sink (jsonl, stdout, http or fhir)".into(),
            ));
        }
        for (name, sink) in &self.sinks {
            let key = |k: &str| format!("audit.sinks.{name}{k}");
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            if !plain {
                return Err((
                    key(""),
                    "sink names are 1 to 64 letters, digits, '-' or '_'".into(),
                ));
            }
            match sink {
                Sink::Jsonl(file) if file.rotate_bytes == 0 => {
                    return Err((key(".jsonl.rotate_bytes"), "must be at least 1".into()));
                }
                Sink::Http(http) if http.site.is_some() => {
                    return Err((key(".http.site"), "only FHIR sinks name a site".into()));
                }
                Sink::Http(network) | Sink::Fhir(network) => {
                    if network.batch == 0 {
                        return Err((key(".batch"), "must be at least 1".into()));
                    }
                    if network.timeout.is_zero() {
                        return Err((key(".timeout"), "must be longer than zero".into()));
                    }
                }
                Sink::Jsonl(_) | Sink::Stdout(_) => {}
            }
        }
        let spool = &self.spool;
        if spool.segment_bytes < 4096 {
            return Err((
                "audit.spool.segment_bytes".into(),
                "must be at least 4096".into(),
            ));
        }
        if spool.max_bytes < 2 * spool.segment_bytes {
            return Err((
                "audit.spool.max_bytes".into(),
                "must be at least twice audit.spool.segment_bytes".into(),
            ));
        }
        if spool.fsync == Fsync::Interval && spool.fsync_interval.is_zero() {
            return Err((
                "audit.spool.fsync_interval".into(),
                "must be longer than zero".into(),
            ));
        }
        Ok(())
    }
}

impl Sink {
    /// How a network sink is called; `None` for local ones.
    pub fn network(&self) -> Option<&NetworkSink> {
        match self {
            Self::Http(network) | Self::Fhir(network) => Some(network),
            Self::Jsonl(_) | Self::Stdout(_) => None,
        }
    }
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_segment_bytes() -> u64 {
    16 << 20
}
fn default_fsync_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_rotate_bytes() -> u64 {
    256 << 20
}
fn default_batch() -> usize {
    100
}
fn default_sink_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
