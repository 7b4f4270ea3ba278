//! Shippers: one task per sink that reads records from the spool at the sink's cursor,
//! delivers them, and moves the cursor only once the sink has acknowledged them.
//!
//! A sink that fails is retried with the same batch, waiting 100 ms and doubling up to the
//! sink's `backoff_max`; the other sinks and the requests go on. Delivery is at least once:
//! after a crash the batch in flight is sent again, with the same record ids.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::sink::Sink;
use super::spool::{Committed, Position, SpoolHandle, list_segments, segment_path};
use crate::metrics::Metrics;

/// Most bytes read from the spool for one batch.
const READ_CHUNK: u64 = 1 << 20;

/// How long a shipper lets records gather before it reads a batch smaller than its
/// `batch` size: under load each read, delivery and cursor write then carries many records
/// instead of one or two. Records are on the spool meanwhile; only their delivery waits.
const LINGER: Duration = Duration::from_millis(20);

/// Records read from the spool, and where the next batch starts.
#[derive(Debug, Default)]
pub struct Batch {
    pub lines: Vec<Bytes>,
    pub next: Position,
}

/// What the shippers are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Ship as records come.
    Ship,
    /// Ship what the spool holds until the deadline, then stop.
    Drain(Instant),
}

/// One sink's delivery loop.
pub struct Shipper {
    pub name: String,
    pub sink: Sink,
    pub batch: usize,
    pub backoff_max: Duration,
    pub spool: SpoolHandle,
    pub metrics: Arc<Metrics>,
}

/// How far behind a sink is, for the metrics.
#[derive(Debug, Default)]
pub struct Lag {
    /// Records appended and not yet acknowledged by the sink.
    pub records: AtomicU64,
    /// Unix time (ms) of the oldest record not yet acknowledged; 0 when none.
    pub oldest_ms: AtomicU64,
}

impl Shipper {
    /// Ships until told to stop; returns once drained or past the drain deadline.
    pub async fn run(mut self, mut control: watch::Receiver<Run>, lag: Arc<Lag>) {
        let shared = self.spool.shared().clone();
        let mut committed = shared.committed();
        let mut cursor = shared.cursor(&self.name);
        let start = *committed.borrow();
        let behind = count_behind(shared.root(), cursor, start.position).await;
        // Records before the cursor, in the numbering of `Committed::records`.
        // May be below zero: records from before this start are behind the cursor too.
        let mut shipped_mark = start.records as i64 - behind as i64;
        loop {
            let now = *committed.borrow_and_update();
            lag.records
                .store(behind_by(now.records, shipped_mark), Ordering::Relaxed);
            let run = *control.borrow();
            if cursor >= now.position {
                lag.oldest_ms.store(0, Ordering::Relaxed);
                if let Run::Drain(_) = run {
                    return;
                }
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    changed = control.changed() => if changed.is_err() { return },
                }
                continue;
            }
            if run == Run::Ship
                && behind_by(now.records, shipped_mark) < self.batch as u64
                && !self.lingered(&mut control).await
            {
                return;
            }
            let now = *committed.borrow_and_update();
            let batch = match read_batch(shared.root(), cursor, now.position, self.batch).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(sink = %self.name, %error, "cannot read the audit spool");
                    if !self.pause(Duration::from_secs(1), &mut control).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.lines.is_empty() {
                if batch.next == cursor {
                    // No whole record yet where the cursor stands: wait for more.
                    if !self.pause(Duration::from_millis(200), &mut control).await {
                        return;
                    }
                    continue;
                }
                // Only segment boundaries (or dropped segments) were crossed.
                if batch.next.segment != cursor.segment {
                    let behind = count_behind(shared.root(), batch.next, now.position).await;
                    shipped_mark = now.records as i64 - behind as i64;
                }
                cursor = batch.next;
                continue;
            }
            if let Some(oldest) = batch.lines.first().and_then(|line| record_time_ms(line)) {
                lag.oldest_ms.store(oldest, Ordering::Relaxed);
            }
            let progress = Progress {
                lag: &lag,
                committed: &committed,
                shipped_mark,
            };
            if !self.deliver(&batch, &mut control, &progress).await {
                return;
            }
            shipped_mark += batch.lines.len() as i64;
            cursor = batch.next;
            if let Err(error) = shared.store_cursor(&self.name, cursor) {
                tracing::warn!(sink = %self.name, %error, "cannot store the sink's cursor; records may be sent again after a restart");
            }
            self.spool.shipped();
        }
    }

    /// Waits [`LINGER`] for more records, or less when told to drain or stop; false when the
    /// control channel is gone.
    async fn lingered(&self, control: &mut watch::Receiver<Run>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(LINGER) => true,
            changed = control.changed() => changed.is_ok(),
        }
    }

    /// Delivers one batch, retrying with backoff; false when told to stop first.
    async fn deliver(
        &mut self,
        batch: &Batch,
        control: &mut watch::Receiver<Run>,
        progress: &Progress<'_>,
    ) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            let delivery = self.sink.deliver(&batch.lines);
            // While draining at shutdown a sink gets no longer than the deadline.
            let run = *control.borrow();
            let outcome = match run {
                Run::Drain(deadline) => match tokio::time::timeout_at(deadline, delivery).await {
                    Ok(outcome) => outcome,
                    Err(_) => return false,
                },
                Run::Ship => delivery.await,
            };
            match outcome {
                Ok(()) => {
                    self.metrics
                        .audit_shipped(&self.name, batch.lines.len() as u64, true);
                    return true;
                }
                Err(error) => {
                    self.metrics.audit_shipped(&self.name, 0, false);
                    progress.update();
                    tracing::warn!(
                        sink = %self.name,
                        %error,
                        records = batch.lines.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "audit sink did not take the batch; retrying"
                    );
                    if !self.pause(jitter(wait), control).await {
                        return false;
                    }
                    wait = (wait * 2).min(self.backoff_max);
                }
            }
        }
    }

    /// Sleeps unless a drain deadline comes first; false when it did.
    async fn pause(&self, wait: Duration, control: &mut watch::Receiver<Run>) -> bool {
        let until = Instant::now() + wait;
        loop {
            let run = *control.borrow_and_update();
            let deadline = match run {
                Run::Ship => until,
                Run::Drain(deadline) if deadline <= Instant::now() => return false,
                Run::Drain(deadline) => deadline.min(until),
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if deadline == until {
                        return true;
                    }
                }
                changed = control.changed() => if changed.is_err() { return false },
            }
        }
    }
}

