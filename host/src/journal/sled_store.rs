//! The embedded journal on sled.
//!
//! Key layout in the single tree `journal` (one tree, so that one `apply_batch`
//! makes events, their indexes and snapshots atomic together):
//!
//! ```text
//! b'e' pid 0x00 seq_nr(u64 BE)   -> event record (codec::encode_event)
//! b'o' offset(u64 BE)            -> pid 0x00 seq_nr(u64 BE)      global order
//! b't' tag 0x00 offset(u64 BE)   -> pid 0x00 seq_nr(u64 BE)      tag index
//! b's' pid                       -> latest snapshot (codec::encode_snapshot)
//! ```
//! Persistence ids, tags and manifests never contain NUL (validated), so `pid 0x00`
//! is an unambiguous prefix and big-endian numbers sort numerically.
//! Timers live in the tree `timers`: id(u64 BE) -> codec::encode_timer.
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
    /// Next global offset. Held across a whole `write` so offsets are assigned in
    /// commit order.
    next_offset: Mutex<u64>,
}

fn storage(e: sled::Error) -> JournalError {
    JournalError::Storage(e.to_string())
}

fn event_prefix(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 10);
    k.push(b'e');
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k
}

fn event_key(pid: &str, seq_nr: u64) -> Vec<u8> {
    let mut k = event_prefix(pid);
    k.extend_from_slice(&seq_nr.to_be_bytes());
    k
}

fn event_ref(pid: &str, seq_nr: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 9);
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_nr.to_be_bytes());
    k
}

fn parse_ref(r: &[u8]) -> JournalResult<(String, u64)> {
    let bad = || JournalError::Corrupt("bad index entry".into());
    if r.len() < 10 || r[r.len() - 9] != 0 {
        return Err(bad());
    }
    let pid = std::str::from_utf8(&r[..r.len() - 9]).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(r[r.len() - 8..].try_into().unwrap());
    Ok((pid.to_string(), seq))
}

fn tag_prefix(tag: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + 10);
    k.push(b't');
    k.extend_from_slice(tag.as_bytes());
    k.push(0);
    k
}

fn snapshot_key(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 1);
    k.push(b's');
    k.extend_from_slice(pid.as_bytes());
    k
}

