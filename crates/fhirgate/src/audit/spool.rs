//! The durable spool: audit records appended to segment files before their responses are
//! sent, read back by the shippers, and deleted once every sink has taken them.
//!
//! Layout of the spool folder:
//!
//! ```text
//! segments/00000000000000000007.jsonl   one record per line, appended in order
//! cursors/<sink>.json                   {"segment":7,"offset":123456}: the sink has every
//!                                       record before this position
//! ```
//!
//! The open segment belongs to a [`Writer`] behind a lock. With `fsync: interval` or
//! `never`, a request writes its own line under that lock (one `write` to the page cache;
//! the flusher thread syncs it within the interval), so no record waits for another thread.
//! With `fsync: always`, requests send their lines to the writer thread and wait for its
//! acknowledgement; it writes whatever has queued up in one go (group commit) and syncs it
//! before it acknowledges. Either way a record is in the segment before its response
//! leaves. The writer thread also probes a spool that cannot be written, and frees
//! segments every sink has taken. A torn last line after a crash is cut off when the spool
//! is opened again; its request was never answered.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::config::{Fsync, Spool as SpoolConfig, WhenFull};
use crate::metrics::Metrics;

/// How often a spool that cannot be written is tried again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// The end of what the writer has acknowledged, and how many records that is since the
/// spool was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub position: Position,
    pub records: u64,
}

/// Why a record could not be appended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the audit spool is full ({bytes} bytes of unshipped records)")]
    Full { bytes: u64 },
    #[error("the audit spool cannot be written: {0}")]
    Write(String),
    #[error("the audit spool is closed")]
    Closed,
}

/// Why the spool cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit spool {path}: {source}")]
pub struct SpoolOpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A line waiting to be written, and whom to tell when it is.
type Pending = (Vec<u8>, Acknowledgement);
type Acknowledgement = oneshot::Sender<Result<(), SpoolError>>;

enum Message {
    Append {
        line: Vec<u8>,
        done: Acknowledgement,
    },
    /// A sink's cursor moved: segments behind every cursor may go.
    Shipped,
    Close,
}

/// What the writer and the shippers share.
#[derive(Debug)]
pub struct Shared {
    root: PathBuf,
    /// False while the spool is full or cannot be written: requests are refused before
    /// they reach the upstream.
    accepting: AtomicBool,
    committed: watch::Sender<Committed>,
    /// Each sink's position, as last stored.
    cursors: Mutex<HashMap<String, Position>>,
    /// Bytes in segment files on disk.
    bytes: AtomicU64,
}

/// Appends lines: itself under the writer's lock, or through the writer thread with
/// `fsync: always`.
#[derive(Clone)]
pub struct SpoolHandle {
    sender: std_mpsc::Sender<Message>,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Writer>>,
    /// Lines are written by the appending task (`fsync` is not `always`).
    inline: bool,
}

impl std::fmt::Debug for SpoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolHandle")
            .field("root", &self.shared.root)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`SpoolWriter::close`] writes what is queued and stops it.
#[derive(Debug)]
pub struct SpoolWriter {
    sender: std_mpsc::Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpoolHandle {
    /// Appends one encoded record (a JSON line without its newline) and waits until the
    /// writer has it on disk as the fsync policy says.
    pub async fn append(&self, mut line: Vec<u8>) -> Result<(), SpoolError> {
        line.push(b'\n');
        if self.inline {
            return self.writer.lock().expect("spool writer").append_one(&line);
        }
        let (done, acknowledged) = oneshot::channel();
        self.sender
            .send(Message::Append { line, done })
            .map_err(|_| SpoolError::Closed)?;
        acknowledged.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Whether new requests may be taken.
    pub fn accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Relaxed)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Tells the writer that a sink's cursor moved.
    pub fn shipped(&self) {
        let _ = self.sender.send(Message::Shipped);
    }
}

impl Shared {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// The stored position of `sink`, or the start of the oldest segment.
    pub fn cursor(&self, sink: &str) -> Position {
        self.cursors
            .lock()
            .expect("cursor map")
            .get(sink)
            .copied()
            .unwrap_or_default()
    }