/// What a shipper stuck on a batch reports while it retries.
struct Progress<'a> {
    lag: &'a Lag,
    committed: &'a watch::Receiver<Committed>,
    shipped_mark: i64,
}

impl Progress<'_> {
    fn update(&self) {
        let records = self.committed.borrow().records;
        self.lag
            .records
            .store(behind_by(records, self.shipped_mark), Ordering::Relaxed);
    }
}

/// Records appended and not yet shipped: `records` appended so far, less the mark of what is
/// behind the cursor in the same numbering.
fn behind_by(records: u64, shipped_mark: i64) -> u64 {
    u64::try_from(records as i64 - shipped_mark).unwrap_or(0)
}

/// A wait made a little shorter or longer at random, so that gateways do not retry in step.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// The `time` of an encoded record, as Unix milliseconds.
fn record_time_ms(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let time: Time<'_> = serde_json::from_slice(line).ok()?;
    let at = humantime::parse_rfc3339(&time.time).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads up to `max` complete records from `from`, never past `upto`.
pub async fn read_batch(
    root: &Path,
    from: Position,
    upto: Position,
    max: usize,
) -> std::io::Result<Batch> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || read_batch_blocking(&root, from, upto, max))
        .await
        .map_err(std::io::Error::other)?
}

fn read_batch_blocking(
    root: &Path,
    from: Position,
    upto: Position,
    max: usize,
) -> std::io::Result<Batch> {
    let mut at = from;
    loop {
        if at >= upto {
            return Ok(Batch {
                lines: Vec::new(),
                next: at,
            });
        }
        let mut file = match std::fs::File::open(segment_path(root, at.segment)) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Dropped while full, or removed by hand: go on at the next segment held.
                let next = list_segments(root)?
                    .into_iter()
                    .map(|(number, _)| number)
                    .find(|number| *number > at.segment);
                at = match next {
                    Some(segment) => Position { segment, offset: 0 },
                    None => upto,
                };
                continue;
            }
            Err(error) => return Err(error),
        };
        let limit = if at.segment == upto.segment {
            upto.offset
        } else {
            file.metadata()?.len()
        };
        if at.offset >= limit {
            if at.segment < upto.segment {
                at = Position {
                    segment: at.segment + 1,
                    offset: 0,
                };
                continue;
            }
            return Ok(Batch {
                lines: Vec::new(),
                next: at,
            });
        }
        let mut length = (limit - at.offset).min(READ_CHUNK);
        let data = loop {
            let mut data = vec![0u8; length as usize];
            file.seek(SeekFrom::Start(at.offset))?;
            file.read_exact(&mut data)?;
            if memchr::memchr(b'\n', &data).is_some() || at.offset + length >= limit {
                break data;
            }
            // One record longer than a chunk: read on to its end.
            length = (length * 2).min(limit - at.offset);
        };
        let data = Bytes::from(data);
        let mut lines = Vec::new();
        let mut consumed = 0usize;
        for end in memchr::memchr_iter(b'\n', &data) {
            if lines.len() == max {
                break;
            }
            let line = data.slice(consumed..end);
            consumed = end + 1;
            if !line.is_empty() {
                lines.push(line);
            }
        }
        return Ok(Batch {
            lines,
            next: Position {
                segment: at.segment,
                offset: at.offset + consumed as u64,
            },
        });
    }
}

/// How many records lie between `from` and `upto`.
async fn count_behind(root: &Path, from: Position, upto: Position) -> u64 {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut count = 0u64;
        let mut at = from;
        while at < upto {
            match read_batch_blocking(&root, at, upto, usize::MAX) {
                Ok(batch) if batch.next == at => break,
                Ok(batch) => {
                    count += batch.lines.len() as u64;
                    at = batch.next;
                }
                Err(_) => break,
            }
        }
        count
    })
    .await
    .unwrap_or(0)
}

impl Lag {
    /// Seconds since the oldest record the sink has not acknowledged; 0 when none.
    pub fn oldest_age(&self) -> f64 {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            oldest => now_ms().saturating_sub(oldest) as f64 / 1000.0,
        }
    }
}

/// The lag of every sink, by name.
pub type Lags = Vec<(String, Arc<Lag>)>;

#[cfg(test)]
mod tests;
