//! The journal's index: where in the commit log each event, snapshot and timer
//! is. Derived data, kept in fjall: everything in it can be rebuilt from the log
//! (`index_frame` is the one function that turns a frame into index entries, for
//! live writes and for re-indexing alike).
//!
//! Keyspace `index` (keys as in `keys.rs`; every value is a [`Loc`]):
//!
//! ```text
//! b'e' crc32c(pid)(u32 BE) pid 0x00 seq_nr(u64 BE)  -> the frame's events of `pid`
//!                                    from `seq_nr` on (an event run, below)
//! b't' tag 0x00 offset(u64 BE)   -> the frame's events carrying the tag, from the
//!                                    one at `offset` on (a tag list, below)
//! b's' pid                       -> Loc of the latest snapshot record
//! b'm' id(u64 BE)                -> Loc of a stored timer record (removed when delivered)
//! b'v' projection 0x00 generation(u32 BE) key  -> Loc of a view's put record   (`views.rs`)
//! b'p' projection 0x00 generation(u32 BE)      -> Loc of a projection's offset record
//! b'f' first_offset(u64 BE)      -> Loc of the body of a frame holding events   (all events by offset)
//! b'x', b'k', b'q' ...            -> the outbox's pending entries, applied idempotency
//!                                    keys and topic messages (`outbox.rs`)
//! ```
//! An event key starts with a hash of its persistence id because fjall's memtable
//! compares keys by their first four bytes before it follows a pointer to the
//! rest: with the id first, the keys of one entity type share those bytes, and
//! each of an insert's comparisons read the whole key from another cache line.
//!
//! An event run is one entry per entity per frame, not per event: the events of
//! one persistence id that a frame holds with consecutive sequence numbers (an
//! entity's events of one write, or of several writes of one group commit). An
//! entity that persists many events at once, or a replay of a long history
//! written in large batches, then costs one memtable insert and one step of a
//! range scan per frame instead of per event. Its value: `segment(u64 LE)`, then
//! for each event in sequence order `pos(u64 LE) len(u32 LE)`; the i-th event has
//! sequence number `seq_nr + i`.
//!
//! A tag list is one entry per tag per frame, not per event: indexing costs one
//! memtable insert per (frame, entity) and per (frame, tag), where one per event
//! and tag made tagged events cost twice the inserts. Its value: `segment(u64 LE)`,
//! then for each event in offset order `offset(u64 LE) pos(u64 LE) len(u32 LE)`.
//!
//! `0x00 "format"` -> [`FORMAT`] (u32 LE), written when an empty index is opened.
//! An index of another format (format 1, one tag entry per event, had no format
//! key; format 2, one event entry per event) is refused at open, and the journal
//! rebuilds it from the log.
//!
//! `0x00 "through"` -> [`Through`], written in the same fjall batch as the
//! entries of the frame it names. Both live in one keyspace on purpose: fjall
//! flushes each keyspace's memtable on its own, and after a crash recovers a
//! prefix of the batches of its journal on top of what was flushed; in one
//! keyspace that keeps `through` and the entries a consistent prefix of the log
//! (in two, `through` could be flushed ahead of entries that are then lost).
//!
//! Writes are not synced: the log's sync is what makes a batch durable. After a
//! crash the index may lag the log (fjall recovers a prefix of its batches); the
//! journal re-indexes the log from `through` on open. A read checks that the
//! record it finds is the one its key names, so an index entry that points
//! elsewhere is reported as corruption, never served.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use super::body::{self, Record};
use super::codec;
use super::keys::{snapshot_key, tag_key};
pub use super::location::{IndexBatch, Loc};
use super::log::Position;
use super::outbox;
use super::views;
use super::{JournalError, JournalResult};

/// How far the index has taken in the log, and what the writer continues with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Through {
    /// The end of the last indexed frame.
    pub end: Position,
    /// The next global offset.
    pub next_offset: u64,
    /// Above every timer id stored so far.
    pub next_timer_id: u64,
}

