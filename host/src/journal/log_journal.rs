//! The default journal: mneme's commit log as the source of truth (`log/`), and a
//! fjall index derived from it (`index.rs`).
//!
//! ```text
//! DATA/log/      segments, COMMITTED, LOCK          (the commit log)
//! DATA/index/    fjall: pid -> events, tag -> events, snapshots, timers, `through`,
//!                pending outbox entries, applied idempotency keys, topic messages
//! ```
//!
//! A write (`Journal::write`, and a timer stored or removed) is one frame: its
//! records are encoded into a body (`body.rs`), appended and `fdatasync`ed by the
//! log, and only then indexed, without a sync of the index. `Ok` means the
//! frame is durable; the index may lag it after a crash and is brought up to
//! date from the log when the journal opens.
//!
//! Indexing is pipelined: `write` returns once its frame is durable and hands the
//! frame to the indexer thread, which indexes frames in log order while the next
//! frame is appended and synced (the sync's wait and the index's work overlap).
//! Nothing reads a lagging index: every read first waits until each frame
//! appended before it began is indexed (so a reply's events are readable as soon
//! as the reply is out), and a write that needs the index (a persistence id or
//! topic it does not remember, a projection's offset) waits for all of them. The
//! index is applied only after its frame's sync, so after a crash it never runs
//! ahead of the log.
//!
//! Failures while serving, and how they heal without a restart:
//!
//! * The log's append fails (a full disk, an I/O error, a failed sync): that
//!   batch fails with nothing of it visible (the log guarantees it), `health`
//!   reports the error, and the next write simply tries again.
//! * Indexing fails after the frame is durable (fjall could not write: a full
//!   disk): the batch *is* durable and is acknowledged, but the index is dropped
//!   and marked behind. Every later read and write first reopens it and indexes
//!   the log from the index's own `through` (at most once a second while it
//!   keeps failing); until that works they fail with a storage error (503), so a
//!   stale index is never read.
//!
//! Reads check that the record an index entry points at is the one the key names
//! (persistence id and sequence number, or tag and offset), so a damaged index is
//! reported, not served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use super::body::{self, BodyBuilder, Record};
use super::codec;
use super::index::{index_frame, Index, Loc, Through};
use super::keys::WriterState;
use super::lock::DataLock;
use super::log::{CommitLog, LogError, LogIo, LogOptions, LogReader, Position, StdIo};
use super::outbox::{self, OutboxEntry, StoredTopicMessage};
use super::outbox_index;
use super::views::{self, ProjectionBatch, ProjectionOffset, ViewUpdate};
use super::{EventRef, Journal, JournalError, JournalResult, Snapshot, StoredEvent, Timer, WriteBatch};

/// Records at most this far apart are read together (see `read_many`).
const SPAN_GAP: u64 = 64 << 10;
/// The longest span read at once.
const SPAN_MAX: u64 = 4 << 20;
/// The largest span buffer a thread keeps between reads (see `SPAN_BUFFER`).
const SPAN_KEEP: u64 = 1 << 20;

/// Bytes of frames queued for the indexer at most (see `append`). Enough to ride
/// out an index write that stalls for a while (fjall's batch commit took 12–71 ms
/// at times under HTTP load; its flush worker holds the journal lock that writes
/// need while it syncs fjall's journal) without holding up the log's writes and
/// their replies; small enough that a read, which waits for the frames written
/// before it, waits for little.
const INDEX_QUEUE_BYTES: usize = 8 << 20;
/// How often a broken index is retried while it keeps failing.
const INDEX_RETRY: Duration = Duration::from_secs(1);
/// Forget the remembered topic heads beyond this many topics (the next write of
/// each looks its head up in the index again).
const TOPIC_HEADS_CAPACITY: usize = 100_000;

pub struct LogJournal {
    log_dir: PathBuf,
    reader: LogReader,
    side: Arc<IndexSide>,
    writer: Mutex<Writer>,
    /// Frames for the indexer thread; `None` once closing.
    frames: Mutex<Option<crossbeam_channel::Sender<Frame>>>,
    indexer: Option<std::thread::JoinHandle<()>>,
    _lock: DataLock,
}

/// The index and what the indexer thread shares with the journal.
struct IndexSide {
    dir: PathBuf,
    /// `None` after indexing failed, until it is reopened.
    index: RwLock<Option<Index>>,
    /// The index lags the log beyond the frames queued for the indexer: the next
    /// read or write catches it up from the log (the indexer skips frames then).
    behind: AtomicBool,
    /// Why the journal cannot write right now, for `/health`.
    trouble: Mutex<Option<String>>,
    /// What the index holds.
    through: Mutex<Through>,
    progress: Mutex<Progress>,
    indexed: Condvar,
}

