//! `fhirgate audit query`: an accounting of disclosures over the local audit trail, the
//! JSON lines files a `jsonl` sink writes.
//!
//! A [`Filter`] says which records are wanted: a patient (in the token's context or named by
//! the request), a client, a user (subject or `fhirUser`), a decision, and a time range.
//! [`query`] scans the files of one or more [`Trail`]s and returns the matching records in
//! time order, each record once even when the trail holds it twice (records are delivered at
//! least once; copies share a `record_id`). [`render`] writes them as an aligned table or as
//! JSON lines exactly as stored.
//!
//! # Scan strategy
//!
//! A trail of a million records is about 600 MB, and most queries want a few hundred of them,
//! so the scan avoids parsing what cannot match:
//!
//! 1. **Whole files skipped by name.** A rotated file `<path>.<YYYYMMDDTHHMMSSZ>` holds only
//!    records older than its rotation time. When that time (plus one second, as the name is
//!    to the second) is not after `since`, the file is not opened at all.
//! 2. **Large reads.** Files are read in 8 MiB chunks; lines are found with `memchr`, and
//!    every line is checked for the shape of a JSON object (`{` ... `}`), which catches the
//!    usual damage, a record cut short.
//! 3. **A raw-bytes prefilter.** Every value the filter compares a field with (patient, user,
//!    client, decision) must then appear in the line as a JSON string, quotes included, as
//!    the gateway writes it; the most selective one (patient, then user, client, route,
//!    decision) is
//!    looked for first with a prebuilt `memchr::memmem` finder. Lines without it are dropped
//!    before any JSON parsing.
//! 4. **A borrowed parse of the candidates.** Only lines that pass are parsed, into
//!    [`Summary`], which borrows its strings from the line and skips the other fields; the
//!    exact filters are applied to it, and the line is kept only when it matches.
//!
//! With a time range alone every line is parsed. A line that is kept by the prefilter and
//! does not parse as a record is counted as malformed, like a line of the wrong shape; lines
//! the prefilter drops are not parsed, so damage inside them is not seen.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::SystemTime;

mod filter;
pub mod render;
mod scan;
mod summary;
mod trail;

pub use filter::{Filter, parse_time};
pub use summary::{Summary, Text};
pub use trail::{Trail, TrailFile, trails_of};

/// Why a query cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A trail file, or the folder it sits in, cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Neither the file nor any rotated file next to it exists.
    #[error("no audit trail at {path}: neither the file nor rotated files next to it exist")]
    NoTrail { path: PathBuf },
    /// The configuration names no `jsonl` sink, so there is no local trail.
    #[error("{origin}: audit.sinks names no jsonl sink, so there is no local trail to query")]
    NoJsonlSink { origin: String },
    /// A `--since` or `--until` value is neither a duration nor an RFC 3339 time.
    #[error(
        "invalid time {value:?}: give a duration back from now (24h, 90m, 7days) or a UTC time \
         (2026-12-04T03:45:00Z, 2026-12-04)"
    )]
    Time { value: String },
    /// The time range holds no instant.
    #[error("empty time range: since ({since}) is not before until ({until})")]
    EmptyRange { since: String, until: String },
}

/// One matching record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// When the record was made (its `time`).
    pub time: SystemTime,
    /// The record's `record_id`.
    pub record_id: String,
    /// The line as stored, without its line break.
    pub line: String,
}

impl Match {
    /// The fields a reader of the accounting needs, borrowed from the line.
    pub fn summary(&self) -> Result<Summary<'_>, serde_json::Error> {
        serde_json::from_str(&self.line)
    }
}

/// Lines of one file that were skipped as malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The file.
    pub path: PathBuf,
    /// How many lines.
    pub lines: u64,
    /// The first one's line number (from 1).
    pub first_line: u64,
}

/// What a query found.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The matching records in time order (then by record id), each once, at most `limit`.
    pub records: Vec<Match>,
    /// How many distinct records matched, before the limit.
    pub matched: usize,
    /// The files read.
    pub files_read: Vec<PathBuf>,
    /// Rotated files skipped without being opened: all their records are before `since`.
    pub files_skipped: Vec<PathBuf>,
    /// Malformed lines, per file that had any.
    pub malformed: Vec<Malformed>,
}

impl Answer {
    /// Malformed lines in all files.
    pub fn malformed_lines(&self) -> u64 {
        self.malformed.iter().map(|m| m.lines).sum()
    }
}

/// Scans the trails and returns the records `filter` matches, in time order, each once;
/// with `limit`, only the first `limit` of them (`matched` still counts all).
pub fn query(
    trails: &[Trail],
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Answer, QueryError> {
    let plan = scan::Plan::new(filter);
    let mut answer = Answer::default();
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    for file in files_of(trails)? {
        if file.skippable(filter.since) {
            answer.files_skipped.push(file.path);
            continue;
        }
        let found = scan::scan_file(&file.path, &plan)?;
        records.extend(
            found
                .records
                .into_iter()
                .filter(|m| seen.insert(m.record_id.clone())),
        );
        if let Some(malformed) = found.malformed {
            answer.malformed.push(malformed);
        }
        answer.files_read.push(file.path);
    }
    records.sort_unstable_by(|a, b| (a.time, &a.record_id).cmp(&(b.time, &b.record_id)));
    answer.matched = records.len();
    if let Some(limit) = limit {
        records.truncate(limit);
    }
    answer.records = records;
    Ok(answer)
}

/// Every file of the trails, each path once.
fn files_of(trails: &[Trail]) -> Result<Vec<TrailFile>, QueryError> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for trail in trails {
        for file in trail.files()? {
            if seen.insert(file.path.clone()) {
                files.push(file);
            }
        }
    }
    Ok(files)
}
