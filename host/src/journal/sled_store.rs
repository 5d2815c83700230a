//! The embedded journal on sled.
//!
//! Key layout in the single tree `journal` (one tree, so that one `apply_batch`
//! makes events, their indexes and snapshots atomic together; built by `keys.rs`):
//!
//! ```text
//! b'e' pid 0x00 seq_nr(u64 BE)   -> event record (codec::encode_event)
//! b't' tag 0x00 offset(u64 BE)   -> pid 0x00 seq_nr(u64 BE)      tag index
//! b's' pid                       -> latest snapshot (codec::encode_snapshot)
//! b'n'                           -> next global offset (u64 BE), rewritten per batch
//! ```
//! Persistence ids, tags and manifests never contain NUL (validated), so `pid 0x00`
//! is an unambiguous prefix and big-endian numbers sort numerically.
//! Timers live in the tree `timers`: id(u64 BE) -> codec::encode_timer. The
//! outbox's pending entries, applied idempotency keys and topic messages live in
//! `journal` too, under the keys of `outbox.rs`, with its records as values.
//!
//! Durability: `write` applies the batch, calls `Db::flush`, then `fdatasync`s
//! what sled wrote. `Db::flush` alone is not enough: sled 0.34 writes its log file
//! (`db`) with `sync_file_range`, which pushes pages to the device but does not flush
//! the device's write cache, and it writes pages larger than a quarter segment to
//! separate files under `blobs/` without syncing them at all. Both survive a killed
//! process, not a power loss. So after the flush the log file is `fdatasync`ed and
//! every blob file not synced before is `fsync`ed (blob files are written once and
//! never changed, so each is synced once). Group commit shares that cost among all
//! commands of a batch.

use std::path::Path;
use std::sync::Mutex;

use super::codec;
use super::keys::{self, event_key, event_prefix, snapshot_key, WriterState};
use super::outbox::{self, OutboxEntry, StoredTopicMessage};
use super::{Journal, JournalError, JournalResult, Snapshot, StoredEvent, Timer, WriteBatch};

pub struct SledJournal {
    db: sled::Db,
    journal: sled::Tree,
    timers: sled::Tree,
    /// sled's log file, for `fdatasync`.
    log: std::fs::File,
    dir: std::path::PathBuf,
    /// Blob files already synced.
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// Next global offset and recent sequence numbers (`keys::WriterState`). Held
    /// across a whole `write` so offsets are assigned in commit order.
    writer: Mutex<WriterState>,
    /// The data directory's lock, when opened through `journal::open`.
    _lock: Option<super::DataLock>,
}

fn storage(e: sled::Error) -> JournalError {
    JournalError::Storage(e.to_string())
}

impl SledJournal {
    /// Open in a data directory whose lock is held.
    pub fn open_locked(dir: &Path, lock: super::DataLock) -> JournalResult<Self> {
        Ok(SledJournal { _lock: Some(lock), ..Self::open(dir)? })
    }

    pub fn open(dir: &Path) -> JournalResult<Self> {
        let db = sled::Config::new().path(dir).open().map_err(storage)?;
        let journal = db.open_tree("journal").map_err(storage)?;
        let timers = db.open_tree("timers").map_err(storage)?;
        let next_offset = match journal.get(keys::NEXT_OFFSET_KEY).map_err(storage)? {
            Some(v) => keys::parse_next_offset(&v)?,
            None => {
                let last = journal.scan_prefix([keys::LEGACY_OFFSET_PREFIX]).next_back();
                let last = last.map(|kv| kv.map(|(k, _)| k).map_err(storage)).transpose()?;
                keys::legacy_next_offset(last.as_deref())?
            }
        };
        let log = std::fs::File::open(dir.join("db"))
            .map_err(|e| JournalError::Storage(format!("opening sled's log: {e}")))?;
        Ok(SledJournal {
            db,
            journal,
            timers,
            log,
            dir: dir.to_path_buf(),
            synced_blobs: Mutex::default(),
            writer: Mutex::new(WriterState::new(next_offset)),
            _lock: None,
        })
    }

    /// Make everything sled has written durable (see the module docs).
    fn sync(&self) -> JournalResult<()> {
        self.db.flush().map_err(storage)?;
        let failed = |e: std::io::Error| JournalError::Storage(format!("sync failed: {e}"));
        self.log.sync_data().map_err(failed)?;
        let mut synced = self.synced_blobs.lock().unwrap();
        let Ok(entries) = std::fs::read_dir(self.dir.join("blobs")) else { return Ok(()) };
        let mut present = std::collections::HashSet::new();
        let mut new_blobs = false;
        for entry in entries {
            let name = entry.map_err(failed)?.file_name();
            if !synced.contains(&name) {
                std::fs::File::open(self.dir.join("blobs").join(&name)).and_then(|f| f.sync_all()).map_err(failed)?;
                new_blobs = true;
            }
            present.insert(name);
        }
        if new_blobs {
            std::fs::File::open(self.dir.join("blobs")).and_then(|d| d.sync_all()).map_err(failed)?;
        }
        *synced = present;
        Ok(())
    }

