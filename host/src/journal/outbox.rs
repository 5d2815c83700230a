//! The outbox's part of the journal: commands entities send or schedule, the
//! idempotency keys entities have applied, and the messages of durable topics,
//! all written in the same frame (the same atomic, durable write) as the events
//! that produced them.
//!
//! Records (body kinds 8-11, `body.rs`), version-2 records with their own CRC-32
//! like the events of `codec.rs`:
//!
//! ```text
//! entry   (8)  := crc32 | 2u8 | source_seq_nr u64 | due_ms u64 | created_ms u64 | key str16
//!                 | source str16 | target_type str16 | target_id str16 | payload bytes32
//! done    (9)  := crc32 | 2u8 | key str16
//! applied (10) := crc32 | 2u8 | seq_nr u64 | persistence_id str16 | key str16 | source str16
//! message (11) := crc32 | 2u8 | position u64 | timestamp_ms u64 | topic str16 | source str16
//!                 | payload bytes32
//! ```
//!
//! * An **entry** is a command to deliver: `due_ms` 0 for `send`, the time it is
//!   due for `schedule`. Its `key` (the idempotency key) names it everywhere; it
//!   is *pending* until a **done** record with the same key follows it.
//! * **applied**: the entity `persistence_id` applied the command with `key`
//!   (sent by `source`), in the frame that also holds the events it persisted;
//!   `seq_nr` is the entity's sequence number after it.
//! * **message**: a message published to a topic, at `position` (per topic,
//!   gapless from 1, assigned by the journal when it writes the frame).
//!
//! Index entries (fjall for the log journal, the `journal` tree for sled; the same
//! keys), each pointing at its record:
//!
//! ```text
//! b'x' key                            pending outbox entry (removed by its done record)
//! b'k' pid 0x00 key                   applied idempotency key of an entity
//! b'q' topic 0x00 position(u64 BE)    topic message
//! ```
//! Keys, persistence ids and topics never contain NUL (validated names).

use std::collections::HashMap;

use super::body::{BodyBuilder, OutboxKind as Kind};
use super::codec::{self, Dec, Enc};
use super::location::{IndexBatch, Loc};
use super::{JournalError, JournalResult};

/// A command an entity sends (`send`) or schedules (`schedule`), stored with the
/// events of the command that produced it and delivered once they are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The idempotency key: unique, and the same on every delivery.
    pub key: String,
    /// Persistence id of the sending entity.
    pub source: String,
    /// The sender's sequence number after the command that sent this.
    pub source_seq_nr: u64,
    /// When to deliver, ms since the Unix epoch: 0 (at once) for `send`.
    pub due_ms: u64,
    /// When the sending command was accepted.
    pub created_ms: u64,
    pub target_type: String,
    pub target_id: String,
    pub payload: Vec<u8>,
}

/// An entity applied the command with this idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedKey {
    /// The entity that applied it.
    pub persistence_id: String,
    pub key: String,
    /// Persistence id of the entity that sent it.
    pub source: String,
    /// The applying entity's sequence number after the command.
    pub seq_nr: u64,
}

/// A message published to a topic, on its way to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    pub topic: String,
    /// Persistence id of the publishing entity.
    pub source: String,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// A topic message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTopicMessage {
    pub topic: String,
    /// Position in the topic, gapless from 1.
    pub position: u64,
    pub source: String,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// The outbox's part of a [`super::WriteBatch`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutboxBatch {
    /// New entries (pending from this write on).
    pub entries: Vec<OutboxEntry>,
    /// Keys of entries delivered: no longer pending.
    pub done: Vec<String>,
    /// Idempotency keys applied by the entities whose events are in the batch.
    pub applied: Vec<AppliedKey>,
    /// Messages published to topics (positions are assigned by the journal).
    pub published: Vec<TopicMessage>,
}