/// The indexer's queue, counted since open.
#[derive(Default)]
struct Progress {
    /// Frames handed to the indexer.
    appended: u64,
    /// Frames it is done with.
    done: u64,
    /// Body bytes of the frames handed to it and not yet done.
    queued_bytes: usize,
}

/// A durable frame for the indexer.
struct Frame {
    segment: u64,
    body_pos: u64,
    end: Position,
    body: Vec<u8>,
}

/// What only the writing side touches.
struct Writer {
    log: CommitLog,
    /// Next global offset and recent sequence numbers.
    state: WriterState,
    next_timer_id: u64,
    /// The newest position of the topics written recently (`outbox.rs`).
    topic_heads: HashMap<String, u64>,
    /// The offset each projection generation stored last, as written through this
    /// writer (the only one of the data directory): a projection batch checks that
    /// it continues from it without waiting for the indexer, which would hold up
    /// every other write behind the writer's lock. Filled from the index on a
    /// generation's first batch since open; a handful of entries per projection.
    projection_offsets: HashMap<(String, u32), u64>,
    last_index_attempt: Option<Instant>,
    /// When `health` last probed a failing journal.
    last_probe: Option<Instant>,
}

fn log_error(e: LogError) -> JournalError {
    match e {
        LogError::Corrupt { .. } => JournalError::Corrupt(e.to_string()),
        LogError::Locked { .. } => JournalError::Locked(e.to_string()),
        e => JournalError::Storage(e.to_string()),
    }
}

/// The directories of the journal in a data directory.
pub fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

pub fn index_dir(data: &Path) -> PathBuf {
    data.join("index")
}

impl LogJournal {
    /// Open (or create) the journal of a data directory whose lock is held.
    pub fn open(data: &Path, lock: DataLock) -> JournalResult<LogJournal> {
        Self::open_with(data, lock, LogOptions::default(), Arc::new(StdIo))
    }

    /// With the log's options and I/O layer (tests inject faults through it).
    pub fn open_with(
        data: &Path,
        lock: DataLock,
        options: LogOptions,
        io: Arc<dyn LogIo>,
    ) -> JournalResult<LogJournal> {
        let (log, report) = CommitLog::open(&log_dir(data), options, io).map_err(log_error)?;
        if let Some(torn) = &report.torn_tail {
            tracing::warn!("commit log: {torn}");
        }
        if let Some(removed) = &report.removed_segment {
            tracing::warn!("commit log: {removed}");
        }
        let index_dir = index_dir(data);
        let index = open_index(&index_dir)?;
        let through = index.through()?.unwrap_or(Through::START);
        let end = log.end();
        if through.end > end {
            return Err(JournalError::Corrupt(format!(
                "the commit log in {} ends at {end}, but its index has taken in frames up to {}: acknowledged data \
                 is missing from the log. Restore the data directory from a backup; `mneme journal verify {}` \
                 reports what is there, and `mneme journal reindex {}` accepts the log as it is",
                log_dir(data).display(),
                through.end,
                data.display(),
                data.display()
            )));
        }
        let writer = Writer {
            state: WriterState::new(through.next_offset),
            next_timer_id: through.next_timer_id,
            log,
            topic_heads: HashMap::new(),
            projection_offsets: HashMap::new(),
            last_index_attempt: None,
            last_probe: None,
        };
        let side = Arc::new(IndexSide {
            dir: index_dir,
            index: RwLock::new(Some(index)),
            behind: AtomicBool::new(true),
            trouble: Mutex::new(None),
            through: Mutex::new(through),
            progress: Mutex::default(),
            indexed: Condvar::new(),
        });
        // Bounded by bytes (`append` waits for room): a writer faster than the
        // indexer waits for it instead of queueing without bound.
        let (tx, rx) = crossbeam_channel::unbounded();
        let indexer = {
            let side = side.clone();
            std::thread::Builder::new()
                .name("mneme-indexer".into())
                .spawn(move || side.run(rx))
                .map_err(|e| JournalError::Storage(format!("starting the indexer thread: {e}")))?
        };
        let journal = LogJournal {
            log_dir: log_dir(data),
            reader: writer.log.reader(),
            side,
            writer: Mutex::new(writer),
            frames: Mutex::new(Some(tx)),
            indexer: Some(indexer),
            _lock: lock,
        };
        let started = Instant::now();
        let indexed = journal.catch_up(&mut journal.writer.lock().unwrap())?;
        if indexed > 0 {
            tracing::info!(
                frames = indexed,
                secs = started.elapsed().as_secs_f64(),
                "indexed the tail of the commit log"
            );
        }
        Ok(journal)
    }