    fn read_event(&self, pid: &str, seq_nr: u64) -> JournalResult<StoredEvent> {
        let v = self
            .journal
            .get(event_key(pid, seq_nr))
            .map_err(storage)?
            .ok_or_else(|| JournalError::Corrupt(format!("index points at missing event {pid}#{seq_nr}")))?;
        codec::decode_event(pid, &v)
    }
}

impl Journal for SledJournal {
    fn disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }

    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().unwrap();
        writer
            .check_sequence(batch, |pid, seq_nr| self.journal.contains_key(event_key(pid, seq_nr)).map_err(storage))?;
        let (positions, _) = outbox::assign_positions(&batch.outbox.published, &Default::default(), |t| {
            outbox::sled_topic_head(&self.journal, t)
        })?;
        let (entries, offset) = keys::batch_entries(batch, writer.next_offset);
        let (outbox_puts, outbox_removes) = outbox::sled_changes(&batch.outbox, &positions);
        let mut b = sled::Batch::default();
        for (k, v) in entries.into_iter().chain(outbox_puts) {
            b.insert(k, v);
        }
        for k in outbox_removes {
            b.remove(k);
        }
        let result = self.journal.apply_batch(b).map_err(storage);
        if result.is_ok() {
            // Applied, so its offsets are taken even if the sync below fails.
            writer.next_offset = offset;
        }
        match result.and_then(|()| self.sync()) {
            Ok(()) => {
                writer.written(batch, offset);
                Ok(())
            }
            Err(e) => {
                writer.failed(batch);
                Err(e)
            }
        }
    }

    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        match self.journal.scan_prefix(event_prefix(pid)).next_back() {
            Some(kv) => {
                let (k, _) = kv.map_err(storage)?;
                keys::event_key_seq_nr(&k)
            }
            None => Ok(0),
        }
    }

    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let start = event_key(pid, from.max(1));
        let end = event_key(pid, u64::MAX);
        let mut out = Vec::new();
        for kv in self.journal.range(start..=end).take(limit) {
            let (_, v) = kv.map_err(storage)?;
            out.push(codec::decode_event(pid, &v)?);
        }
        Ok(out)
    }

    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let start = keys::tag_key(tag, from);
        let end = keys::tag_key(tag, u64::MAX);
        let mut out = Vec::new();
        for kv in self.journal.range(start..=end).take(limit) {
            let (_, r) = kv.map_err(storage)?;
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
        self.timers.insert(keys::timer_key(timer.id), codec::encode_timer(timer)).map_err(storage)?;
        self.sync()?;
        Ok(())
    }

    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        self.timers.remove(keys::timer_key(id)).map_err(storage)?;
        self.sync()?;
        Ok(())
    }

    fn timers(&self) -> JournalResult<Vec<Timer>> {
        let mut out = Vec::new();
        for kv in self.timers.iter() {
            let (k, v) = kv.map_err(storage)?;
            let id = keys::parse_timer_key(&k)?;
            out.push(codec::decode_timer(id, &v)?);
        }
        out.sort_by_key(|t| (t.due_ms, t.id));
        Ok(out)
    }

    fn next_timer_id(&self) -> JournalResult<u64> {
        self.db.generate_id().map_err(storage)
    }

    /// The sled backend keeps no index of events by offset.
    fn events_from(&self, _from: u64, _limit: usize) -> JournalResult<Vec<StoredEvent>> {
        Err(JournalError::Invalid("reading all events by offset needs `--journal log`; read by tag instead".into()))
    }

    fn head(&self) -> u64 {
        self.writer.lock().unwrap().next_offset - 1
    }

    fn outbox_pending(&self) -> JournalResult<Vec<OutboxEntry>> {
        outbox::sled_pending(&self.journal)
    }

    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool> {
        outbox::sled_applied(&self.journal, pid, key)
    }

    fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredTopicMessage>> {
        outbox::sled_messages(&self.journal, topic, from, limit)
    }

    fn topic_head(&self, topic: &str) -> JournalResult<u64> {
        outbox::sled_topic_head(&self.journal, topic)
    }
}

#[cfg(test)]
mod tests {
    //! Tests every backend must pass live in `journal/tests.rs`; this one is about
    //! sled's blob files.
    use super::*;
    use crate::journal::tests::ev;

    #[test]
    fn large_events_stored_as_sled_blobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = SledJournal::open(dir.path()).unwrap();
        let mut e = ev("big|1", 1, &["t"]);
        e.payload = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        j.write(&WriteBatch { events: vec![e.clone()], ..WriteBatch::default() }).unwrap();
        assert!(std::fs::read_dir(dir.path().join("blobs")).unwrap().count() > 0, "expected sled to use a blob file");
        drop(j);
        let j = SledJournal::open(dir.path()).unwrap();
        assert_eq!(j.events("big|1", 1, 10).unwrap()[0].payload, e.payload);
    }
}
