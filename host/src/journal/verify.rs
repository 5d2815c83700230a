//! `mneme journal verify DATA`: read every frame and every record of the commit
//! log and every entry of its index, and report what is wrong.
//!
//! Checked: the log's own recovery rules (by opening it); every frame's CRC and
//! sequence number (by reading it); every record's CRC; per persistence id,
//! sequence numbers gapless from 1; global offsets gapless and increasing across
//! frames, each frame's `first_offset` matching its first event; and both ways
//! between log and index: every event, tag, latest snapshot and live timer of the
//! log has the index entry pointing at it (a frame's events of one tag: its tag
//! list), and the index has no other entries.
//! Projections (`views.rs`): every view and offset record's CRC; every frame with
//! view records carries the offset record of their projection; offsets never go
//! back; every key with a value and every generation's offset has its index entry,
//! and the index has no other view or offset entries.
//! The outbox (`outbox.rs`): every record's CRC; a done record follows a pending
//! entry of its key; each entity applied each idempotency key at most once; each
//! topic's positions are gapless from 1; pending entries, applied keys and topic
//! messages have their index entries and the index no others.
//! Memory use grows with the number of persistence ids, view keys, pending outbox
//! entries and applied idempotency keys, not of events.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::body::{self, Record};
use super::codec;
use super::index::{frame_key, EventRuns, Index, Loc, TagLists, Through};
use super::keys::snapshot_key;
use super::lock::DataLock;
use super::log::{CommitLog, LogError, LogOptions, StdIo};
use super::log_journal::{index_dir, log_dir};
use super::outbox_index::{self, VerifyOutbox};
use super::views::{FrameRecord, ViewsCheck};
use super::JournalResult;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub frames: u64,
    pub events: u64,
    pub snapshots: u64,
    pub timers: u64,
    /// Projection records (view puts and deletes, offsets) read.
    pub projection_records: u64,
    /// Views' keys that hold a value, over all projections and generations.
    pub view_keys: u64,
    /// Outbox entries written, and those not delivered yet.
    pub outbox_entries: u64,
    pub outbox_pending: u64,
    /// Idempotency keys applied by entities.
    pub applied_keys: u64,
    /// Messages published to topics.
    pub topic_messages: u64,
    /// Things an operator should know that are not damage (a torn tail cut, an
    /// index that lags the log and is caught up at the next start).
    pub notes: Vec<String>,
    /// Damage: any of these makes `mneme journal verify` exit with status 1.
    pub problems: Vec<String>,
}

/// Problems past this many are counted, not listed.
const MAX_LISTED: usize = 100;

impl VerifyReport {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        } else if self.problems.len() == MAX_LISTED {
            self.problems.push("... (more problems not listed)".into());
        }
    }
}