    /// Bring the index up to the log's end if it lags; returns the frames indexed.
    fn catch_up(&self, w: &mut Writer) -> JournalResult<u64> {
        if !self.side.behind.load(Ordering::Acquire) {
            return Ok(0);
        }
        if let Some(t) = w.last_index_attempt {
            if t.elapsed() < INDEX_RETRY {
                let why = self.side.trouble.lock().unwrap().clone().unwrap_or_else(|| "index unavailable".into());
                return Err(JournalError::Storage(why));
            }
        }
        w.last_index_attempt = Some(Instant::now());
        // The writer's lock is held: no frame is queued while the indexer finishes
        // (it skips the frames queued before, as the index is behind).
        self.side.wait_all();
        let mut slot = self.side.index.write().unwrap();
        if slot.is_none() {
            *slot = Some(open_index(&self.side.dir).inspect_err(|e| self.side.set_trouble(e))?);
        }
        let index = slot.as_ref().unwrap();
        let (through, frames) = match index_log(index, &self.reader) {
            Ok(x) => x,
            Err(e) => {
                // fjall refuses every write after a failed one: start from a fresh open.
                *slot = None;
                self.side.set_trouble(&e);
                return Err(e);
            }
        };
        *self.side.through.lock().unwrap() = through;
        w.next_timer_id = w.next_timer_id.max(through.next_timer_id);
        w.state.next_offset = w.state.next_offset.max(through.next_offset);
        self.side.behind.store(false, Ordering::Release);
        w.last_index_attempt = None;
        *self.side.trouble.lock().unwrap() = None;
        Ok(frames)
    }

    /// The index, with every frame appended before this call indexed.
    fn index(&self) -> JournalResult<RwLockReadGuard<'_, Option<Index>>> {
        let appended = self.side.progress.lock().unwrap().appended;
        self.side.wait_for(appended);
        if self.side.behind.load(Ordering::Acquire) {
            self.catch_up(&mut self.writer.lock().unwrap())?;
        }
        let guard = self.side.index.read().unwrap();
        if guard.is_none() {
            return Err(JournalError::Storage("index unavailable".into()));
        }
        Ok(guard)
    }

    /// Append one frame and hand it to the indexer. `Ok` once the frame is durable.
    fn append(&self, w: &mut Writer, first_offset: u64, body: Vec<u8>) -> JournalResult<()> {
        let appended = match w.log.append(first_offset, &body) {
            Ok(a) => a,
            Err(e) => {
                let e = log_error(e);
                tracing::error!("commit log: append failed, nothing of the batch is stored: {e}");
                self.side.set_trouble(&e);
                return Err(e);
            }
        };
        if !self.side.behind.load(Ordering::Acquire) {
            *self.side.trouble.lock().unwrap() = None;
        }
        let frame = Frame { segment: appended.segment, body_pos: appended.body_pos, end: appended.end, body };
        self.side.make_room(frame.body.len());
        let queued = match self.frames.lock().unwrap().as_ref() {
            Some(tx) => tx.send(frame).map_err(|e| e.into_inner()),
            None => Err(frame),
        };
        if let Err(frame) = queued {
            // No indexer (closing): the next start indexes the frame from the log.
            self.side.behind.store(true, Ordering::Release);
            self.side.done_with_frame(frame.body.len());
        }
        Ok(())
    }

    /// The bytes of a record.
    fn read(&self, loc: Loc) -> JournalResult<Vec<u8>> {
        self.reader.read(loc.segment, loc.pos, loc.len).map_err(log_error)
    }

    /// The bytes of many records, in the order given: records close together in
    /// one segment are read with one positioned read of the span that holds them
    /// (an entity's events written in a burst lie in consecutive frames), so a
    /// replay costs a read per span, not per event.
    fn read_many(&self, locs: &[Loc], mut each: impl FnMut(usize, &[u8]) -> JournalResult<()>) -> JournalResult<()> {
        // The thread's span buffer, taken out while in use (a nested call would
        // get a fresh one) and put back after, unless it grew past what a thread
        // keeps (many threads read: each keeps at most `SPAN_KEEP` bytes).
        let mut bytes = SPAN_BUFFER.with(|b| b.take());
        let read = self.read_spans(locs, &mut bytes, &mut each);
        if bytes.capacity() as u64 <= SPAN_KEEP {
            SPAN_BUFFER.with(|b| b.replace(bytes));
        }
        read
    }

    fn read_spans(
        &self,
        locs: &[Loc],
        bytes: &mut Vec<u8>,
        each: &mut impl FnMut(usize, &[u8]) -> JournalResult<()>,
    ) -> JournalResult<()> {
        let mut i = 0;
        while i < locs.len() {
            let first = locs[i];
            let (mut end, mut j) = (first.pos + first.len as u64, i + 1);
            while j < locs.len() {
                let l = locs[j];
                let next_end = l.pos + l.len as u64;
                let close = l.segment == first.segment && l.pos >= end && l.pos - end <= SPAN_GAP;
                if !close || next_end - first.pos > SPAN_MAX {
                    break;
                }
                end = next_end;
                j += 1;
            }
            let len = (end - first.pos) as u32;
            self.reader.read_into(first.segment, first.pos, len, bytes).map_err(log_error)?;
            for (k, l) in locs.iter().enumerate().take(j).skip(i) {
                let at = (l.pos - first.pos) as usize;
                each(k, &bytes[at..at + l.len as usize])?;
            }
            i = j;
        }
        Ok(())
    }

    /// The records of `pid`'s events with `from <= seq_nr`, at most `limit`, handed
    /// to `each` in order with the sequence number their index entry names; an
    /// error of `each` is reported at the record's location. Returns how many.
    fn event_records(
        &self,
        pid: &str,
        from: u64,
        limit: usize,
        mut each: impl FnMut(u64, &[u8]) -> JournalResult<()>,
    ) -> JournalResult<usize> {
        let entries = self.index()?.as_ref().unwrap().events(pid, from, limit)?;
        let locs: Vec<Loc> = entries.iter().map(|(_, loc)| *loc).collect();
        self.read_many(&locs, |k, bytes| {
            let (seq_nr, loc) = entries[k];
            each(seq_nr, bytes).map_err(|e| at(loc, e))
        })?;
        Ok(entries.len())
    }

    /// The offset record an index entry points at, checked against the entry's key.
    fn read_offset(&self, projection: &str, generation: u32, loc: Loc) -> JournalResult<ProjectionOffset> {
        let o = views::decode_offset(&self.read(loc)?).map_err(|e| at(loc, e))?;
        if o.projection != projection || o.generation != generation {
            let msg = format!(
                "index entry of the offset of projection `{projection}` generation {generation} points at one of \
                 `{}` generation {}",
                o.projection, o.generation
            );
            return Err(at(loc, JournalError::Corrupt(msg)));
        }
        Ok(o)
    }

    /// The value of a view put record an index entry points at, checked against the entry's key.
    fn read_view_value(&self, projection: &str, generation: u32, key: &str, loc: Loc) -> JournalResult<Vec<u8>> {
        let r = views::decode_put(&self.read(loc)?).map_err(|e| at(loc, e))?;
        match r.update {
            ViewUpdate::Put { key: k, value }
                if r.projection == projection && r.generation == generation && k == key =>
            {
                Ok(value)
            }
            _ => Err(at(
                loc,
                JournalError::Corrupt(format!(
                    "index entry of key `{key}` of projection `{projection}` generation {generation} points at \
                     another record"
                )),
            )),
        }
    }
}