    /// Stores `sink`'s position (atomically, by rename) and records it for clean-up.
    pub fn store_cursor(&self, sink: &str, position: Position) -> std::io::Result<()> {
        // In memory first: segments the sink has can go even when the disk is too full to
        // store the cursor file (after a restart the sink then gets some records again).
        self.cursors
            .lock()
            .expect("cursor map")
            .insert(sink.to_owned(), position);
        let path = cursor_path(&self.root, sink);
        let temporary = path.with_extension("json.tmp");
        fs::write(
            &temporary,
            serde_json::to_vec(&position).expect("positions serialise"),
        )?;
        fs::rename(&temporary, &path)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl SpoolWriter {
    /// Writes every line queued so far, syncs the segment, then stops the writer.
    pub async fn close(mut self) {
        let _ = self.sender.send(Message::Close);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Opens (creating when missing) the spool for the named sinks and starts its writer.
pub fn open(
    config: &SpoolConfig,
    sinks: &[String],
    metrics: Arc<Metrics>,
) -> Result<(SpoolHandle, SpoolWriter), SpoolOpenError> {
    let root = config.path.clone();
    let failed = |source| SpoolOpenError {
        path: root.clone(),
        source,
    };
    fs::create_dir_all(root.join("segments")).map_err(failed)?;
    fs::create_dir_all(root.join("cursors")).map_err(failed)?;
    let lock = File::create(root.join("lock")).map_err(failed)?;
    if lock.try_lock().is_err() {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another fhirgate process uses this spool; give each process a spool of its own",
        )));
    }
    let mut segments = list_segments(&root).map_err(failed)?;
    if segments.is_empty() {
        File::create(segment_path(&root, 0)).map_err(failed)?;
        segments.push((0, 0));
    }
    let (last, _) = *segments.last().expect("one segment at least");
    let end = cut_torn_line(&segment_path(&root, last)).map_err(failed)?;
    segments.last_mut().expect("one segment").1 = end;
    let oldest = segments[0].0;
    let mut cursors = HashMap::new();
    for sink in sinks {
        let stored = read_cursor(&root, sink);
        let position = clamp(stored, &segments, oldest);
        cursors.insert(sink.clone(), position);
    }
    let file = OpenOptions::new()
        .append(true)
        .open(segment_path(&root, last))
        .map_err(failed)?;
    let committed = Committed {
        position: Position {
            segment: last,
            offset: end,
        },
        records: 0,
    };
    let shared = Arc::new(Shared {
        root: root.clone(),
        accepting: AtomicBool::new(true),
        committed: watch::Sender::new(committed),
        cursors: Mutex::new(cursors),
        bytes: AtomicU64::new(segments.iter().map(|(_, size)| size).sum()),
    });
    let flusher = match config.fsync {
        Fsync::Interval => Some(Flusher::start(&file, config.fsync_interval).map_err(failed)?),
        Fsync::Always | Fsync::Never => None,
    };
    let (sender, receiver) = std_mpsc::channel();
    let inline = config.fsync != Fsync::Always;
    let mut writer = Writer {
        lock: Some(lock),
        config: config.clone(),
        shared: shared.clone(),
        sinks: sinks.to_vec(),
        segments,
        file,
        end: committed.position,
        records: 0,
        dirty: false,
        failing: false,
        last_probe: std::time::Instant::now(),
        flusher,
        metrics,
        closed: false,
    };
    writer.collect_garbage();
    writer.report();
    let writer = Arc::new(Mutex::new(writer));
    let running = writer.clone();
    let thread = std::thread::Builder::new()
        .name("fhirgate-audit-spool".into())
        .spawn(move || Writer::run(&running, &receiver))
        .map_err(failed)?;
    let handle = SpoolHandle {
        sender: sender.clone(),
        shared,
        writer,
        inline,
    };
    let writer = SpoolWriter {
        sender,
        thread: Some(thread),
    };
    Ok((handle, writer))
}

/// Checks, without writing, that the spool's folder exists or can be made in an existing
/// folder.
pub fn preflight(config: &SpoolConfig) -> Result<(), SpoolOpenError> {
    let path = &config.path;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let problem = if path.exists() {
        (!path.is_dir()).then(|| "exists and is not a folder".to_owned())
    } else {
        (!parent.is_dir()).then(|| format!("the folder {} does not exist", parent.display()))
    };
    match problem {
        Some(problem) => Err(SpoolOpenError {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, problem),
        }),
        None => Ok(()),
    }
}

/// The writer thread's state.
struct Writer {
    /// Held until the spool is closed: one process per spool.
    lock: Option<File>,
    config: SpoolConfig,
    shared: Arc<Shared>,
    sinks: Vec<String>,
    /// Segments on disk, oldest first, with their sizes.
    segments: Vec<(u64, u64)>,
    file: File,
    end: Position,
    records: u64,
    /// Written since the last sync.
    dirty: bool,
    /// The last write failed: requests are refused until a probe write succeeds.
    failing: bool,
    last_probe: std::time::Instant,
    /// With `fsync: interval`, the thread that flushes the open segment.
    flusher: Option<Flusher>,
    metrics: Arc<Metrics>,
    /// The spool was closed: nothing more is appended.
    closed: bool,
}

/// Flushes the open segment to stable storage every `fsync_interval` on a thread of its own,
/// so that with `fsync: interval` no append ever waits for the disk's flush.
struct Flusher {
    /// The newly opened segment after a rotation (the previous one is flushed first).
    next: std_mpsc::Sender<File>,
    state: Arc<FlushState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct FlushState {
    /// Written since the last flush.
    dirty: AtomicBool,
    /// A flush failed: the writer treats the spool as unwritable.
    failed: AtomicBool,
}

impl Flusher {
    fn start(file: &File, interval: Duration) -> std::io::Result<Self> {
        let mut current = file.try_clone()?;
        let state = Arc::new(FlushState::default());
        let (next, segments) = std_mpsc::channel::<File>();
        let flushing = state.clone();
        let thread = std::thread::Builder::new()
            .name("fhirgate-audit-flush".into())
            .spawn(move || {
                let flush = |file: &File| {
                    if let Err(error) = file.sync_data() {
                        tracing::error!(%error, "audit spool flush failed");
                        flushing.failed.store(true, Ordering::Relaxed);
                    }
                };
                loop {
                    match segments.recv_timeout(interval) {
                        Ok(file) => {
                            flush(&current);
                            current = file;
                        }
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {
                            if flushing.dirty.swap(false, Ordering::Relaxed) {
                                flush(&current);
                            }
                        }
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                            flush(&current);
                            return;
                        }
                    }
                }
            })?;
        Ok(Self {
            next,
            state,
            thread: Some(thread),
        })
    }

