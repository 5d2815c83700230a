//! The key layout shared by the embedded backends (`sled_store`, `fjall_store`), so
//! both store the same keys and values and refuse the same batches.
//!
//! ```text
//! b'e' pid 0x00 seq_nr(u64 BE)   -> event record (codec::encode_event)
//! b'o' offset(u64 BE)            -> pid 0x00 seq_nr(u64 BE)      global order
//! b't' tag 0x00 offset(u64 BE)   -> pid 0x00 seq_nr(u64 BE)      tag index
//! b's' pid                       -> latest snapshot (codec::encode_snapshot)
//! ```
//! Persistence ids, tags and manifests never contain NUL (validated), so `pid 0x00`
//! is an unambiguous prefix and big-endian numbers sort numerically.
//! Timers: id(u64 BE) -> codec::encode_timer, in a separate tree/keyspace.

use std::collections::HashMap;

use super::codec;
use super::{JournalError, JournalResult, WriteBatch};

pub(crate) const OFFSET_PREFIX: u8 = b'o';

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

pub(crate) fn offset_key(offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(OFFSET_PREFIX);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) fn parse_offset_key(k: &[u8]) -> JournalResult<u64> {
    match k {
        [OFFSET_PREFIX, rest @ ..] if rest.len() == 8 => Ok(u64::from_be_bytes(rest.try_into().unwrap())),
        _ => Err(JournalError::Corrupt("bad offset key".into())),
    }
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

/// Every key/value a batch stores, its events numbered from `first_offset`, and
/// the offset after the last event.
pub(crate) fn batch_entries(batch: &WriteBatch, first_offset: u64) -> (Vec<(Vec<u8>, Vec<u8>)>, u64) {
    let tags: usize = batch.events.iter().map(|e| e.tags.len()).sum();
    let mut out = Vec::with_capacity(2 * batch.events.len() + tags + batch.snapshots.len());
    let mut offset = first_offset;
    for e in &batch.events {
        let r = event_ref(&e.persistence_id, e.seq_nr);
        out.push((event_key(&e.persistence_id, e.seq_nr), codec::encode_event(e, offset)));
        out.push((offset_key(offset), r.clone()));
        for t in &e.tags {
            out.push((tag_key(t, offset), r.clone()));
        }
        offset += 1;
    }
    for s in &batch.snapshots {
        out.push((snapshot_key(&s.persistence_id), codec::encode_snapshot(s)));
    }
    (out, offset)
}

/// Refuse a batch that would overwrite an event or leave a gap. `stored(key)` tells
/// whether an event key is already stored.
pub(crate) fn check_sequence(
    batch: &WriteBatch,
    mut stored: impl FnMut(&[u8]) -> JournalResult<bool>,
) -> JournalResult<()> {
    let mut expected: HashMap<&str, u64> = HashMap::new();
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
                    || stored(&event_key(pid, e.seq_nr))?
                    || (e.seq_nr > 1 && !stored(&event_key(pid, e.seq_nr - 1))?)
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
