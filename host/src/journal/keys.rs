//! The key layout of the sled journal (`sled_store`), and the single writer's
//! sequence check shared by the sled and log journals (the log journal's index
//! has its own layout, `index.rs`, and borrows only `tag_key` and `snapshot_key`).
//!
//! ```text
//! b'e' pid 0x00 seq_nr(u64 BE)   -> event record (codec::encode_event)
//! b't' tag 0x00 offset(u64 BE)   -> pid 0x00 seq_nr(u64 BE)      tag index
//! b's' pid                       -> latest snapshot (codec::encode_snapshot)
//! b'n'                           -> next global offset (u64 BE)
//! ```
//! Persistence ids, tags and manifests never contain NUL (validated), so `pid 0x00`
//! is an unambiguous prefix and big-endian numbers sort numerically.
//! Timers: id(u64 BE) -> codec::encode_timer, in a separate tree/keyspace.
//!
//! The global offset of an event is stored in its record; `b'n'` is rewritten by
//! every batch that has events (in the same atomic write), so a reopened journal
//! continues after the last offset it made durable. Journals written before `b'n'`
//! existed kept one `b'o' offset -> ref` key per event; `legacy_next_offset` reads
//! the last of those.

use super::codec;
use super::{JournalError, JournalResult, WriteBatch};

/// Prefix of the per-event global-order keys of older journals (no longer written).
pub(crate) const LEGACY_OFFSET_PREFIX: u8 = b'o';
/// Key of the next global offset.
pub(crate) const NEXT_OFFSET_KEY: &[u8] = b"n";

pub(crate) fn event_prefix(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 10);
    k.push(b'e');
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k
}

pub(crate) fn event_key(pid: &str, seq_nr: u64) -> Vec<u8> {
    let mut k = event_prefix(pid);
    k.extend_from_slice(&seq_nr.to_be_bytes());
    k
}

/// The sequence number at the end of an event key.
pub(crate) fn event_key_seq_nr(k: &[u8]) -> JournalResult<u64> {
    trailing_u64(k).ok_or_else(|| JournalError::Corrupt("bad event key".into()))
}

pub(crate) fn event_ref(pid: &str, seq_nr: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 9);
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_nr.to_be_bytes());
    k
}

pub(crate) fn parse_ref(r: &[u8]) -> JournalResult<(String, u64)> {
    let bad = || JournalError::Corrupt("bad index entry".into());
    if r.len() < 10 || r[r.len() - 9] != 0 {
        return Err(bad());
    }
    let pid = std::str::from_utf8(&r[..r.len() - 9]).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(r[r.len() - 8..].try_into().unwrap());
    Ok((pid.to_string(), seq))
}

/// The next offset after a journal's last `b'o'` key (see the module docs).
pub(crate) fn legacy_next_offset(last_offset_key: Option<&[u8]>) -> JournalResult<u64> {
    match last_offset_key {
        None => Ok(1),
        Some([LEGACY_OFFSET_PREFIX, rest @ ..]) if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().unwrap()) + 1)
        }
        Some(_) => Err(JournalError::Corrupt("bad offset key".into())),
    }
}

/// The stored value of `NEXT_OFFSET_KEY`.
pub(crate) fn parse_next_offset(v: &[u8]) -> JournalResult<u64> {
    Ok(u64::from_be_bytes(v.try_into().map_err(|_| JournalError::Corrupt("bad next-offset value".into()))?))
}

pub(crate) fn tag_prefix(tag: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + 10);
    k.push(b't');
    k.extend_from_slice(tag.as_bytes());
    k.push(0);
    k
}

pub(crate) fn tag_key(tag: &str, offset: u64) -> Vec<u8> {
    let mut k = tag_prefix(tag);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) fn snapshot_key(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 1);
    k.push(b's');
    k.extend_from_slice(pid.as_bytes());
    k
}

pub(crate) fn timer_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn parse_timer_key(k: &[u8]) -> JournalResult<u64> {
    Ok(u64::from_be_bytes(k.try_into().map_err(|_| JournalError::Corrupt("bad timer key".into()))?))
}

fn trailing_u64(k: &[u8]) -> Option<u64> {
    let start = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[start..].try_into().unwrap()))
}

/// A key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Every key/value a batch stores, its events numbered from `first_offset`, and
/// the offset after the last event.
pub(crate) fn batch_entries(batch: &WriteBatch, first_offset: u64) -> (Vec<Entry>, u64) {
    let tags: usize = batch.events.iter().map(|e| e.tags.len()).sum();
    let mut out = Vec::with_capacity(batch.events.len() + tags + batch.snapshots.len() + 1);
    let mut offset = first_offset;
    for e in &batch.events {
        out.push((event_key(&e.persistence_id, e.seq_nr), codec::encode_event(e, offset)));
        for t in &e.tags {
            out.push((tag_key(t, offset), event_ref(&e.persistence_id, e.seq_nr)));
        }
        offset += 1;
    }
    if !batch.events.is_empty() {
        out.push((NEXT_OFFSET_KEY.to_vec(), offset.to_be_bytes().to_vec()));
    }
    for s in &batch.snapshots {
        out.push((snapshot_key(&s.persistence_id), codec::encode_snapshot(s)));
    }
    (out, offset)
}