impl SledJournal {
    pub fn open(dir: &Path) -> JournalResult<Self> {
        let db = sled::Config::new().path(dir).open().map_err(storage)?;
        let journal = db.open_tree("journal").map_err(storage)?;
        let timers = db.open_tree("timers").map_err(storage)?;
        let next_offset = match journal.scan_prefix([b'o']).next_back() {
            Some(kv) => {
                let (k, _) = kv.map_err(storage)?;
                u64::from_be_bytes(k[1..9].try_into().map_err(|_| JournalError::Corrupt("bad offset key".into()))?) + 1
            }
            None => 1,
        };
        let log = std::fs::File::open(dir.join("db")).map_err(|e| JournalError::Storage(format!("opening sled's log: {e}")))?;
        Ok(SledJournal {
            db,
            journal,
            timers,
            log,
            dir: dir.to_path_buf(),
            synced_blobs: Mutex::default(),
            next_offset: Mutex::new(next_offset),
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

    /// Refuse a batch that would overwrite an event or leave a gap.
    fn check_sequence(&self, batch: &WriteBatch) -> JournalResult<()> {
        let mut expected: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for e in &batch.events {
            match expected.get_mut(e.persistence_id.as_str()) {
                Some(next) => {
                    if e.seq_nr != *next {
                        return Err(JournalError::Invalid(format!(
                            "{}: sequence number {} where {} was expected",
                            e.persistence_id, e.seq_nr, next
                        )));
                    }
                    *next += 1;
                }
                None => {
                    let pid = e.persistence_id.as_str();
                    if e.seq_nr == 0
                        || self.journal.contains_key(event_key(pid, e.seq_nr)).map_err(storage)?
                        || (e.seq_nr > 1 && !self.journal.contains_key(event_key(pid, e.seq_nr - 1)).map_err(storage)?)
                    {
                        return Err(JournalError::Invalid(format!(
                            "{pid}: sequence number {} does not follow the stored events (another writer?)",
                            e.seq_nr
                        )));
                    }
                    expected.insert(pid, e.seq_nr + 1);
                }
            }
        }
        Ok(())
    }
}

impl Journal for SledJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut next_offset = self.next_offset.lock().unwrap();
        self.check_sequence(batch)?;
        let mut b = sled::Batch::default();
        let mut offset = *next_offset;
        for e in &batch.events {
            let r = event_ref(&e.persistence_id, e.seq_nr);
            b.insert(event_key(&e.persistence_id, e.seq_nr), codec::encode_event(e, offset));
            let mut ok = vec![b'o'];
            ok.extend_from_slice(&offset.to_be_bytes());
            b.insert(ok, r.clone());
            for t in &e.tags {
                let mut tk = tag_prefix(t);
                tk.extend_from_slice(&offset.to_be_bytes());
                b.insert(tk, r.clone());
            }
            offset += 1;
        }
        for s in &batch.snapshots {
            b.insert(snapshot_key(&s.persistence_id), codec::encode_snapshot(s));
        }
        self.journal.apply_batch(b).map_err(storage)?;
        self.sync()?;
        *next_offset = offset;
        Ok(())
    }

    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        match self.journal.scan_prefix(event_prefix(pid)).next_back() {
            Some(kv) => {
                let (k, _) = kv.map_err(storage)?;
                Ok(u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()))
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
        let mut start = tag_prefix(tag);
        start.extend_from_slice(&from.to_be_bytes());
        let mut end = tag_prefix(tag);
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.journal.range(start..=end).take(limit) {
            let (_, r) = kv.map_err(storage)?;
            let (pid, seq) = parse_ref(&r)?;
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
        self.timers.insert(timer.id.to_be_bytes(), codec::encode_timer(timer)).map_err(storage)?;
        self.sync()?;
        Ok(())
    }

    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        self.timers.remove(id.to_be_bytes()).map_err(storage)?;
        self.sync()?;
        Ok(())
    }

    fn timers(&self) -> JournalResult<Vec<Timer>> {
        let mut out = Vec::new();
        for kv in self.timers.iter() {
            let (k, v) = kv.map_err(storage)?;
            let id = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| JournalError::Corrupt("bad timer key".into()))?);
            out.push(codec::decode_timer(id, &v)?);
        }
        out.sort_by_key(|t| (t.due_ms, t.id));
        Ok(out)
    }

    fn next_timer_id(&self) -> JournalResult<u64> {
        self.db.generate_id().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::NewEvent;

    fn ev(pid: &str, seq: u64, tags: &[&str]) -> NewEvent {
        NewEvent {
            persistence_id: pid.into(),
            seq_nr: seq,
            timestamp_ms: 1,
            writer_id: "w1".into(),
            manifest: "M".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            payload: format!("{pid}-{seq}").into_bytes(),
        }
    }

    #[test]
    fn batch_is_stored_with_offsets_tags_and_gapless_seq() {
        let dir = tempfile::tempdir().unwrap();
        let j = SledJournal::open(dir.path()).unwrap();
        let batch = WriteBatch { events: vec![ev("a|1", 1, &["x"]), ev("b|1", 1, &[]), ev("a|1", 2, &["x", "y"])], snapshots: vec![] };
        j.write(&batch).unwrap();
        assert_eq!(j.highest_seq_nr("a|1").unwrap(), 2);
        assert_eq!(j.highest_seq_nr("a|10").unwrap(), 0, "prefix of another id must not match");
        let a = j.events("a|1", 1, 100).unwrap();
        assert_eq!(a.iter().map(|e| (e.seq_nr, e.offset)).collect::<Vec<_>>(), vec![(1, 1), (2, 3)]);
        let x = j.events_by_tag("x", 0, 100).unwrap();
        assert_eq!(x.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(j.events_by_tag("x", 2, 100).unwrap().len(), 1);
        // A gap or an overwrite is refused and stores nothing.
        let gap = WriteBatch { events: vec![ev("b|1", 2, &["x"]), ev("a|1", 4, &[])], snapshots: vec![] };
        assert!(matches!(j.write(&gap), Err(JournalError::Invalid(_))));
        let dup = WriteBatch { events: vec![ev("a|1", 2, &[])], snapshots: vec![] };
        assert!(j.write(&dup).is_err());
        assert_eq!(j.highest_seq_nr("b|1").unwrap(), 1);
        assert_eq!(j.events_by_tag("x", 0, 100).unwrap().len(), 2);
        drop(j);
        // Offsets continue after a reopen.
        let j = SledJournal::open(dir.path()).unwrap();
        j.write(&WriteBatch { events: vec![ev("a|1", 3, &["x"])], snapshots: vec![] }).unwrap();
        assert_eq!(j.events("a|1", 3, 1).unwrap()[0].offset, 4);
    }

    #[test]
    fn snapshots_and_timers_persist() {
        let dir = tempfile::tempdir().unwrap();
        let j = SledJournal::open(dir.path()).unwrap();
        let s = Snapshot { persistence_id: "a|1".into(), seq_nr: 5, state_version: 2, timestamp_ms: 9, state: b"st".to_vec() };
        j.write(&WriteBatch { events: vec![], snapshots: vec![s.clone()] }).unwrap();
        let id = j.next_timer_id().unwrap();
        let t = Timer { id, due_ms: 10, entity_type: "t".into(), entity_id: "1".into(), payload: b"{}".to_vec() };
        j.put_timer(&t).unwrap();
        drop(j);
        let j = SledJournal::open(dir.path()).unwrap();
        assert_eq!(j.load_snapshot("a|1").unwrap(), Some(s));
        assert_eq!(j.timers().unwrap(), vec![t]);
        j.remove_timer(id).unwrap();
        assert!(j.timers().unwrap().is_empty());
    }

    #[test]
    fn large_events_stored_as_sled_blobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = SledJournal::open(dir.path()).unwrap();
        let mut e = ev("big|1", 1, &["t"]);
        e.payload = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        j.write(&WriteBatch { events: vec![e.clone()], snapshots: vec![] }).unwrap();
        assert!(std::fs::read_dir(dir.path().join("blobs")).unwrap().count() > 0, "expected sled to use a blob file");
        drop(j);
        let j = SledJournal::open(dir.path()).unwrap();
        assert_eq!(j.events("big|1", 1, 10).unwrap()[0].payload, e.payload);
    }
}