impl Through {
    /// An empty log.
    pub const START: Through = Through { end: Position { segment: 1, pos: 0 }, next_offset: 1, next_timer_id: 1 };

    fn encode(self) -> [u8; 32] {
        let mut v = [0u8; 32];
        for (i, n) in [self.end.segment, self.end.pos, self.next_offset, self.next_timer_id].into_iter().enumerate() {
            v[i * 8..i * 8 + 8].copy_from_slice(&n.to_le_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> JournalResult<Through> {
        let n = |i: usize| v.get(i * 8..i * 8 + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        match (n(0), n(1), n(2), n(3)) {
            (Some(segment), Some(pos), Some(next_offset), Some(next_timer_id)) if v.len() == 32 => {
                Ok(Through { end: Position { segment, pos }, next_offset, next_timer_id })
            }
            _ => Err(JournalError::Corrupt("index: bad `through` value".into())),
        }
    }
}

const THROUGH: &[u8] = b"\0through";
const FORMAT_KEY: &[u8] = b"\0format";
/// The index layout this build writes and reads (see the module docs).
pub const FORMAT: u32 = 3;
/// Bytes per event in a tag list.
const TAG_LIST_EVENT: usize = 20;
/// Bytes per event in an event run.
const RUN_EVENT: usize = 12;
const TIMER_PREFIX: u8 = b'm';
const FRAME_PREFIX: u8 = b'f';

/// The prefix of `pid`'s event keys (see the module docs).
pub fn event_prefix(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 14);
    k.push(b'e');
    k.extend_from_slice(&crc32c::crc32c(pid.as_bytes()).to_be_bytes());
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k
}

/// The key of `pid`'s event run whose first event is `seq_nr`.
pub fn event_key(pid: &str, seq_nr: u64) -> Vec<u8> {
    let mut k = event_prefix(pid);
    k.extend_from_slice(&seq_nr.to_be_bytes());
    k
}

pub fn frame_key(first_offset: u64) -> [u8; 9] {
    let mut k = [FRAME_PREFIX; 9];
    k[1..].copy_from_slice(&first_offset.to_be_bytes());
    k
}

fn timer_key(id: u64) -> [u8; 9] {
    let mut k = [TIMER_PREFIX; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// An I/O failure is a storage error (it may pass); anything else fjall reports
/// (a checksum mismatch, an undecodable block) is a damaged index.
fn storage(e: fjall::Error) -> JournalError {
    match e {
        fjall::Error::Io(_) | fjall::Error::Storage(fjall::LsmError::Io(_)) | fjall::Error::Poisoned => {
            JournalError::Storage(format!("index: {e}"))
        }
        e => JournalError::Corrupt(format!(
            "index: {e}; the index is derived from the commit log: rebuild it with `mneme journal reindex DATA`"
        )),
    }
}

/// A frame's events per tag, as its tag lists hold them: per tag, in the order the
/// tags are first seen, the offset and location of each event carrying it. An
/// event that names a tag twice is listed once. `index_frame` stores them and
/// `verify` checks the index against them.
pub(super) struct TagLists<T>(Vec<(T, Vec<(u64, Loc)>)>);

impl<T> Default for TagLists<T> {
    fn default() -> Self {
        TagLists(Vec::new())
    }
}

impl<T: std::borrow::Borrow<str>> TagLists<T> {
    pub(super) fn add(&mut self, tag: T, offset: u64, loc: Loc) {
        // A frame carries few distinct tags: a scan beats a hash.
        match self.0.iter_mut().find(|(t, _)| t.borrow() == tag.borrow()) {
            Some((_, list)) if list.last().is_some_and(|&(o, _)| o == offset) => {}
            Some((_, list)) => list.push((offset, loc)),
            None => self.0.push((tag, vec![(offset, loc)])),
        }
    }

    /// The lists gathered so far, leaving none.
    pub(super) fn take(&mut self) -> Vec<(T, Vec<(u64, Loc)>)> {
        std::mem::take(&mut self.0)
    }
}

/// A frame's event runs (see the module docs), in the order their first events
/// appear: per run the persistence id, the first sequence number and each event's
/// location. `index_frame` stores them and `verify` checks the index against them.
pub(super) struct EventRuns<T> {
    runs: Vec<(T, u64, Vec<Loc>)>,
    /// The run each persistence id's next event would continue.
    open: foldhash::HashMap<T, usize>,
}

impl<T> Default for EventRuns<T> {
    fn default() -> Self {
        EventRuns { runs: Vec::new(), open: foldhash::HashMap::default() }
    }
}

impl<T: std::borrow::Borrow<str> + std::hash::Hash + Eq + Clone> EventRuns<T> {
    pub(super) fn add(&mut self, pid: T, seq_nr: u64, loc: Loc) {
        // Most runs continue the previous event's entity: no hash lookup then.
        if let Some((p, first, locs)) = self.runs.last_mut() {
            if p.borrow() == pid.borrow() && *first + locs.len() as u64 == seq_nr {
                return locs.push(loc);
            }
        }
        // One hash per event: most entities of a frame start a run of their own.
        let next = self.runs.len();
        let open = self.open.entry(pid.clone()).or_insert(next);
        if *open != next {
            let (_, first, locs) = &mut self.runs[*open];
            if *first + locs.len() as u64 == seq_nr {
                return locs.push(loc);
            }
            *open = next;
        }
        self.runs.push((pid, seq_nr, vec![loc]));
    }

    /// The runs gathered so far, leaving none.
    pub(super) fn take(&mut self) -> Vec<(T, u64, Vec<Loc>)> {
        self.open.clear();
        std::mem::take(&mut self.runs)
    }
}

/// The value of an event run (see the module docs): events of one frame, so of
/// one segment.
fn encode_event_run(locs: &[Loc]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + locs.len() * RUN_EVENT);
    v.extend_from_slice(&locs[0].segment.to_le_bytes());
    for loc in locs {
        v.extend_from_slice(&loc.pos.to_le_bytes());
        v.extend_from_slice(&loc.len.to_le_bytes());
    }
    v
}

/// An event run as stored: its first sequence number and its events' locations,
/// read in place.
struct EventRun<'a> {
    first: u64,
    segment: u64,
    events: &'a [u8],
}

impl EventRun<'_> {
    /// The run of `pid` stored under `key`, checked for shape.
    fn decode<'a>(pid: &str, key: &[u8], v: &'a [u8]) -> JournalResult<EventRun<'a>> {
        let first = super::keys::event_key_seq_nr(key)?;
        if v.len() < 8 + RUN_EVENT || !(v.len() - 8).is_multiple_of(RUN_EVENT) {
            return Err(JournalError::Corrupt(format!("index: event run of {pid}#{first}: {} bytes", v.len())));
        }
        Ok(EventRun { first, segment: u64::from_le_bytes(v[..8].try_into().unwrap()), events: &v[8..] })
    }