impl OutboxBatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.done.is_empty() && self.applied.is_empty() && self.published.is_empty()
    }

    pub fn append(&mut self, other: OutboxBatch) {
        self.entries.extend(other.entries);
        self.done.extend(other.done);
        self.applied.extend(other.applied);
        self.published.extend(other.published);
    }

    /// Bytes the records take, roughly (to size a frame body).
    pub(super) fn size_hint(&self) -> usize {
        self.entries.iter().map(|e| e.payload.len() + e.key.len() * 2 + 96).sum::<usize>()
            + self.done.iter().map(|k| k.len() + 16).sum::<usize>()
            + self.applied.iter().map(|a| a.key.len() * 2 + 64).sum::<usize>()
            + self.published.iter().map(|m| m.payload.len() + m.source.len() + 64).sum::<usize>()
    }
}

// ---------------------------------------------------------------------------
// Records.

fn encode_entry(buf: &mut Vec<u8>, e: &OutboxEntry) -> usize {
    codec::encode_log_record(buf, |w: &mut Enc| {
        w.u64(e.source_seq_nr);
        w.u64(e.due_ms);
        w.u64(e.created_ms);
        w.str16(&e.key);
        w.str16(&e.source);
        w.str16(&e.target_type);
        w.str16(&e.target_id);
        w.bytes32(&e.payload);
    })
}

pub fn decode_entry(bytes: &[u8]) -> JournalResult<OutboxEntry> {
    let mut r = codec::log_record(bytes, "outbox entry")?;
    let (source_seq_nr, due_ms, created_ms) = (r.u64()?, r.u64()?, r.u64()?);
    Ok(OutboxEntry {
        source_seq_nr,
        due_ms,
        created_ms,
        key: r.str16()?,
        source: r.str16()?,
        target_type: r.str16()?,
        target_id: r.str16()?,
        payload: r.bytes32()?,
    })
}

pub(super) fn entry_key(bytes: &[u8]) -> JournalResult<&str> {
    let mut r = codec::log_record_unchecked(bytes, "outbox entry")?;
    r.take(24)?;
    r.str16_ref()
}

fn encode_done(buf: &mut Vec<u8>, key: &str) -> usize {
    codec::encode_log_record(buf, |w: &mut Enc| w.str16(key))
}

pub fn decode_done(bytes: &[u8]) -> JournalResult<String> {
    codec::log_record(bytes, "outbox done")?.str16()
}

fn encode_applied(buf: &mut Vec<u8>, a: &AppliedKey) -> usize {
    codec::encode_log_record(buf, |w: &mut Enc| {
        w.u64(a.seq_nr);
        w.str16(&a.persistence_id);
        w.str16(&a.key);
        w.str16(&a.source);
    })
}

pub fn decode_applied(bytes: &[u8]) -> JournalResult<AppliedKey> {
    let mut r = codec::log_record(bytes, "applied key")?;
    let seq_nr = r.u64()?;
    Ok(AppliedKey { seq_nr, persistence_id: r.str16()?, key: r.str16()?, source: r.str16()? })
}

pub(super) fn applied_head(bytes: &[u8]) -> JournalResult<(&str, &str)> {
    let mut r = codec::log_record_unchecked(bytes, "applied key")?;
    r.take(8)?;
    Ok((r.str16_ref()?, r.str16_ref()?))
}

fn encode_message(buf: &mut Vec<u8>, m: &TopicMessage, position: u64) -> usize {
    codec::encode_log_record(buf, |w: &mut Enc| {
        w.u64(position);
        w.u64(m.timestamp_ms);
        w.str16(&m.topic);
        w.str16(&m.source);
        w.bytes32(&m.payload);
    })
}

pub fn decode_message(bytes: &[u8]) -> JournalResult<StoredTopicMessage> {
    let mut r: Dec = codec::log_record(bytes, "topic message")?;
    let (position, timestamp_ms) = (r.u64()?, r.u64()?);
    Ok(StoredTopicMessage { position, timestamp_ms, topic: r.str16()?, source: r.str16()?, payload: r.bytes32()? })
}

pub(super) fn message_head(bytes: &[u8]) -> JournalResult<(&str, u64)> {
    let mut r = codec::log_record_unchecked(bytes, "topic message")?;
    let position = r.u64()?;
    r.take(8)?;
    Ok((r.str16_ref()?, position))
}