    /// Flushes what is left and stops the thread.
    fn stop(mut self) {
        drop(self.next);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// The writer thread: group commits with `fsync: always`, probes and clean-up always.
    fn run(writer: &Mutex<Writer>, receiver: &std_mpsc::Receiver<Message>) {
        let lock = || writer.lock().expect("spool writer");
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            let wait = if lock().failing {
                PROBE_INTERVAL
            } else {
                Duration::from_secs(1)
            };
            let first = match receiver.recv_timeout(wait) {
                Ok(message) => message,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    lock().idle();
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut closing = false;
            let mut shipped = false;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Append { line, done } => batch.push((line, done)),
                    Message::Shipped => shipped = true,
                    Message::Close => closing = true,
                }
                if !closing {
                    next = receiver.try_recv().ok();
                }
            }
            let mut this = lock();
            this.probe_when_due();
            if shipped {
                this.collect_garbage();
                this.update_accepting();
            }
            if !batch.is_empty() {
                this.append(&mut batch);
            }
            this.update_accepting();
            this.report();
            if closing {
                break;
            }
        }
        let mut this = lock();
        this.closed = true;
        match this.flusher.take() {
            Some(flusher) => flusher.stop(),
            None if this.dirty => {
                let _ = this.file.sync_data();
            }
            None => {}
        }
        // Another process may take the spool from here.
        this.lock = None;
    }

    /// Requests keep coming while the disk fails: probe on time, not on silence.
    fn probe_when_due(&mut self) {
        if self.failing && self.last_probe.elapsed() >= PROBE_INTERVAL {
            self.probe();
        }
    }

    /// Nothing arrived for a while: probe a failing disk, free what was shipped.
    fn idle(&mut self) {
        self.check_flushes();
        if self.failing {
            self.probe();
        }
        self.collect_garbage();
        self.update_accepting();
        self.report();
    }

    /// Writes the queued lines in one go and tells each sender the outcome.
    fn append(&mut self, batch: &mut Vec<Pending>) {
        let bytes: usize = batch.iter().map(|(line, _)| line.len()).sum();
        let mut data = Vec::with_capacity(bytes);
        for (line, _) in batch.iter() {
            data.extend_from_slice(line);
        }
        let outcome = self.commit(&data, batch.len() as u64);
        for (_, done) in batch.drain(..) {
            let _ = done.send(outcome.clone());
        }
    }

    /// Writes one line for the task appending it (`fsync` is not `always`).
    fn append_one(&mut self, line: &[u8]) -> Result<(), SpoolError> {
        if self.closed {
            return Err(SpoolError::Closed);
        }
        self.probe_when_due();
        let outcome = self.commit(line, 1);
        self.update_accepting();
        self.report();
        outcome
    }

