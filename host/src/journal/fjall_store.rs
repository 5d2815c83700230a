//! The embedded journal on fjall 3 (an LSM tree with a write-ahead journal).
//!
//! Key layout in the keyspace `journal` (built by `keys.rs`, the same keys and
//! values as `sled_store`):
//!
//! ```text
//! b'e' pid 0x00 seq_nr(u64 BE)   -> event record (codec::encode_event)
//! b't' tag 0x00 offset(u64 BE)   -> pid 0x00 seq_nr(u64 BE)      tag index
//! b's' pid                       -> latest snapshot (codec::encode_snapshot)
//! b'n'                           -> next global offset (u64 BE), rewritten per batch
//! ```
//! Persistence ids, tags and manifests never contain NUL (validated), so `pid 0x00`
//! is an unambiguous prefix and big-endian numbers sort numerically.
//! Timers live in the keyspace `timers`: id(u64 BE) -> codec::encode_timer.
//! The keyspace `meta` holds `timer-ids-reserved` -> u64 BE: every timer id below
//! it may have been handed out (see `next_timer_id`).
//!
//! Atomicity: a whole `WriteBatch` is one fjall batch (`Database::batch`), which
//! fjall writes to its journal file framed by a start marker (item count, seqno)
//! and an end marker with an xxh3 checksum of the items; recovery drops a batch
//! whose end marker or checksum is missing. Only then are the items applied to the
//! memtables, so readers never see half a batch.
//!
//! Durability: every write (events, snapshots, timers, the timer-id reservation)
//! is committed with `durability(Some(PersistMode::SyncData))`. In fjall 3.1
//! (`journal/writer.rs`, `Writer::persist`) that flushes the journal's 8 KiB
//! `BufWriter` with `write(2)` and then calls `File::sync_data`, i.e.
//! `fdatasync(2)` on the active journal file (`PersistMode::SyncAll` would call
//! `File::sync_all`, i.e. `fsync(2)`; `PersistMode::Buffer` only the `write`).
//! `fdatasync` is enough: fjall creates every journal file with `set_len` (64 MiB
//! preallocated) + `fsync` + an `fsync` of the directory, a rotated-out journal is
//! `fsync`ed (`SyncAll`) before the next one is used, and `fdatasync` still writes
//! the metadata needed to read the data back (block allocation, size). Memtables
//! are flushed to table files that lsm-tree `fsync`s (file and directory) before
//! the journal they came from is deleted. The sync happens inside `commit`, while
//! fjall's journal lock is held and before the memtables are touched: when
//! `write` returns `Ok` the batch is on stable storage, and if the sync fails
//! fjall poisons the database (every later call fails) rather than serving data
//! that may not be durable. Group commit shares the one `fdatasync` among all
//! commands of a batch.
//!
//! One process at a time: fjall takes an exclusive `flock` (std `File::try_lock`)
//! on `lock` in the directory when it opens it and keeps it until the database is
//! dropped; a second open (from another process or this one) retries for ~200 ms
//! and then fails with a `Storage` error saying the directory is in use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::codec;
use super::keys::{self, event_key, event_prefix, snapshot_key, WriterState};
use super::{Journal, JournalError, JournalResult, Snapshot, StoredEvent, Timer, WriteBatch};

/// How every write is made durable (see the module docs).
const DURABLE: PersistMode = PersistMode::SyncData;

/// Timer ids are reserved durably this many at a time, so `next_timer_id` syncs
/// once per block instead of once per id.
const TIMER_ID_BLOCK: u64 = 1024;

const TIMER_IDS_RESERVED: &[u8] = b"timer-ids-reserved";

/// Memtable size of the `journal` keyspace (fjall's default is 64 MiB). A full
/// memtable is flushed to a table file in the background; a 64 MiB flush on 2 cores
/// showed up as 100–500 ms stalls of the `fdatasync`s queued behind it (HTTP p99 in
/// `scripts/bench-wrk.sh`), 16 MiB flushes did not (BENCHMARKS.md).
const JOURNAL_MEMTABLE_BYTES: u64 = 16 << 20;

pub struct FjallJournal {
    db: Database,
    journal: Keyspace,
    timers: Keyspace,
    meta: Keyspace,
    /// Next global offset and recent sequence numbers (`keys::WriterState`). Held
    /// across a whole `write` so offsets are assigned in commit order.
    writer: Mutex<WriterState>,
    timer_ids: Mutex<TimerIds>,
}

struct TimerIds {
    next: u64,
    /// Ids below this are durably reserved.
    reserved: u64,
}

fn storage(e: fjall::Error) -> JournalError {
    JournalError::Storage(e.to_string())
}