impl IndexSide {
    /// The indexer thread: index each durable frame, in log order.
    fn run(&self, frames: crossbeam_channel::Receiver<Frame>) {
        for frame in frames {
            if !self.behind.load(Ordering::Acquire) {
                self.index_frame(&frame);
            }
            self.done_with_frame(frame.body.len());
        }
    }

    fn index_frame(&self, f: &Frame) {
        let guard = self.index.read().unwrap();
        let before = *self.through.lock().unwrap();
        let indexed = match guard.as_ref() {
            Some(index) => index_frame(f.segment, f.body_pos, f.end, &f.body, before)
                .and_then(|(batch, through)| index.apply(batch, through).map(|()| through)),
            None => Err(JournalError::Storage("index unavailable".into())),
        };
        drop(guard);
        match indexed {
            Ok(through) => *self.through.lock().unwrap() = through,
            Err(e) => {
                // The frame is durable: its batch succeeded. The index is rebuilt from the log.
                tracing::error!("index: could not index a durable frame; reopening it and re-indexing: {e}");
                self.set_trouble(&e);
                self.behind.store(true, Ordering::Release);
                *self.index.write().unwrap() = None;
            }
        }
    }

    /// Count a frame of `bytes` as queued, once the queue has room for it (a frame
    /// larger than the whole bound waits for an empty queue).
    fn make_room(&self, bytes: usize) {
        let mut p = self.progress.lock().unwrap();
        while p.queued_bytes > 0 && p.queued_bytes + bytes > INDEX_QUEUE_BYTES {
            p = self.indexed.wait(p).unwrap();
        }
        p.appended += 1;
        p.queued_bytes += bytes;
    }

    fn done_with_frame(&self, bytes: usize) {
        let mut p = self.progress.lock().unwrap();
        p.done += 1;
        p.queued_bytes -= bytes;
        drop(p);
        self.indexed.notify_all();
    }

