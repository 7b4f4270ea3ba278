//! Scanning one trail file: large reads, a raw-bytes prefilter, and a borrowed parse of the
//! lines that pass it.

use std::io::Read as _;
use std::path::Path;

use memchr::memmem::Finder;

use super::{Filter, Malformed, Match, QueryError, Summary};

/// Bytes read from a file at a time.
const CHUNK: usize = 8 << 20;

/// A filter made ready for scanning: its values as byte finders.
pub(super) struct Plan {
    filter: Filter,
    needles: Vec<Finder<'static>>,
}

impl Plan {
    /// Prepares `filter` for scanning.
    pub(super) fn new(filter: &Filter) -> Self {
        let needles = filter
            .needles()
            .into_iter()
            .map(|n| Finder::new(n.as_bytes()).into_owned())
            .collect();
        Self {
            filter: filter.clone(),
            needles,
        }
    }

    /// Whether the line can match: it holds every value the filter names.
    fn candidate(&self, line: &[u8]) -> bool {
        self.needles.iter().all(|n| n.find(line).is_some())
    }
}

/// What one file held.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Matching records, in file order, copies included.
    pub(super) records: Vec<Match>,
    pub(super) malformed: Option<Malformed>,
}

/// Reads the file at `path` and returns the records `plan` matches.
pub(super) fn scan_file(path: &Path, plan: &Plan) -> Result<Found, QueryError> {
    let read_error = |source| QueryError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut lines = Lines::new(path, plan);
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match file.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if n == 0 {
            lines.take_all(&buf[..filled]);
            break;
        }
        filled += n;
        let Some(last_break) = memchr::memrchr(b'\n', &buf[..filled]) else {
            continue;
        };
        lines.take_all(&buf[..last_break]);
        buf.copy_within(last_break + 1..filled, 0);
        filled -= last_break + 1;
    }
    Ok(lines.found)
}

/// The line-by-line state of a scan.
struct Lines<'p> {
    path: &'p Path,
    plan: &'p Plan,
    line_no: u64,
    found: Found,
}

impl<'p> Lines<'p> {
    fn new(path: &'p Path, plan: &'p Plan) -> Self {
        Self {
            path,
            plan,
            line_no: 0,
            found: Found::default(),
        }
    }

    /// Takes the lines of `text`: whole lines, the last one without its line break.
    fn take_all(&mut self, text: &[u8]) {
        if text.is_empty() {
            return;
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', text) {
            self.take(&text[start..end]);
            start = end + 1;
        }
        self.take(&text[start..]);
    }

    /// Takes one line.
    fn take(&mut self, line: &[u8]) {
        self.line_no += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return;
        }
        if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
            self.malformed();
            return;
        }
        if !self.plan.candidate(line) {
            return;
        }
        match matching(line, &self.plan.filter) {
            Ok(Some(found)) => self.found.records.push(found),
            Ok(None) => {}
            Err(NotARecord) => self.malformed(),
        }
    }

    /// Counts the current line as malformed.
    fn malformed(&mut self) {
        let line_no = self.line_no;
        self.found
            .malformed
            .get_or_insert_with(|| Malformed {
                path: self.path.to_owned(),
                lines: 0,
                first_line: line_no,
            })
            .lines += 1;
    }
}

/// A line that does not hold an audit record.
struct NotARecord;

/// The line as a match when it is a record `filter` matches.
fn matching(line: &[u8], filter: &Filter) -> Result<Option<Match>, NotARecord> {
    let text = std::str::from_utf8(line).map_err(|_| NotARecord)?;
    let summary: Summary<'_> = serde_json::from_str(text).map_err(|_| NotARecord)?;
    let time = humantime::parse_rfc3339(summary.time.as_str()).map_err(|_| NotARecord)?;
    if !(filter.matches(&summary) && filter.covers(time)) {
        return Ok(None);
    }
    Ok(Some(Match {
        time,
        record_id: summary.record_id.as_str().to_owned(),
        line: text.to_owned(),
    }))
}