impl FjallJournal {
    pub fn open(dir: &Path) -> JournalResult<Self> {
        let db = Database::builder(dir).open().map_err(|e| open_error(dir, e))?;
        let journal = db
            .keyspace("journal", || KeyspaceCreateOptions::default().max_memtable_size(JOURNAL_MEMTABLE_BYTES))
            .map_err(storage)?;
        let timers = db.keyspace("timers", KeyspaceCreateOptions::default).map_err(storage)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(storage)?;
        let next_offset = match journal.get(keys::NEXT_OFFSET_KEY).map_err(storage)? {
            Some(v) => keys::parse_next_offset(&v)?,
            None => {
                let last = journal.prefix([keys::LEGACY_OFFSET_PREFIX]).next_back();
                let last = last.map(|g| g.key().map_err(storage)).transpose()?;
                keys::legacy_next_offset(last.as_deref())?
            }
        };
        let reserved = match meta.get(TIMER_IDS_RESERVED).map_err(storage)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| JournalError::Corrupt("bad timer id reservation".into()))?,
            ),
            None => 0,
        };
        let after_stored = match timers.last_key_value() {
            Some(g) => keys::parse_timer_key(&g.key().map_err(storage)?)? + 1,
            None => 0,
        };
        // Nothing is reserved for this run yet: the first `next_timer_id` reserves.
        let next = reserved.max(after_stored).max(1);
        Ok(FjallJournal {
            db,
            journal,
            timers,
            meta,
            writer: Mutex::new(WriterState::new(next_offset)),
            timer_ids: Mutex::new(TimerIds { next, reserved: next }),
        })
    }

    fn read_event(&self, pid: &str, seq_nr: u64) -> JournalResult<StoredEvent> {
        let v = self
            .journal
            .get(event_key(pid, seq_nr))
            .map_err(storage)?
            .ok_or_else(|| JournalError::Corrupt(format!("index points at missing event {pid}#{seq_nr}")))?;
        codec::decode_event(pid, &v)
    }

    /// A batch that is synced (see the module docs) when committed.
    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(DURABLE))
    }
}

fn open_error(dir: &Path, e: fjall::Error) -> JournalError {
    match e {
        fjall::Error::Locked => JournalError::Storage(format!(
            "journal {} is in use by another process (could not lock {})",
            dir.display(),
            PathBuf::from(dir).join("lock").display()
        )),
        e => JournalError::Storage(format!("opening journal {}: {e}", dir.display())),
    }
}

impl Journal for FjallJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().unwrap();
        writer.check_sequence(batch, |k| self.journal.contains_key(k).map_err(storage))?;
        let (entries, offset) = keys::batch_entries(batch, writer.next_offset);
        let mut b = self.durable_batch();
        for (k, v) in entries {
            b.insert(&self.journal, k, v);
        }
        match b.commit() {
            Ok(()) => {
                writer.written(batch, offset);
                Ok(())
            }
            Err(e) => {
                writer.failed(batch);
                Err(storage(e))
            }
        }
    }

    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        match self.journal.prefix(event_prefix(pid)).next_back() {
            Some(g) => keys::event_key_seq_nr(&g.key().map_err(storage)?),
            None => Ok(0),
        }
    }

    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let start = event_key(pid, from.max(1));
        let end = event_key(pid, u64::MAX);
        let mut out = Vec::new();
        for g in self.journal.range(start..=end).take(limit) {
            let v = g.value().map_err(storage)?;
            out.push(codec::decode_event(pid, &v)?);
        }
        Ok(out)
    }

    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let start = keys::tag_key(tag, from);
        let end = keys::tag_key(tag, u64::MAX);
        let mut out = Vec::new();
        for g in self.journal.range(start..=end).take(limit) {
            let r = g.value().map_err(storage)?;
            let (pid, seq) = keys::parse_ref(&r)?;
            out.push(self.read_event(&pid, seq)?);
        }
        Ok(out)
    }

    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>> {
        match self.journal.get(snapshot_key(pid)).map_err(storage)? {
            Some(v) => Ok(Some(codec::decode_snapshot(pid, &v)?)),
            None => Ok(None),
        }
    }

    fn put_timer(&self, timer: &Timer) -> JournalResult<()> {
        let mut b = self.durable_batch();
        b.insert(&self.timers, keys::timer_key(timer.id), codec::encode_timer(timer));
        b.commit().map_err(storage)
    }

    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        let mut b = self.durable_batch();
        b.remove(&self.timers, keys::timer_key(id));
        b.commit().map_err(storage)
    }

    fn timers(&self) -> JournalResult<Vec<Timer>> {
        let mut out = Vec::new();
        for g in self.timers.iter() {
            let (k, v) = g.into_inner().map_err(storage)?;
            out.push(codec::decode_timer(keys::parse_timer_key(&k)?, &v)?);
        }
        out.sort_by_key(|t| (t.due_ms, t.id));
        Ok(out)
    }

    /// Ids come from memory; every `TIMER_ID_BLOCK` ids the upper end of the block
    /// is stored durably first, and a reopened journal starts above it (and above
    /// every stored timer), so ids are never reused, even after a crash.
    fn next_timer_id(&self) -> JournalResult<u64> {
        let mut ids = self.timer_ids.lock().unwrap();
        if ids.next >= ids.reserved {
            let reserved = ids.next + TIMER_ID_BLOCK;
            let mut b = self.durable_batch();
            b.insert(&self.meta, TIMER_IDS_RESERVED, reserved.to_be_bytes());
            b.commit().map_err(storage)?;
            ids.reserved = reserved;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }
}