    /// Wait until the indexer is done with the first `appended` frames.
    fn wait_for(&self, appended: u64) {
        let mut p = self.progress.lock().unwrap();
        while p.done < appended {
            p = self.indexed.wait(p).unwrap();
        }
    }

    /// Wait until the indexer is done with every frame queued so far.
    fn wait_all(&self) {
        let appended = self.progress.lock().unwrap().appended;
        self.wait_for(appended);
    }

    /// Remember why the journal cannot write (the message without the error kind's
    /// prefix: it is wrapped again when reported).
    fn set_trouble(&self, e: &JournalError) {
        let why = match e {
            JournalError::Storage(m)
            | JournalError::Corrupt(m)
            | JournalError::Invalid(m)
            | JournalError::Locked(m)
            | JournalError::Fenced(m) => m,
        };
        *self.trouble.lock().unwrap() = Some(why.clone());
    }
}

impl Drop for LogJournal {
    /// A clean close: let the indexer finish, then flush the index so the next
    /// start opens it at once.
    fn drop(&mut self) {
        drop(self.frames.lock().unwrap().take());
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
        let behind = self.side.behind.load(Ordering::Acquire);
        if let Some(index) = self.side.index.write().ok().and_then(|mut i| i.take()).filter(|_| !behind) {
            if let Err(e) = index.close() {
                tracing::warn!("index: closing cleanly failed (it is caught up at the next start): {e}");
            }
        }
    }
}

/// Name where a damaged record is.
/// Whether the event record read for the index entry of `pid#seq_nr` is that event.
fn is_event(pid: &str, seq_nr: u64, found_pid: &str, found_seq_nr: u64) -> JournalResult<()> {
    if found_pid == pid && found_seq_nr == seq_nr {
        return Ok(());
    }
    let msg = format!("index entry of {pid}#{seq_nr} points at event {found_pid}#{found_seq_nr}");
    Err(JournalError::Corrupt(msg))
}

fn at(loc: Loc, e: JournalError) -> JournalError {
    match e {
        JournalError::Corrupt(m) => {
            JournalError::Corrupt(format!("{m} (commit log segment {} byte {})", loc.segment, loc.pos))
        }
        e => e,
    }
}

/// Open the index; one that cannot be opened (damaged, or a file of it missing)
/// is derived data: it is removed and rebuilt from the log. If the fresh one
/// cannot be opened either (no space, no permission), that error stands.
///
/// An open that never finished (the marker `index.opening` beside the index is
/// still there) counts as damage too: fjall 3.1 can abort the process on a
/// damaged file (a panic while it holds a lock, then another in its destructor),
/// which no `catch_unwind` survives. That start is refused with a message naming
/// the index (see [`report_index_panics`]); the next one rebuilds it.
fn open_index(dir: &Path) -> JournalResult<Index> {
    let marker = dir.with_extension("opening");
    if marker.exists() && dir.exists() {
        tracing::warn!(
            "index {} did not finish opening last time (the process stopped while opening it: killed, or its store \
             aborted on a damaged file); rebuilding it from the commit log",
            dir.display()
        );
        std::fs::remove_dir_all(dir)
            .map_err(|e| JournalError::Storage(format!("removing damaged index {}: {e}", dir.display())))?;
    }
    std::fs::write(&marker, b"").map_err(|e| JournalError::Storage(format!("writing {}: {e}", marker.display())))?;
    let opened = match open_index_once(dir) {
        Err(JournalError::Locked(m)) => Err(JournalError::Locked(m)),
        Err(e) => {
            tracing::warn!("index {} cannot be opened ({e}); rebuilding it from the commit log", dir.display());
            std::fs::remove_dir_all(dir)
                .map_err(|e| JournalError::Storage(format!("removing damaged index {}: {e}", dir.display())))?;
            open_index_once(dir)
        }
        ok => ok,
    };
    if opened.is_ok() {
        std::fs::remove_file(&marker)
            .map_err(|e| JournalError::Storage(format!("removing {}: {e}", marker.display())))?;
    }
    opened
}

thread_local! {
    /// The buffer `read_many` reads spans into, so that a page of events read by
    /// tag or a replay does not allocate, zero and first touch a fresh buffer of
    /// up to `SPAN_MAX` bytes per span (what showed in a catching-up
    /// projection's profile).
    static SPAN_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };

    /// The index this thread is opening, for [`report_index_panics`].
    static OPENING_INDEX: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Before a panic's message, say which index panicked and what happens next: if
/// the store then aborts the process, this line is what the operator reads.
fn report_index_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(dir) = OPENING_INDEX.with(|o| o.borrow().clone()) {
                eprintln!(
                    "mneme: the index {} is damaged: its store panicked while opening it; it is derived data, \
                     rebuilt from the commit log (at the next start if this process stops now)",
                    dir.display()
                );
            }
            previous(info);
        }));
    });
}