    fn len(&self) -> u64 {
        (self.events.len() / RUN_EVENT) as u64
    }

    /// The sequence number after the run's last event.
    fn end(&self) -> u64 {
        self.first + self.len()
    }

    /// Sequence numbers and locations of the run's events from `from` on.
    fn from(&self, from: u64) -> impl Iterator<Item = (u64, Loc)> + '_ {
        let skip = from.saturating_sub(self.first).min(self.len()) as usize;
        self.events[skip * RUN_EVENT..].chunks_exact(RUN_EVENT).enumerate().map(move |(i, e)| {
            let loc = Loc {
                segment: self.segment,
                pos: u64::from_le_bytes(e[..8].try_into().unwrap()),
                len: u32::from_le_bytes(e[8..].try_into().unwrap()),
            };
            (self.first + (skip + i) as u64, loc)
        })
    }
}

/// The value of a tag list (see the module docs): the events of one frame, so of
/// one segment.
fn encode_tag_list(list: &[(u64, Loc)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + list.len() * TAG_LIST_EVENT);
    v.extend_from_slice(&list[0].1.segment.to_le_bytes());
    for (offset, loc) in list {
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&loc.pos.to_le_bytes());
        v.extend_from_slice(&loc.len.to_le_bytes());
    }
    v
}