/// What the single writer of a journal keeps between writes: the next global
/// offset, and the highest stored sequence number of recently written persistence
/// ids, so the sequence check of a batch mostly costs a lookup in memory instead of
/// two in the store. Backends hold it under a mutex for the whole `write`.
pub(crate) struct WriterState {
    pub next_offset: u64,
    last_seq: foldhash::HashMap<String, u64>,
}

/// Forget the sequence numbers when this many persistence ids are remembered (the
/// next write of each costs the two store lookups again).
const LAST_SEQ_CAPACITY: usize = 200_000;

impl WriterState {
    pub fn new(next_offset: u64) -> Self {
        WriterState { next_offset, last_seq: foldhash::HashMap::default() }
    }

    /// Refuse a batch that would overwrite an event or leave a gap.
    /// `stored(pid, seq_nr)` tells whether that event is already stored.
    pub fn check_sequence(
        &self,
        batch: &WriteBatch,
        mut stored: impl FnMut(&str, u64) -> JournalResult<bool>,
    ) -> JournalResult<()> {
        let mut expected: foldhash::HashMap<&str, u64> = foldhash::HashMap::default();
        expected.reserve(batch.events.len());
        for e in &batch.events {
            let pid = e.persistence_id.as_str();
            let follows = match expected.get(pid) {
                Some(&next) => e.seq_nr == next,
                None => match self.last_seq.get(pid) {
                    Some(&last) => e.seq_nr == last + 1,
                    None => e.seq_nr != 0 && !stored(pid, e.seq_nr)? && (e.seq_nr == 1 || stored(pid, e.seq_nr - 1)?),
                },
            };
            if !follows {
                return Err(JournalError::Invalid(match expected.get(pid) {
                    Some(next) => format!("{pid}: sequence number {} where {next} was expected", e.seq_nr),
                    None => format!(
                        "{pid}: sequence number {} does not follow the stored events (another writer?)",
                        e.seq_nr
                    ),
                }));
            }
            expected.insert(pid, e.seq_nr + 1);
        }
        Ok(())
    }

    /// Whether every persistence id of `batch` is remembered (its check needs no
    /// store lookup).
    pub fn remembers(&self, batch: &WriteBatch) -> bool {
        batch.events.iter().all(|e| self.last_seq.contains_key(e.persistence_id.as_str()))
    }

    /// A write of `batch` failed: it may or may not have reached the store, so the
    /// next write of each of its persistence ids checks the store again.
    pub fn failed(&mut self, batch: &WriteBatch) {
        for e in &batch.events {
            self.last_seq.remove(e.persistence_id.as_str());
        }
    }

    /// Remember what a batch made durable.
    pub fn written(&mut self, batch: &WriteBatch, next_offset: u64) {
        self.next_offset = next_offset;
        if self.last_seq.len() + batch.events.len() > LAST_SEQ_CAPACITY {
            self.last_seq.clear();
        }
        for e in &batch.events {
            match self.last_seq.get_mut(e.persistence_id.as_str()) {
                Some(last) => *last = e.seq_nr,
                None => {
                    self.last_seq.insert(e.persistence_id.clone(), e.seq_nr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::ev;

    #[test]
    fn legacy_journals_continue_after_their_last_offset_key() {
        assert_eq!(legacy_next_offset(None).unwrap(), 1);
        let mut k = vec![LEGACY_OFFSET_PREFIX];
        k.extend_from_slice(&41u64.to_be_bytes());
        assert_eq!(legacy_next_offset(Some(&k)).unwrap(), 42);
        assert!(matches!(legacy_next_offset(Some(b"o1")), Err(JournalError::Corrupt(_))));
    }

    #[test]
    fn remembered_sequence_numbers_refuse_without_reading_and_a_failed_write_reads_again() {
        let batch = |events| WriteBatch { events, ..WriteBatch::default() };
        let mut w = WriterState::new(1);
        let first = batch(vec![ev("a|1", 1, &[]), ev("a|1", 2, &[])]);
        w.check_sequence(&first, |_, _| Ok(false)).unwrap();
        w.written(&first, 3);
        assert_eq!(w.next_offset, 3);
        let never = |_: &str, _: u64| -> JournalResult<bool> { panic!("the store is not read for a remembered id") };
        assert!(w.check_sequence(&batch(vec![ev("a|1", 2, &[])]), never).is_err(), "overwrite");
        assert!(w.check_sequence(&batch(vec![ev("a|1", 4, &[])]), never).is_err(), "gap");
        w.check_sequence(&batch(vec![ev("a|1", 3, &[])]), never).unwrap();
        // After a failed write the store decides: here it says seq 3 is stored.
        let third = batch(vec![ev("a|1", 3, &[])]);
        w.failed(&third);
        let mut reads = 0;
        let stored_up_to_3 = |_: &str, seq_nr: u64| {
            reads += 1;
            Ok(seq_nr <= 3)
        };
        assert!(w.check_sequence(&third, stored_up_to_3).is_err());
        assert_eq!(reads, 1);
    }
}