/// `Index::open`, with a panic of the store's own recovery taken as damage. fjall
/// 3.1 checks a torn entry of its write-ahead file (a write cut short by a full
/// disk) with a debug assertion before its checksum: in a debug build that panics
/// on the thread opening the index, which here is the writer's. The index is
/// derived from the log, so it is rebuilt instead.
fn open_index_once(dir: &Path) -> JournalResult<Index> {
    report_index_panics();
    OPENING_INDEX.with(|o| *o.borrow_mut() = Some(dir.to_path_buf()));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Index::open(dir)));
    OPENING_INDEX.with(|o| *o.borrow_mut() = None);
    opened.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(JournalError::Corrupt(format!("opening the index panicked: {why}")))
    })
}

/// Index every frame of the log after the index's `through`; returns the new
/// `through` and the number of frames indexed.
fn index_log(index: &Index, reader: &LogReader) -> JournalResult<(Through, u64)> {
    let mut through = index.through()?.unwrap_or(Through::START);
    let mut frames = 0;
    for frame in reader.frames_from(through.end) {
        let frame = frame.map_err(log_error)?;
        let (batch, next) = index_frame(frame.start.segment, frame.body_pos, frame.end, &frame.body, through)?;
        index.apply(batch, next)?;
        through = next;
        frames += 1;
    }
    Ok((through, frames))
}

/// Rebuild the index of a data directory from its commit log (`mneme journal reindex`).
pub fn reindex(data: &Path) -> JournalResult<u64> {
    let lock = DataLock::acquire(data)?;
    let dir = index_dir(data);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| JournalError::Storage(format!("removing {}: {e}", dir.display())))?;
    }
    let (log, report) = CommitLog::open(&log_dir(data), LogOptions::default(), Arc::new(StdIo)).map_err(log_error)?;
    if let Some(torn) = report.torn_tail {
        tracing::warn!("commit log: {torn}");
    }
    let index = Index::open(&dir)?;
    let (_, frames) = index_log(&index, &log.reader())?;
    drop(lock);
    Ok(frames)
}