    /// Makes room for `data` (`records` whole lines), writes it, and publishes the new end.
    fn commit(&mut self, data: &[u8], records: u64) -> Result<(), SpoolError> {
        let bytes = data.len() as u64;
        self.make_room(bytes).and_then(|()| self.write(data))?;
        self.records += records;
        self.metrics.audit_appended(records);
        self.shared.committed.send_replace(Committed {
            position: self.end,
            records: self.records,
        });
        Ok(())
    }

    /// A failed flush on the flusher's thread makes the spool unwritable like a failed write.
    fn check_flushes(&mut self) {
        let failed = self
            .flusher
            .as_ref()
            .is_some_and(|f| f.state.failed.swap(false, Ordering::Relaxed));
        if failed {
            self.fail(&std::io::Error::other("flushing the segment failed"));
        }
    }

    /// Rotates the segment when the batch would overflow it, and frees space when the spool
    /// is full: by waiting for the sinks (refuse) or by dropping the oldest segment.
    fn make_room(&mut self, bytes: u64) -> Result<(), SpoolError> {
        self.check_flushes();
        if self.failing {
            return Err(SpoolError::Write("the last write failed".into()));
        }
        if self.end.offset > 0 && self.end.offset + bytes > self.config.segment_bytes {
            self.rotate()?;
        }
        while self.shared.bytes() + bytes > self.config.max_bytes {
            self.collect_garbage();
            if self.shared.bytes() + bytes <= self.config.max_bytes {
                break;
            }
            match self.config.when_full {
                WhenFull::Refuse => {
                    self.shared.accepting.store(false, Ordering::Relaxed);
                    return Err(SpoolError::Full {
                        bytes: self.shared.bytes(),
                    });
                }
                WhenFull::DropOldest => {
                    if !self.drop_oldest() {
                        return Err(SpoolError::Full {
                            bytes: self.shared.bytes(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let bytes = data.len() as u64;
        if let Err(error) = self.file.write_all(data) {
            return Err(self.fail(&error));
        }
        self.end.offset += bytes;
        self.segments.last_mut().expect("open segment").1 = self.end.offset;
        self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.dirty = true;
        if let Some(flusher) = &self.flusher {
            flusher.state.dirty.store(true, Ordering::Relaxed);
        }
        if self.config.fsync == Fsync::Always && !self.sync() {
            return Err(SpoolError::Write("cannot sync the segment".into()));
        }
        Ok(())
    }

    /// A write failed: cut the segment back to its last good end and refuse requests until
    /// a probe write succeeds.
    fn fail(&mut self, error: &std::io::Error) -> SpoolError {
        tracing::error!(%error, spool = %self.shared.root.display(), "audit spool write failed; refusing requests until it can be written");
        let _ = self.file.set_len(self.end.offset);
        self.failing = true;
        self.shared.accepting.store(false, Ordering::Relaxed);
        self.metrics.audit_spool_write_failed();
        SpoolError::Write(error.to_string())
    }

    fn sync(&mut self) -> bool {
        match self.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                true
            }
            Err(error) => {
                self.fail(&error);
                false
            }
        }
    }

    /// Writes and removes a small file: when it works, the spool is writable again.
    fn probe(&mut self) {
        self.last_probe = std::time::Instant::now();
        // Where segments are made: a new one must be possible, not only a write to the root.
        let path = self.shared.root.join("segments").join("probe");
        let written = File::create(&path).and_then(|mut file| {
            file.write_all(&[b'\n'; 4096])?;
            file.sync_data()
        });
        let _ = fs::remove_file(&path);
        let reopened = written.and_then(|()| {
            let path = segment_path(&self.shared.root, self.end.segment);
            let file = OpenOptions::new().append(true).open(&path)?;
            file.set_len(self.end.offset)?;
            Ok(file)
        });
        match reopened {
            Ok(file) => {
                self.file = file;
                self.failing = false;
                tracing::info!(spool = %self.shared.root.display(), "audit spool writable again");
            }
            Err(error) => {
                tracing::debug!(%error, "audit spool still not writable");
            }
        }
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.config.fsync == Fsync::Always && self.dirty && !self.sync() {
            return Err(SpoolError::Write("cannot sync the segment".into()));
        }
        let next = self.end.segment + 1;
        let path = segment_path(&self.shared.root, next);
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|file| {
                if let Some(flusher) = &self.flusher {
                    // The flusher flushes the segment it had before it takes this one.
                    let _ = flusher.next.send(file.try_clone()?);
                }
                Ok(file)
            });
        match opened {
            Ok(file) => {
                self.file = file;
                self.end = Position {
                    segment: next,
                    offset: 0,
                };
                self.segments.push((next, 0));
                Ok(())
            }
            Err(error) => Err(self.fail(&error)),
        }
    }

    /// Deletes segments every sink has read past.
    fn collect_garbage(&mut self) {
        let cursors = self.shared.cursors.lock().expect("cursor map").clone();
        let lowest = self
            .sinks
            .iter()
            .map(|sink| cursors.get(sink).copied().unwrap_or_default().segment)
            .min()
            .unwrap_or(self.end.segment)
            .min(self.end.segment);
        while self.segments.len() > 1 && self.segments[0].0 < lowest {
            let (segment, size) = self.segments.remove(0);
            if let Err(error) = fs::remove_file(segment_path(&self.shared.root, segment)) {
                tracing::warn!(%error, segment, "cannot delete a shipped audit segment");
            }
            self.shared.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Deletes the oldest segment although some sink has not taken it; false when only the
    /// open one is left.
    fn drop_oldest(&mut self) -> bool {
        if self.segments.len() < 2 {
            return false;
        }
        let (segment, size) = self.segments.remove(0);
        let path = segment_path(&self.shared.root, segment);
        let lines = fs::read(&path).map_or(0, |data| count_lines(&data));
        let _ = fs::remove_file(&path);
        self.shared.bytes.fetch_sub(size, Ordering::Relaxed);
        self.metrics.audit_dropped(lines);
        tracing::error!(
            segment,
            records = lines,
            "audit spool full: dropped its oldest segment before every sink had it"
        );
        true
    }

    /// Takes requests while a tenth of the spool is free and writes work. Requests are
    /// refused from 90 % on, so that those already admitted still find room for their records.
    fn update_accepting(&self) {
        let room = self.shared.bytes() + self.config.max_bytes / 10 <= self.config.max_bytes;
        let accepting = !self.failing && (room || self.config.when_full == WhenFull::DropOldest);
        let was = self.shared.accepting.swap(accepting, Ordering::Relaxed);
        if accepting && !was {
            tracing::info!("audit spool has room again; taking requests");
        } else if was && !accepting && !self.failing {
            tracing::error!(
                bytes = self.shared.bytes(),
                max_bytes = self.config.max_bytes,
                "audit spool 90% full: refusing requests until the sinks catch up"
            );
        }
    }

    fn report(&self) {
        self.metrics.audit_spool(
            self.shared.bytes(),
            self.shared.accepting.load(Ordering::Relaxed),
        );
    }
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

pub(crate) fn segment_path(root: &Path, segment: u64) -> PathBuf {
    root.join("segments").join(format!("{segment:020}.jsonl"))
}

fn cursor_path(root: &Path, sink: &str) -> PathBuf {
    root.join("cursors").join(format!("{sink}.json"))
}

/// Segment numbers and sizes, oldest first.
pub(crate) fn list_segments(root: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(root.join("segments"))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((number, entry.metadata()?.len()));
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Cuts a partly written last line off the segment; returns its new length.
pub(crate) fn cut_torn_line(path: &Path) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let length = file.metadata()?.len();
    let mut end = length;
    let mut buffer = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buffer.len() as u64);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if end < length {
        tracing::warn!(
            segment = %path.display(),
            bytes = length - end,
            "audit spool: cut a torn last record (its request was never answered)"
        );
        file.set_len(end)?;
    }
    Ok(end)
}

fn read_cursor(root: &Path, sink: &str) -> Option<Position> {
    let data = fs::read(cursor_path(root, sink)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// A stored cursor made valid for the segments on disk: a new sink, or one whose segments
/// were dropped, starts at the oldest record held.
fn clamp(stored: Option<Position>, segments: &[(u64, u64)], oldest: u64) -> Position {
    let start = Position {
        segment: oldest,
        offset: 0,
    };
    let Some(stored) = stored else {
        return start;
    };
    match segments
        .iter()
        .find(|(number, _)| *number == stored.segment)
    {
        Some((_, size)) => Position {
            segment: stored.segment,
            offset: stored.offset.min(*size),
        },
        // A segment not on disk (deleted by hand, or a spool wiped): sending records again
        // is better than skipping any.
        None => {
            tracing::warn!(
                segment = stored.segment,
                "audit sink cursor names a segment the spool does not hold; shipping from the oldest record held"
            );
            start
        }
    }
}