/// One record in a fresh buffer (the sled backend stores records as values).
fn record(encode: impl FnOnce(&mut Vec<u8>) -> usize) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(&mut buf);
    buf
}

/// Append the batch's outbox records to a frame body; `positions[i]` is the
/// position of `batch.published[i]`.
pub(super) fn write_body(body: &mut BodyBuilder, batch: &OutboxBatch, positions: &[u64]) {
    for e in &batch.entries {
        body.push(Kind::Entry.code(), |buf| encode_entry(buf, e));
    }
    for key in &batch.done {
        body.push(Kind::Done.code(), |buf| encode_done(buf, key));
    }
    for a in &batch.applied {
        body.push(Kind::Applied.code(), |buf| encode_applied(buf, a));
    }
    for (m, &position) in batch.published.iter().zip(positions) {
        body.push(Kind::TopicMessage.code(), |buf| encode_message(buf, m, position));
    }
}

// ---------------------------------------------------------------------------
// Keys.

pub(super) const PENDING: u8 = b'x';
pub(super) const APPLIED: u8 = b'k';
pub(super) const TOPIC: u8 = b'q';

pub(super) fn pending_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(PENDING);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn applied_key(pid: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + key.len() + 2);
    k.push(APPLIED);
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 10);
    k.push(TOPIC);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