impl Journal for LogJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap();
        self.catch_up(&mut w)?;
        // The index answers what the writer does not remember: only then must the
        // frames still being indexed be in it.
        let remembered =
            w.state.remembers(batch) && batch.outbox.published.iter().all(|m| w.topic_heads.contains_key(&m.topic));
        if !remembered {
            self.side.wait_all();
        }
        let (positions, topic_heads) = {
            let guard = self.side.index.read().unwrap();
            let index = guard.as_ref().ok_or_else(|| JournalError::Storage("index unavailable".into()))?;
            w.state.check_sequence(batch, |pid, seq_nr| index.has_event(pid, seq_nr))?;
            outbox::assign_positions(&batch.outbox.published, &w.topic_heads, |t| {
                outbox_index::topic_head_in_index(index, t)
            })?
        };
        let first_offset = w.state.next_offset;
        let bytes: usize = batch.events.iter().map(|e| e.payload.len() + 128).sum::<usize>()
            + batch.snapshots.iter().map(|s| s.state.len() + 64).sum::<usize>()
            + batch.outbox.size_hint();
        let mut body = BodyBuilder::with_capacity(bytes);
        for (i, e) in batch.events.iter().enumerate() {
            body.event(e, first_offset + i as u64);
        }
        for s in &batch.snapshots {
            body.snapshot(s);
        }
        outbox::write_body(&mut body, &batch.outbox, &positions);
        match self.append(&mut w, first_offset, body.finish()) {
            Ok(()) => {
                let next = first_offset + batch.events.len() as u64;
                w.state.written(batch, next);
                if w.topic_heads.len() > TOPIC_HEADS_CAPACITY {
                    w.topic_heads.clear();
                }
                w.topic_heads.extend(topic_heads);
                Ok(())
            }
            Err(e) => {
                w.state.failed(batch);
                Err(e)
            }
        }
    }

    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        self.index()?.as_ref().unwrap().highest_seq_nr(pid)
    }

    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let mut out = Vec::new();
        self.event_records(pid, from, limit, |seq_nr, bytes| {
            let e = codec::decode_event_record(bytes)?;
            is_event(pid, seq_nr, &e.persistence_id, e.seq_nr).map(|()| out.push(e))
        })?;
        Ok(out)
    }

    fn for_each_event(
        &self,
        pid: &str,
        from: u64,
        limit: usize,
        each: &mut dyn FnMut(EventRef<'_>),
    ) -> JournalResult<usize> {
        self.event_records(pid, from, limit, |seq_nr, bytes| {
            let (found_pid, e) = codec::event_ref(bytes)?;
            is_event(pid, seq_nr, found_pid, e.seq_nr).map(|()| each(e))
        })
    }

    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let entries = self.index()?.as_ref().unwrap().tagged(tag, from, limit)?;
        let locs: Vec<Loc> = entries.iter().map(|(_, loc)| *loc).collect();
        let mut out = Vec::with_capacity(locs.len());
        self.read_many(&locs, |k, bytes| {
            let (offset, loc) = entries[k];
            let e = codec::decode_event_record(bytes).map_err(|e| at(loc, e))?;
            if e.offset != offset || !e.tags.iter().any(|t| t == tag) {
                let msg = format!(
                    "index entry of tag `{tag}` offset {offset} points at an event at offset {} without it",
                    e.offset
                );
                return Err(at(loc, JournalError::Corrupt(msg)));
            }
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn events_from(&self, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let mut out = Vec::new();
        let mut next = from.max(1);
        // A frame holds up to a group commit's events: read frames until enough.
        while out.len() < limit {
            let frames = self.index()?.as_ref().unwrap().frames_from_offset(next, 16)?;
            let before = out.len();
            for (first, loc) in frames {
                let body = self.read(loc)?;
                for record in body::records(&body).map_err(|e| at(loc, e))? {
                    let Record::Event { at: o, len } = record else { continue };
                    let e = codec::decode_event_record(&body[o..o + len]).map_err(|e| at(loc, e))?;
                    if e.offset < first {
                        return Err(at(
                            loc,
                            JournalError::Corrupt(format!("frame at offset {first} holds offset {}", e.offset)),
                        ));
                    }
                    if e.offset >= next && out.len() < limit {
                        next = e.offset + 1;
                        out.push(e);
                    }
                }
            }
            if out.len() == before {
                break;
            }
        }
        Ok(out)
    }

    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>> {
        let Some(loc) = self.index()?.as_ref().unwrap().snapshot(pid)? else { return Ok(None) };
        let s = codec::decode_snapshot_record(&self.read(loc)?).map_err(|e| at(loc, e))?;
        if s.persistence_id != pid {
            let msg = format!("index entry of the snapshot of {pid} points at one of {}", s.persistence_id);
            return Err(at(loc, JournalError::Corrupt(msg)));
        }
        Ok(Some(s))
    }

    fn put_timer(&self, timer: &Timer) -> JournalResult<()> {
        let mut w = self.writer.lock().unwrap();
        self.catch_up(&mut w)?;
        let mut body = BodyBuilder::default();
        body.timer_stored(timer);
        let first_offset = w.state.next_offset;
        self.append(&mut w, first_offset, body.finish())
    }

    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        let mut w = self.writer.lock().unwrap();
        self.catch_up(&mut w)?;
        let mut body = BodyBuilder::default();
        body.timer_removed(id);
        let first_offset = w.state.next_offset;
        self.append(&mut w, first_offset, body.finish())
    }

    fn timers(&self) -> JournalResult<Vec<Timer>> {
        let locs = self.index()?.as_ref().unwrap().timers()?;
        let mut out = Vec::with_capacity(locs.len());
        for (id, loc) in locs {
            let t = codec::decode_timer_record(&self.read(loc)?).map_err(|e| at(loc, e))?;
            if t.id != id {
                return Err(at(
                    loc,
                    JournalError::Corrupt(format!("index entry of timer {id} points at timer {}", t.id)),
                ));
            }
            out.push(t);
        }
        out.sort_by_key(|t| (t.due_ms, t.id));
        Ok(out)
    }

    /// Ids are never reused: above every timer id in the log (a handed-out id whose
    /// timer was never stored may be handed out again after a restart, harmlessly).
    fn next_timer_id(&self) -> JournalResult<u64> {
        let mut w = self.writer.lock().unwrap();
        let id = w.next_timer_id;
        w.next_timer_id += 1;
        Ok(id)
    }

    fn head(&self) -> u64 {
        self.writer.lock().unwrap().state.next_offset - 1
    }

    /// One frame: the batch's view records and its offset record.
    fn write_projection(&self, batch: &ProjectionBatch) -> JournalResult<()> {
        views::check_batch(batch)?;
        let o = &batch.offset;
        let mut w = self.writer.lock().unwrap();
        self.catch_up(&mut w)?;
        let generation = (o.projection.clone(), o.generation);
        let stored = match w.projection_offsets.get(&generation) {
            Some(&offset) => offset,
            None => {
                // The generation's offset record may be in a frame still being indexed.
                self.side.wait_all();
                let loc = {
                    let guard = self.side.index.read().unwrap();
                    let index = guard.as_ref().ok_or_else(|| JournalError::Storage("index unavailable".into()))?;
                    index.get(&views::offset_key(&o.projection, o.generation))?
                };
                match loc {
                    Some(loc) => self.read_offset(&o.projection, o.generation, loc)?.offset,
                    None => 0,
                }
            }
        };
        if stored != batch.previous_offset {
            return Err(JournalError::Invalid(format!(
                "projection `{}` generation {} is at offset {stored}, the batch continues from {}: not stored twice",
                o.projection, o.generation, batch.previous_offset
            )));
        }
        let bytes: usize = batch
            .updates
            .iter()
            .map(|u| match u {
                ViewUpdate::Put { key, value } => key.len() + value.len() + 32,
                ViewUpdate::Delete { key } => key.len() + 32,
            })
            .sum();
        let mut body = BodyBuilder::with_capacity(bytes + 64);
        for u in &batch.updates {
            body.view_update(&o.projection, o.generation, u);
        }
        body.projection_offset(o);
        let first_offset = w.state.next_offset;
        self.append(&mut w, first_offset, body.finish())?;
        // A failed append stored nothing: the remembered offset stays as it was.
        w.projection_offsets.insert(generation, o.offset);
        Ok(())
    }

    fn projection_offsets(&self, projection: &str) -> JournalResult<Vec<ProjectionOffset>> {
        let prefix = views::offset_prefix(projection);
        let entries = self.index()?.as_ref().unwrap().scan(&prefix, &prefix, usize::MAX)?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, loc) in entries {
            let generation =
                key.get(prefix.len()..).and_then(|g| g.try_into().ok()).map(u32::from_be_bytes).ok_or_else(|| {
                    JournalError::Corrupt(format!("index: bad offset key of projection `{projection}`"))
                })?;
            out.push(self.read_offset(projection, generation, loc)?);
        }
        Ok(out)
    }

    fn view_get(&self, projection: &str, generation: u32, key: &str) -> JournalResult<Option<Vec<u8>>> {
        let loc = self.index()?.as_ref().unwrap().get(&views::view_key(projection, generation, key))?;
        loc.map(|loc| self.read_view_value(projection, generation, key, loc)).transpose()
    }

    fn view_scan(
        &self,
        projection: &str,
        generation: u32,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> JournalResult<Vec<(String, Vec<u8>)>> {
        let scan_prefix = views::view_prefix(projection, generation, prefix);
        let start = views::view_key(projection, generation, from_key).max(scan_prefix.clone());
        let entries = self.index()?.as_ref().unwrap().scan(&start, &scan_prefix, limit)?;
        let mut out = Vec::with_capacity(entries.len());
        for (index_key, loc) in entries {
            let key = views::key_of_view_key(&index_key, projection, generation)?.to_string();
            let value = self.read_view_value(projection, generation, &key, loc)?;
            out.push((key, value));
        }
        Ok(out)
    }

    fn outbox_pending(&self) -> JournalResult<Vec<OutboxEntry>> {
        let guard = self.index()?;
        outbox_index::pending_in_index(guard.as_ref().unwrap(), |loc| self.read(loc))
    }

    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool> {
        outbox_index::applied_in_index(self.index()?.as_ref().unwrap(), pid, key)
    }

    fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredTopicMessage>> {
        let guard = self.index()?;
        outbox_index::messages_in_index(guard.as_ref().unwrap(), topic, from, limit, |loc| self.read(loc))
    }

    fn topic_head(&self, topic: &str) -> JournalResult<u64> {
        outbox_index::topic_head_in_index(self.index()?.as_ref().unwrap(), topic)
    }

    fn disk_bytes(&self) -> Option<u64> {
        Some(super::dir_bytes(&self.log_dir) + super::dir_bytes(&self.side.dir))
    }

    /// While the last write failed, each call (at most once a second) probes
    /// whether the journal can write again: it catches the index up and appends an
    /// empty frame (which stores nothing), so the answer follows the disk even
    /// when no command arrives.
    fn health(&self) -> Result<(), String> {
        if self.side.trouble.lock().unwrap().is_none() {
            return Ok(());
        }
        if let Ok(mut w) = self.writer.try_lock() {
            if w.last_probe.is_none_or(|t| t.elapsed() >= INDEX_RETRY) {
                w.last_probe = Some(Instant::now());
                let probe = self.catch_up(&mut w).and_then(|_| {
                    let first_offset = w.state.next_offset;
                    self.append(&mut w, first_offset, Vec::new())
                });
                if probe.is_ok() {
                    tracing::info!("journal writes again");
                }
            }
        }
        match self.side.trouble.lock().unwrap().clone() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}