/// Verify the commit log and index of a data directory (which must not be in use).
pub fn verify(data: &Path) -> JournalResult<VerifyReport> {
    let _lock = DataLock::acquire(data)?;
    let mut report = VerifyReport::default();
    let (log, opened) = match CommitLog::open(&log_dir(data), LogOptions::default(), Arc::new(StdIo)) {
        Ok(x) => x,
        Err(e @ LogError::Corrupt { .. }) => {
            report.problem(format!("the commit log cannot be opened: {e}"));
            return Ok(report);
        }
        Err(e) => return Err(super::JournalError::Storage(e.to_string())),
    };
    report.segments = opened.segments;
    if let Some(t) = opened.torn_tail {
        report.notes.push(format!("commit log: {t}"));
    }
    let index = match Index::open(&index_dir(data)) {
        Ok(i) => Some(i),
        Err(e) => {
            report.problem(format!("the index cannot be opened: {e} (rebuild it: `mneme journal reindex`)"));
            None
        }
    };
    let through = match index.as_ref().map(|i| i.through()).transpose() {
        Ok(t) => t.flatten().unwrap_or(Through::START),
        Err(e) => {
            report.problem(format!("the index cannot be read: {e}"));
            Through::START
        }
    };
    let mut check = Check {
        index: index.as_ref(),
        through,
        report: &mut report,
        next_offset: 0,
        last_seq: HashMap::new(),
        snapshots: HashMap::new(),
        timers: HashMap::new(),
        indexed_runs: 0,
        indexed_tags: 0,
        frame_tags: TagLists::default(),
        frame_runs: EventRuns::default(),
        views: ViewsCheck::default(),
        indexed_frames: 0,
        outbox: VerifyOutbox::default(),
    };
    for frame in log.reader().frames_from(super::log::Position { segment: 1, pos: 0 }) {
        match frame {
            Ok(f) => check.frame(&f),
            Err(e) => {
                check.report.problem(format!("commit log: {e}"));
                break;
            }
        }
    }
    if through.end > log.end() {
        check.report.problem(format!(
            "the index has taken in frames up to {}, past the log's end {}",
            through.end,
            log.end()
        ));
    } else if through.end < log.end() {
        check.report.notes.push(format!(
            "the index lags the log (indexed through {}, the log ends at {}); it is caught up at the next start",
            through.end,
            log.end()
        ));
    }
    if let Some(index) = check.index {
        check.index_has_nothing_else(index, through.end == log.end());
    }
    let outbox = std::mem::take(&mut check.outbox);
    report.outbox_entries = outbox.entries;
    report.outbox_pending = outbox.pending();
    report.applied_keys = outbox.applied();
    report.topic_messages = outbox.messages;
    Ok(report)
}

struct Check<'a> {
    index: Option<&'a Index>,
    through: Through,
    report: &'a mut VerifyReport,
    next_offset: u64,
    last_seq: HashMap<String, u64>,
    snapshots: HashMap<String, Loc>,
    timers: HashMap<u64, Loc>,
    /// Counts of what the index must hold, for the other direction.
    indexed_runs: u64,
    indexed_tags: u64,
    /// The current frame's events per tag, as its tag lists must hold them.
    frame_tags: TagLists<String>,
    /// The current frame's indexed events per entity, as its event runs must hold them.
    frame_runs: EventRuns<String>,
    views: ViewsCheck,
    indexed_frames: u64,
    outbox: VerifyOutbox,
}

impl outbox_index::Report for Check<'_> {
    fn problem(&mut self, p: String) {
        self.report.problem(p);
    }

    fn expect(&mut self, index: &Index, key: &[u8], loc: Loc, what: &str) {
        Check::expect(self, index, key, loc, what);
    }
}