pub(super) fn topic_key(topic: &str, position: u64) -> Vec<u8> {
    let mut k = topic_prefix(topic);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

pub(super) fn position_of(key: &[u8]) -> JournalResult<u64> {
    let start = key.len().checked_sub(8).ok_or_else(|| JournalError::Corrupt("bad topic key".into()))?;
    Ok(u64::from_be_bytes(key[start..].try_into().unwrap()))
}

// ---------------------------------------------------------------------------
// Topic positions.

/// Positions for the batch's messages, each topic continuing from its newest
/// stored position (`head_of`, asked once per topic unless `heads` knows it).
/// Returns the positions and the new heads, to be remembered once the write is
/// durable.
pub(super) fn assign_positions(
    published: &[TopicMessage],
    heads: &HashMap<String, u64>,
    mut head_of: impl FnMut(&str) -> JournalResult<u64>,
) -> JournalResult<(Vec<u64>, HashMap<String, u64>)> {
    let mut new_heads: HashMap<String, u64> = HashMap::new();
    let mut positions = Vec::with_capacity(published.len());
    for m in published {
        let head = match new_heads.get(&m.topic).or_else(|| heads.get(&m.topic)) {
            Some(&h) => h,
            None => head_of(&m.topic)?,
        };
        positions.push(head + 1);
        new_heads.insert(m.topic.clone(), head + 1);
    }
    Ok((positions, new_heads))
}

// ---------------------------------------------------------------------------
// The log journal's index.

/// The index entries of one outbox record found at `loc`.
pub(super) fn index_record(kind: Kind, bytes: &[u8], loc: Loc, batch: &mut IndexBatch) -> JournalResult<()> {
    match kind {
        Kind::Entry => batch.put(pending_key(entry_key(bytes)?), loc),
        Kind::Done => {
            let mut r = codec::log_record_unchecked(bytes, "outbox done")?;
            batch.remove(pending_key(r.str16_ref()?));
        }
        Kind::Applied => {
            let (pid, key) = applied_head(bytes)?;
            batch.put(applied_key(pid, key), loc);
        }
        Kind::TopicMessage => {
            let (topic, position) = message_head(bytes)?;
            batch.put(topic_key(topic, position), loc);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The sled backend: the same keys in its `journal` tree, the records as values.

/// Keys and values to store, and keys to remove.
pub(super) type SledChanges = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

/// What a batch's outbox part stores and removes in sled.
pub(super) fn sled_changes(batch: &OutboxBatch, positions: &[u64]) -> SledChanges {
    let mut puts = Vec::new();
    for e in &batch.entries {
        puts.push((pending_key(&e.key), record(|b| encode_entry(b, e))));
    }
    for a in &batch.applied {
        puts.push((applied_key(&a.persistence_id, &a.key), record(|b| encode_applied(b, a))));
    }
    for (m, &position) in batch.published.iter().zip(positions) {
        puts.push((topic_key(&m.topic, position), record(|b| encode_message(b, m, position))));
    }
    (puts, batch.done.iter().map(|k| pending_key(k)).collect())
}

pub(super) fn sled_pending(tree: &sled::Tree) -> JournalResult<Vec<OutboxEntry>> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix([PENDING]) {
        let (_, v) = kv.map_err(sled_error)?;
        out.push(decode_entry(&v)?);
    }
    Ok(out)
}

pub(super) fn sled_applied(tree: &sled::Tree, pid: &str, key: &str) -> JournalResult<bool> {
    tree.contains_key(applied_key(pid, key)).map_err(sled_error)
}

pub(super) fn sled_topic_head(tree: &sled::Tree, topic: &str) -> JournalResult<u64> {
    match tree.scan_prefix(topic_prefix(topic)).next_back() {
        Some(kv) => position_of(&kv.map_err(sled_error)?.0),
        None => Ok(0),
    }
}

pub(super) fn sled_messages(
    tree: &sled::Tree,
    topic: &str,
    from: u64,
    limit: usize,
) -> JournalResult<Vec<StoredTopicMessage>> {
    let mut out = Vec::new();
    for kv in tree.range(topic_key(topic, from.max(1))..=topic_key(topic, u64::MAX)).take(limit) {
        out.push(decode_message(&kv.map_err(sled_error)?.1)?);
    }
    Ok(out)
}

fn sled_error(e: sled::Error) -> JournalError {
    JournalError::Storage(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> OutboxEntry {
        OutboxEntry {
            key: key.into(),
            source: "a|1".into(),
            source_seq_nr: 3,
            due_ms: 0,
            created_ms: 7,
            target_type: "t".into(),
            target_id: "2".into(),
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn records_round_trip_and_every_flipped_byte_is_detected() {
        let e = entry("a|1#3.0");
        let mut buf = Vec::new();
        encode_entry(&mut buf, &e);
        assert_eq!(decode_entry(&buf).unwrap(), e);
        assert_eq!(entry_key(&buf).unwrap(), "a|1#3.0");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(decode_entry(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        let a = AppliedKey { persistence_id: "t|2".into(), key: "a|1#3.0".into(), source: "a|1".into(), seq_nr: 9 };
        let buf = record(|b| encode_applied(b, &a));
        assert_eq!(decode_applied(&buf).unwrap(), a);
        assert_eq!(applied_head(&buf).unwrap(), ("t|2", "a|1#3.0"));
        let m = TopicMessage { topic: "news".into(), source: "a|1".into(), timestamp_ms: 5, payload: b"1".to_vec() };
        let buf = record(|b| encode_message(b, &m, 42));
        let stored = decode_message(&buf).unwrap();
        assert_eq!((stored.topic.as_str(), stored.position, stored.payload.as_slice()), ("news", 42, &b"1"[..]));
        assert_eq!(message_head(&buf).unwrap(), ("news", 42));
        assert_eq!(decode_done(&record(|b| encode_done(b, "k"))).unwrap(), "k");
        // An outbox record is not an event record, and the other way round.
        assert!(decode_entry(&record(|b| encode_done(b, "k"))).is_err());
    }

    #[test]
    fn positions_continue_each_topic_from_its_head() {
        let m =
            |topic: &str| TopicMessage { topic: topic.into(), source: "s".into(), timestamp_ms: 0, payload: vec![] };
        let heads = HashMap::from([("a".to_string(), 5)]);
        let mut asked = Vec::new();
        let (positions, new) = assign_positions(&[m("a"), m("b"), m("a"), m("b")], &heads, |t| {
            asked.push(t.to_string());
            Ok(10)
        })
        .unwrap();
        assert_eq!(positions, [6, 11, 7, 12]);
        assert_eq!(asked, ["b"], "a known head is not looked up, an unknown one once");
        assert_eq!(new, HashMap::from([("a".to_string(), 7), ("b".to_string(), 12)]));
    }
}
