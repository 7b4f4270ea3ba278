//! The files of a trail: the file a `jsonl` sink appends to, and the rotated files next to
//! it, `<path>.<UTC time of rotation as YYYYMMDDTHHMMSSZ>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::QueryError;
use crate::config::{Audit, Sink};

/// A trail: the path a `jsonl` sink appends to. Its rotated files are found next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trail {
    pub path: PathBuf,
}

/// One file of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailFile {
    pub path: PathBuf,
    /// For a rotated file, its rotation time: every record in it is older.
    pub rotated: Option<SystemTime>,
}

/// The trails of an audit configuration: one per `jsonl` sink. `origin` names the
/// configuration in the error when it has none.
pub fn trails_of(audit: &Audit, origin: &str) -> Result<Vec<Trail>, QueryError> {
    let trails: Vec<Trail> = audit
        .sinks
        .values()
        .filter_map(|sink| match sink {
            Sink::Jsonl(file) => Some(Trail {
                path: file.path.clone(),
            }),
            _ => None,
        })
        .collect();
    if trails.is_empty() {
        return Err(QueryError::NoJsonlSink {
            origin: origin.to_owned(),
        });
    }
    Ok(trails)
}

impl Trail {
    /// The file itself (when it exists) and its rotated files, oldest first, the file last.
    pub fn files(&self) -> Result<Vec<TrailFile>, QueryError> {
        let mut files = self.rotated_files()?;
        files.sort_by_key(|f| f.rotated);
        match std::fs::metadata(&self.path) {
            Ok(_) => files.push(TrailFile {
                path: self.path.clone(),
                rotated: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !files.is_empty() => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QueryError::NoTrail {
                    path: self.path.clone(),
                });
            }
            Err(source) => {
                return Err(QueryError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        Ok(files)
    }

    /// The rotated files next to the trail's file.
    fn rotated_files(&self) -> Result<Vec<TrailFile>, QueryError> {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let folder = match self.path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => Path::new("."),
        };
        let entries = match std::fs::read_dir(folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(QueryError::Read {
                    path: folder.to_owned(),
                    source,
                });
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| QueryError::Read {
                path: folder.to_owned(),
                source,
            })?;
            let entry_name = entry.file_name();
            let rotated = entry_name
                .to_str()
                .and_then(|n| n.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(rotation_time);
            if let Some(rotated) = rotated {
                files.push(TrailFile {
                    path: self.path.with_file_name(entry_name),
                    rotated: Some(rotated),
                });
            }
        }
        Ok(files)
    }
}

impl TrailFile {
    /// Whether no record in the file can be at or after `since`: a rotated file whose
    /// rotation time, plus the second its name leaves out, is not after `since`.
    pub fn skippable(&self, since: Option<SystemTime>) -> bool {
        match (self.rotated, since) {
            (Some(rotated), Some(since)) => rotated + Duration::from_secs(1) <= since,
            _ => false,
        }
    }
}

/// The time in a rotated file's suffix: `YYYYMMDDTHHMMSS.mmmZ` as the JSON lines sink names
/// rotated files, or `YYYYMMDDTHHMMSSZ`. A `-N` after it (files rotated within the same
/// instant) is ignored.
fn rotation_time(suffix: &str) -> Option<SystemTime> {
    let stamp = suffix.split_once('-').map_or(suffix, |(stamp, _)| stamp);
    let b = stamp.as_bytes();
    let (seconds, fraction) = match b.len() {
        16 => (&stamp[..15], ""),
        20 if b[15] == b'.' && b[16..19].iter().all(u8::is_ascii_digit) => {
            (&stamp[..15], &stamp[15..19])
        }
        _ => return None,
    };
    let sb = seconds.as_bytes();
    let shaped = sb[8] == b'T'
        && b[b.len() - 1] == b'Z'
        && sb[..8].iter().chain(&sb[9..15]).all(u8::is_ascii_digit);
    if !shaped {
        return None;
    }
    let s = seconds;
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}{fraction}Z",
        &s[..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_times_are_read_from_the_suffix() {
        let at = rotation_time("20261204T034500Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339(at).to_string(),
            "2026-12-04T03:45:00Z"
        );
        let at = rotation_time("20261204T034500.250Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_millis(at).to_string(),
            "2026-12-04T03:45:00.250Z"
        );
        assert_eq!(rotation_time("20261204T034500.250Z-2"), Some(at));
        for not in [
            "20261204T034500",
            "20261204T034500.25Z",
            "20261204-034500Z",
            "2026120xT034500Z",
            "20261304T034500Z",
            "gz",
        ] {
            assert_eq!(rotation_time(not), None, "{not}");
        }
    }

    #[test]
    fn a_rotated_file_is_skipped_only_when_all_of_it_is_before_since() {
        let rotated = humantime::parse_rfc3339("2026-12-04T03:45:00Z").unwrap();
        let file = TrailFile {
            path: "a.jsonl.20261204T034500Z".into(),
            rotated: Some(rotated),
        };
        let at = |s| Some(humantime::parse_rfc3339(s).unwrap());
        assert!(file.skippable(at("2026-12-04T03:45:01Z")));
        assert!(!file.skippable(at("2026-12-04T03:45:00.999Z")));
        assert!(!file.skippable(None));
        let live = TrailFile {
            rotated: None,
            ..file
        };
        assert!(!live.skippable(at("2030-01-01T00:00:00Z")));
    }
}