impl Check<'_> {
    fn frame(&mut self, f: &super::log::Frame) {
        self.report.frames += 1;
        if self.next_offset == 0 {
            self.next_offset = f.first_offset.max(1);
        }
        let at = |offset: usize, len: usize| Loc {
            segment: f.start.segment,
            pos: f.body_pos + offset as u64,
            len: len as u32,
        };
        let records = match body::records(&f.body) {
            Ok(r) => r,
            Err(e) => return self.report.problem(format!("frame at {}: {e}", f.start)),
        };
        if f.first_offset != self.next_offset {
            self.report.problem(format!(
                "frame at {} starts at offset {}, expected {}",
                f.start, f.first_offset, self.next_offset
            ));
        }
        let indexed = f.end <= self.through.end;
        let mut projection_records = Vec::new();
        let has_events = records.iter().any(|r| matches!(r, Record::Event { .. }));
        if let (Some(index), true, true) = (self.index, indexed, has_events) {
            self.indexed_frames += 1;
            let body = Loc { segment: f.start.segment, pos: f.body_pos, len: f.body.len() as u32 };
            self.expect(index, &frame_key(f.first_offset), body, &format!("the frame at offset {}", f.first_offset));
        }
        for record in records {
            match record {
                Record::Event { at: o, len } => self.event(at(o, len), &f.body[o..o + len], indexed),
                Record::Snapshot { at: o, len } => match codec::decode_snapshot_record(&f.body[o..o + len]) {
                    Ok(s) => {
                        self.report.snapshots += 1;
                        self.snapshots.insert(s.persistence_id, at(o, len));
                    }
                    Err(e) => self.report.problem(format!("snapshot record in frame at {}: {e}", f.start)),
                },
                Record::TimerStored { at: o, len } => match codec::decode_timer_record(&f.body[o..o + len]) {
                    Ok(t) => {
                        self.timers.insert(t.id, at(o, len));
                    }
                    Err(e) => self.report.problem(format!("timer record in frame at {}: {e}", f.start)),
                },
                Record::TimerRemoved { id } => {
                    self.timers.remove(&id);
                }
                Record::ViewPut { at: o, len } => projection_records.push(FrameRecord::View {
                    loc: at(o, len),
                    bytes: &f.body[o..o + len],
                    put: true,
                }),
                Record::ViewDelete { at: o, len } => projection_records.push(FrameRecord::View {
                    loc: at(o, len),
                    bytes: &f.body[o..o + len],
                    put: false,
                }),
                Record::ProjectionOffset { at: o, len } => {
                    projection_records.push(FrameRecord::Offset { loc: at(o, len), bytes: &f.body[o..o + len] })
                }
                Record::Outbox { kind, at: o, len } => {
                    let mut outbox = std::mem::take(&mut self.outbox);
                    let index = self.index.filter(|_| indexed);
                    outbox.record(kind, &f.body[o..o + len], at(o, len), index, self);
                    self.outbox = outbox;
                }
            }
        }
        if let Some(index) = self.index {
            self.expect_event_runs(index);
            self.expect_tag_lists(index);
        }
        if !projection_records.is_empty() {
            for p in self.views.frame(&projection_records) {
                self.report.problem(format!("frame at {}: {p}", f.start));
            }
        }
    }

    fn event(&mut self, loc: Loc, bytes: &[u8], indexed: bool) {
        let e = match codec::decode_event_record(bytes) {
            Ok(e) => e,
            Err(err) => {
                return self.report.problem(format!("event record at segment {} byte {}: {err}", loc.segment, loc.pos))
            }
        };
        self.report.events += 1;
        let last = self.last_seq.entry(e.persistence_id.clone()).or_insert(0);
        if e.seq_nr != *last + 1 {
            self.report.problem(format!("{}: sequence number {} follows {}", e.persistence_id, e.seq_nr, last));
        }
        *last = e.seq_nr;
        if e.offset != self.next_offset {
            self.report.problem(format!(
                "{}#{}: offset {}, expected {}",
                e.persistence_id, e.seq_nr, e.offset, self.next_offset
            ));
        }
        self.next_offset = e.offset + 1;
        if self.index.is_none() || !indexed {
            return;
        }
        self.frame_runs.add(e.persistence_id, e.seq_nr, loc);
        for tag in e.tags {
            self.frame_tags.add(tag, e.offset, loc);
        }
    }

    /// Each entity of the frame just read has its event runs, holding exactly the
    /// frame's events of the entity.
    fn expect_event_runs(&mut self, index: &Index) {
        for (pid, first, locs) in self.frame_runs.take() {
            self.indexed_runs += 1;
            let last = first + locs.len() as u64 - 1;
            match index.event_run(&pid, first) {
                Ok(Some(found)) if found == locs => {}
                Ok(Some(found)) => self.report.problem(format!(
                    "event run of {pid}#{first} holds {found:?}, the log has events {first} to {last} at {locs:?}"
                )),
                Ok(None) => self.report.problem(format!("index has no entry for events {pid}#{first} to #{last}")),
                Err(e) => self.report.problem(format!("event run of {pid}#{first} cannot be read: {e}")),
            }
        }
    }

    /// Each tag of the frame just read has its tag list, holding exactly the
    /// frame's events that carry the tag.
    fn expect_tag_lists(&mut self, index: &Index) {
        for (tag, list) in self.frame_tags.take() {
            self.indexed_tags += 1;
            let first = list[0].0;
            match index.tag_list(&tag, first) {
                Ok(Some(found)) if found == list => {}
                Ok(Some(found)) => self
                    .report
                    .problem(format!("tag list of `{tag}` from offset {first} holds {found:?}, the log has {list:?}")),
                Ok(None) => self.report.problem(format!("index has no tag list of `{tag}` from offset {first}")),
                Err(e) => self.report.problem(format!("tag list of `{tag}` from offset {first} cannot be read: {e}")),
            }
        }
    }

    fn expect(&mut self, index: &Index, key: &[u8], loc: Loc, what: &str) {
        match index.get(key) {
            Ok(Some(found)) if found == loc => {}
            Ok(Some(found)) => {
                self.report.problem(format!("index entry of {what} points at {found:?}, the log has it at {loc:?}"))
            }
            Ok(None) => self.report.problem(format!("index has no entry for {what}")),
            Err(e) => self.report.problem(format!("index entry of {what} cannot be read: {e}")),
        }
    }

    /// The index holds exactly what the log says: no extra events, tags,
    /// snapshots or timers, and the latest snapshot of each entity.
    fn index_has_nothing_else(&mut self, index: &Index, complete: bool) {
        let snapshots = std::mem::take(&mut self.snapshots);
        let expected = [
            (b'e', "event run", self.indexed_runs),
            (b't', "tag", self.indexed_tags),
            (b'f', "frame", self.indexed_frames),
        ];
        let expected: Vec<_> =
            expected.into_iter().chain(complete.then_some((b's', "snapshot", snapshots.len() as u64))).collect();
        self.outbox_index_has_nothing_else(index, complete);
        for (prefix, what, n) in expected {
            match index.count(prefix) {
                Ok(found) if found != n => {
                    self.report.problem(format!("index holds {found} {what} entries, the log's indexed frames {n}"))
                }
                Ok(_) => {}
                Err(e) => self.report.problem(format!("index {what} entries cannot be read: {e}")),
            }
        }
        self.report.projection_records = self.views.records;
        self.report.view_keys = self.views.live_keys.len() as u64;
        if !complete {
            return;
        }
        let views = std::mem::take(&mut self.views);
        for (prefix, what, n) in
            [(b'v', "view key", views.live_keys.len() as u64), (b'p', "projection offset", views.offsets.len() as u64)]
        {
            match index.count(prefix) {
                Ok(found) if found != n => {
                    self.report.problem(format!("index holds {found} {what} entries, the log {n}"))
                }
                Ok(_) => {}
                Err(e) => self.report.problem(format!("index {what} entries cannot be read: {e}")),
            }
        }
        for (key, loc) in &views.live_keys {
            self.expect(index, key, *loc, &format!("view key {}", String::from_utf8_lossy(&key[1..]).escape_default()));
        }
        for (key, (loc, _)) in &views.offsets {
            let what = format!("projection offset {}", String::from_utf8_lossy(&key[1..]).escape_default());
            self.expect(index, key, *loc, &what);
        }
        for (pid, loc) in &snapshots {
            self.expect(index, &snapshot_key(pid), *loc, &format!("the latest snapshot of {pid}"));
        }
        match index.timers() {
            Ok(found) => {
                let found: HashMap<u64, Loc> = found.into_iter().collect();
                if found != self.timers {
                    self.report.problem(format!(
                        "index lists {} stored timers, the log {} (or they point elsewhere)",
                        found.len(),
                        self.timers.len()
                    ));
                }
                self.report.timers = self.timers.len() as u64;
            }
            Err(e) => self.report.problem(format!("index timers cannot be read: {e}")),
        }
    }

    /// The outbox's side of [`Check::index_has_nothing_else`].
    fn outbox_index_has_nothing_else(&mut self, index: &Index, complete: bool) {
        let outbox = std::mem::take(&mut self.outbox);
        outbox.index_has_nothing_else(index, complete, self);
        self.outbox = outbox;
    }
}