/// The events of a tag list whose key names `first_offset`: offsets and
/// locations, in offset order.
fn decode_tag_list(first_offset: u64, v: &[u8]) -> JournalResult<Vec<(u64, Loc)>> {
    let bad = |why: &str| JournalError::Corrupt(format!("index: tag list of offset {first_offset}: {why}"));
    if v.len() < 8 + TAG_LIST_EVENT || !(v.len() - 8).is_multiple_of(TAG_LIST_EVENT) {
        return Err(bad(&format!("{} bytes", v.len())));
    }
    let segment = u64::from_le_bytes(v[..8].try_into().unwrap());
    let mut out: Vec<(u64, Loc)> = Vec::with_capacity((v.len() - 8) / TAG_LIST_EVENT);
    for e in v[8..].chunks_exact(TAG_LIST_EVENT) {
        let offset = u64::from_le_bytes(e[..8].try_into().unwrap());
        let pos = u64::from_le_bytes(e[8..16].try_into().unwrap());
        let len = u32::from_le_bytes(e[16..].try_into().unwrap());
        match out.last() {
            None if offset != first_offset => return Err(bad(&format!("starts at offset {offset}"))),
            Some(&(last, _)) if offset <= last => return Err(bad(&format!("offset {offset} after {last}"))),
            _ => out.push((offset, Loc { segment, pos, len })),
        }
    }
    Ok(out)
}

/// The index entries of a frame whose body starts at `body_pos` of `segment`,
/// and the [`Through`] after it.
pub fn index_frame(
    segment: u64,
    body_pos: u64,
    frame_end: Position,
    body: &[u8],
    before: Through,
) -> JournalResult<(IndexBatch, Through)> {
    let mut batch = IndexBatch::default();
    let mut through = Through { end: frame_end, ..before };
    let loc = |at: usize, len: usize| Loc { segment, pos: body_pos + at as u64, len: len as u32 };
    let mut first_offset = None;
    let mut tag_lists = TagLists::default();
    let mut runs = EventRuns::default();
    for record in body::records(body)? {
        match record {
            Record::Event { at, len } => {
                let l = loc(at, len);
                let head = codec::event_head(&body[at..at + len])?;
                runs.add(head.persistence_id, head.seq_nr, l);
                for tag in head.tags {
                    tag_lists.add(tag?, head.offset, l);
                }
                through.next_offset = through.next_offset.max(head.offset + 1);
                first_offset.get_or_insert(head.offset);
            }
            Record::Snapshot { at, len } => {
                let pid = codec::snapshot_pid(&body[at..at + len])?;
                batch.puts.push((snapshot_key(pid), loc(at, len).encode()));
            }
            Record::TimerStored { at, len } => {
                let id = codec::timer_id(&body[at..at + len])?;
                batch.puts.push((timer_key(id).to_vec(), loc(at, len).encode()));
                through.next_timer_id = through.next_timer_id.max(id + 1);
            }
            Record::TimerRemoved { id } => batch.removes.push(timer_key(id).to_vec()),
            // A projection frame updates each key at most once (`views::check_batch`),
            // so the order of puts and removes within the frame does not matter.
            Record::ViewPut { at, len } => {
                batch.puts.push((views::view_index_key(&body[at..at + len])?, loc(at, len).encode()))
            }
            Record::ViewDelete { at, len } => batch.removes.push(views::view_index_key(&body[at..at + len])?),
            Record::ProjectionOffset { at, len } => {
                batch.puts.push((views::offset_index_key(&body[at..at + len])?, loc(at, len).encode()))
            }
            Record::Outbox { kind, at, len } => {
                outbox::index_record(kind, &body[at..at + len], loc(at, len), &mut batch)?
            }
        }
    }
    for (pid, first_seq, locs) in runs.take() {
        batch.lists.push((event_key(pid, first_seq), encode_event_run(&locs)));
    }
    if let Some(first) = first_offset {
        batch.puts.push((frame_key(first).to_vec(), loc(0, body.len()).encode()));
    }
    for (tag, list) in tag_lists.take() {
        batch.lists.push((tag_key(tag, list[0].0), encode_tag_list(&list)));
    }
    Ok((batch, through))
}

/// The fjall database of the index.
pub struct Index {
    db: Database,
    entries: Keyspace,
    dir: std::path::PathBuf,
}

/// Memtable size (fjall's default is 64 MiB; smaller flushes stall less, see
/// BENCHMARKS.md).
const MEMTABLE_BYTES: u64 = 16 << 20;

impl Index {
    pub fn open(dir: &Path) -> JournalResult<Index> {
        // Three fjall workers. Each memtable flush queues one compaction request per
        // worker, and worker 0 hands compaction requests back to the queue while
        // another worker can take them. With fjall's default of two on two cores, worker 0
        // spun doing so for as long as worker 1 compacted: about 7% of all CPU in
        // `--only engine` (BENCHMARKS.md, "fjall's worker threads"). With a third, a
        // second compaction request of the same keyspace finds the first one's
        // tables taken (as fjall's source reads), returns, and takes the request
        // worker 0 was handing back.
        // One worker is worse: a flush then waits behind a compaction and writes
        // stall (p99 at 16 connections went from ~5 ms to 28–72 ms).
        let db = Database::builder(dir).worker_threads(3).open().map_err(|e| match e {
            fjall::Error::Locked => {
                JournalError::Locked(format!("index {} is in use by another process", dir.display()))
            }
            e => JournalError::Storage(format!("opening index {}: {e}", dir.display())),
        })?;
        let entries = db
            .keyspace("index", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))
            .map_err(storage)?;
        let index = Index { db, entries, dir: dir.to_path_buf() };
        index.check_format()?;
        Ok(index)
    }

    /// Mark an empty index with [`FORMAT`]; refuse one of another format.
    fn check_format(&self) -> JournalResult<()> {
        let found = self.entries.get(FORMAT_KEY).map_err(storage)?;
        match found {
            Some(v) if *v == FORMAT.to_le_bytes() => Ok(()),
            None if self.through()?.is_none() => {
                // Before any `through`: a crash that loses it loses every later entry too.
                self.entries.insert(FORMAT_KEY, FORMAT.to_le_bytes()).map_err(storage)
            }
            found => {
                let was = match found {
                    None => "format 1".to_string(),
                    Some(v) => match <[u8; 4]>::try_from(&*v) {
                        Ok(b) => format!("format {}", u32::from_le_bytes(b)),
                        Err(_) => format!("an unreadable format marker ({} bytes)", v.len()),
                    },
                };
                Err(JournalError::Corrupt(format!(
                    "index {} is in {was}, this mneme keeps format {FORMAT}: rebuild it with \
                     `mneme journal reindex DATA` (a server start does so itself)",
                    self.dir.display()
                )))
            }
        }
    }

    /// A clean close: write the memtable out to table files, close fjall, and
    /// empty fjall's own journal files. fjall replays its journal (which rotates
    /// only every 64 MB) at every open, even when all of it was flushed: about a
    /// second per 50 MB. After the flush the journal holds nothing the tables lack,
    /// so with it emptied the next open is immediate. (The file is kept, empty: an
    /// open that finds no journal at all does not recover its sequence number from
    /// the tables.) After a crash there is no clean close: fjall replays its
    /// journal, and the log journal re-indexes the log from `through`.
    pub fn close(self) -> JournalResult<()> {
        self.entries.rotate_memtable_and_wait().map_err(storage)?;
        let dir = self.dir.clone();
        drop(self);
        let io = |e: std::io::Error| {
            JournalError::Storage(format!("index: emptying fjall's journal in {}: {e}", dir.display()))
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|x| x == "jnl") {
                let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
                f.set_len(0).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
        }
        Ok(())
    }

    /// How far the index has taken in the log (`None`: nothing yet).
    pub fn through(&self) -> JournalResult<Option<Through>> {
        self.entries.get(THROUGH).map_err(storage)?.map(|v| Through::decode(&v)).transpose()
    }

    /// Store a frame's entries and the new `through`, atomically, without a sync.
    pub fn apply(&self, batch: IndexBatch, through: Through) -> JournalResult<()> {
        let mut b = self.db.batch();
        for (k, v) in batch.puts {
            b.insert(&self.entries, k, v);
        }
        for (k, v) in batch.lists {
            b.insert(&self.entries, k, v);
        }
        for k in batch.removes {
            b.remove(&self.entries, k);
        }
        b.insert(&self.entries, THROUGH, through.encode());
        b.commit().map_err(storage)
    }

    /// Locations of `pid`'s events with `from <= seq_nr`, in order, at most `limit`:
    /// from the run holding `from` (whose first event may be lower) on.
    pub fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<(u64, Loc)>> {
        let from = from.max(1);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // No run starts before 1: only a later start needs the run holding it.
        let before = (from > 1).then(|| self.entries.range(event_key(pid, 1)..=event_key(pid, from)).next_back());
        let start = match before.flatten() {
            Some(g) => g.key().map_err(storage)?.to_vec(),
            None => event_key(pid, from),
        };
        for g in self.entries.range(start..=event_key(pid, u64::MAX)) {
            let (k, v) = g.into_inner().map_err(storage)?;
            for event in EventRun::decode(pid, &k, &v)?.from(from) {
                out.push(event);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The event run of `pid` whose first event is `first_seq`, if stored (for `verify`).
    pub fn event_run(&self, pid: &str, first_seq: u64) -> JournalResult<Option<Vec<Loc>>> {
        let key = event_key(pid, first_seq);
        match self.entries.get(&key).map_err(storage)? {
            Some(v) => Ok(Some(EventRun::decode(pid, &key, &v)?.from(first_seq).map(|(_, loc)| loc).collect())),
            None => Ok(None),
        }
    }

    /// Whether `pid`'s event `seq_nr` is indexed.
    pub fn has_event(&self, pid: &str, seq_nr: u64) -> JournalResult<bool> {
        match self.entries.range(event_key(pid, 0)..=event_key(pid, seq_nr)).next_back() {
            Some(g) => {
                let (k, v) = g.into_inner().map_err(storage)?;
                Ok(seq_nr < EventRun::decode(pid, &k, &v)?.end())
            }
            None => Ok(false),
        }
    }

    /// Whether an index key (e.g. [`frame_key`]) is present.
    pub fn contains(&self, key: &[u8]) -> JournalResult<bool> {
        self.entries.contains_key(key).map_err(storage)
    }

    pub fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        match self.entries.prefix(event_prefix(pid)).next_back() {
            Some(g) => {
                let (k, v) = g.into_inner().map_err(storage)?;
                Ok(EventRun::decode(pid, &k, &v)?.end() - 1)
            }
            None => Ok(0),
        }
    }

    /// Locations of the events carrying `tag` with `offset >= from`, in offset
    /// order, at most `limit`: from the tag list holding `from` (whose first
    /// offset may be lower) on.
    pub fn tagged(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = match self.entries.range(tag_key(tag, 0)..=tag_key(tag, from)).next_back() {
            Some(g) => g.key().map_err(storage)?.to_vec(),
            None => tag_key(tag, from),
        };
        for g in self.entries.range(start..=tag_key(tag, u64::MAX)) {
            let (k, v) = g.into_inner().map_err(storage)?;
            let first = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
            for (offset, loc) in decode_tag_list(first, &v)? {
                if offset >= from {
                    out.push((offset, loc));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The tag list of `tag` whose first event is at `first_offset`, if stored
    /// (for `verify`).
    pub fn tag_list(&self, tag: &str, first_offset: u64) -> JournalResult<Option<Vec<(u64, Loc)>>> {
        match self.entries.get(tag_key(tag, first_offset)).map_err(storage)? {
            Some(v) => decode_tag_list(first_offset, &v).map(Some),
            None => Ok(None),
        }
    }

    pub fn snapshot(&self, pid: &str) -> JournalResult<Option<Loc>> {
        self.entries.get(snapshot_key(pid)).map_err(storage)?.map(|v| Loc::decode(&v)).transpose()
    }

    /// The bodies of the frames holding events with offsets from `from` on: first
    /// the frame holding `from` (whose first offset may be lower), then the
    /// following ones, at most `limit` frames.
    pub fn frames_from_offset(&self, from: u64, limit: usize) -> JournalResult<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        let start = match self.entries.range(frame_key(0)..=frame_key(from)).next_back() {
            Some(g) => g.key().map_err(storage)?.to_vec(),
            None => frame_key(from).to_vec(),
        };
        for g in self.entries.range(start..=frame_key(u64::MAX).to_vec()).take(limit) {
            let (k, v) = g.into_inner().map_err(storage)?;
            out.push((u64::from_be_bytes(k[1..9].try_into().unwrap()), Loc::decode(&v)?));
        }
        Ok(out)
    }

    /// Every stored timer: id and location.
    pub fn timers(&self) -> JournalResult<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        for g in self.entries.prefix([TIMER_PREFIX]) {
            let (k, v) = g.into_inner().map_err(storage)?;
            let id = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let id = id.ok_or_else(|| JournalError::Corrupt("index: bad timer key".into()))?;
            out.push((id, Loc::decode(&v)?));
        }
        Ok(out)
    }

    /// The location stored under a key.
    pub fn get(&self, key: &[u8]) -> JournalResult<Option<Loc>> {
        self.entries.get(key).map_err(storage)?.map(|v| Loc::decode(&v)).transpose()
    }

    /// Entries from `start` on that start with `prefix`, in key order, at most `limit`
    /// (a view's keys, a projection's offsets).
    pub fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> JournalResult<Vec<(Vec<u8>, Loc)>> {
        let mut out = Vec::new();
        for g in self.entries.range(start.to_vec()..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = g.into_inner().map_err(storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), Loc::decode(&v)?));
        }
        Ok(out)
    }

    /// Keys and locations of the entries starting with `prefix`, in key order, at most `limit`.
    pub fn prefixed(&self, prefix: &[u8], limit: usize) -> JournalResult<Vec<(Vec<u8>, Loc)>> {
        let mut out = Vec::new();
        for g in self.entries.prefix(prefix).take(limit) {
            let (k, v) = g.into_inner().map_err(storage)?;
            out.push((k.to_vec(), Loc::decode(&v)?));
        }
        Ok(out)
    }

    /// Keys and locations of the entries from `from` to `to` (inclusive), in key
    /// order, at most `limit`.
    pub fn range(&self, from: Vec<u8>, to: Vec<u8>, limit: usize) -> JournalResult<Vec<(Vec<u8>, Loc)>> {
        let mut out = Vec::new();
        for g in self.entries.range(from..=to).take(limit) {
            let (k, v) = g.into_inner().map_err(storage)?;
            out.push((k.to_vec(), Loc::decode(&v)?));
        }
        Ok(out)
    }

    /// The last key starting with `prefix`.
    pub fn last_under(&self, prefix: &[u8]) -> JournalResult<Option<Vec<u8>>> {
        match self.entries.prefix(prefix).next_back() {
            Some(g) => Ok(Some(g.key().map_err(storage)?.to_vec())),
            None => Ok(None),
        }
    }

    /// How many entries start with `prefix` (`b'e'` event runs, `b't'` tag lists,
    /// `b's'` snapshots), for `verify`.
    pub fn count(&self, prefix: u8) -> JournalResult<u64> {
        let mut n = 0;
        for g in self.entries.prefix([prefix]) {
            g.key().map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }
}
