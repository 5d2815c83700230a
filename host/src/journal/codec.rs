//! On-disk record formats of the embedded journal.
//!
//! Every value starts with a CRC-32 (IEEE, little endian) of the bytes after it, then
//! a format version byte, so a torn or flipped value is detected on read instead of
//! being replayed into an entity. Integers are little endian; strings and byte
//! strings are length-prefixed (u16 for names, u32 for payloads).
//!
//! Version 1, the values of the sled backend, where the key names the persistence
//! id and the timer id:
//!
//! ```text
//! event    := crc32 | 1u8 | offset u64 | seq_nr u64 | timestamp_ms u64
//!             | writer_id str16 | manifest str16 | tag_count u16 | tag str16 *
//!             | payload bytes32
//! snapshot := crc32 | 1u8 | seq_nr u64 | state_version u32 | timestamp_ms u64 | state bytes32
//! timer    := crc32 | 1u8 | due_ms u64 | entity_type str16 | entity_id str16 | payload bytes32
//! ```
//!
//! Version 2, the records of the commit log, which describe themselves (the log is
//! the source of truth and its index is rebuilt from it):
//!
//! ```text
//! event    := crc32 | 2u8 | offset u64 | seq_nr u64 | timestamp_ms u64 | persistence_id str16
//!             | writer_id str16 | manifest str16 | tag_count u16 | tag str16 * | payload bytes32
//! snapshot := crc32 | 2u8 | seq_nr u64 | state_version u32 | timestamp_ms u64 | persistence_id str16
//!             | state bytes32
//! timer    := crc32 | 2u8 | id u64 | due_ms u64 | entity_type str16 | entity_id str16 | payload bytes32
//! ```
//!
//! The projection records (view put, view delete, projection offset) use the same
//! encoder; their layouts are in `views.rs`.

use super::{EventRef, JournalError, JournalResult, NewEvent, Snapshot, StoredEvent, Timer};

const VERSION: u8 = 1;
/// The self-describing records of the commit log.
pub(super) const LOG_VERSION: u8 = 2;

/// Encodes one record at the end of a buffer (which may hold other records before it).
/// Also used by `views.rs` (projection records) and `outbox.rs`.
pub(super) struct Enc<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Enc<'a> {
    pub(super) fn into(buf: &'a mut Vec<u8>, version: u8) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, version]);
        Enc { buf, start }
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn str16(&mut self, s: &str) {
        self.u16(s.len() as u16);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub(super) fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// Write the CRC; returns the record's length.
    pub(super) fn finish(self) -> usize {
        let crc = crc32fast::hash(&self.buf[self.start + 4..]);
        self.buf[self.start..self.start + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf.len() - self.start
    }
}

/// One record in a fresh buffer.
fn record(capacity: usize, version: u8, body: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity + 5);
    let mut enc = Enc::into(&mut buf, version);
    body(&mut enc);
    enc.finish();
    buf
}

pub(super) struct Dec<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> JournalResult<Self> {
        Self::version(bytes, what, VERSION)
    }

    pub(super) fn version(bytes: &'a [u8], what: &'static str, version: u8) -> JournalResult<Self> {
        if bytes.len() < 5 {
            return Err(JournalError::Corrupt(format!("{what} record too short")));
        }
        let stored = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        if crc32fast::hash(&bytes[4..]) != stored {
            return Err(JournalError::Corrupt(format!("{what} record checksum mismatch")));
        }
        if bytes[4] != version {
            return Err(JournalError::Corrupt(format!("{what} record has unknown format version {}", bytes[4])));
        }
        Ok(Dec { rest: &bytes[5..], what })
    }
    pub(super) fn unchecked(bytes: &'a [u8], what: &'static str, version: u8) -> JournalResult<Self> {
        if bytes.len() < 5 || bytes[4] != version {
            return Err(JournalError::Corrupt(format!("{what} record too short or of another version")));
        }
        Ok(Dec { rest: &bytes[5..], what })
    }
    pub(super) fn str16_ref(&mut self) -> JournalResult<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| JournalError::Corrupt(format!("{} record has invalid UTF-8", self.what)))
    }
    /// Skip a string field (not checked for UTF-8: nothing reads it).
    pub(super) fn take_str16(&mut self) -> JournalResult<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub(super) fn take(&mut self, n: usize) -> JournalResult<&'a [u8]> {
        if self.rest.len() < n {
            return Err(JournalError::Corrupt(format!("{} record truncated", self.what)));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(super) fn u16(&mut self) -> JournalResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub(super) fn u32(&mut self) -> JournalResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(super) fn u64(&mut self) -> JournalResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(super) fn str16(&mut self) -> JournalResult<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| JournalError::Corrupt(format!("{} record has invalid UTF-8", self.what)))
    }
    pub(super) fn bytes32(&mut self) -> JournalResult<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Append a commit-log record (version 2, with its CRC) written by `body` to
/// `buf`; returns its length. For the records of other modules (`outbox.rs`).
pub(super) fn encode_log_record(buf: &mut Vec<u8>, body: impl FnOnce(&mut Enc)) -> usize {
    let mut w = Enc::into(buf, LOG_VERSION);
    body(&mut w);
    w.finish()
}

/// A reader of a commit-log record, its CRC and version checked.
pub(super) fn log_record<'a>(bytes: &'a [u8], what: &'static str) -> JournalResult<Dec<'a>> {
    Dec::version(bytes, what, LOG_VERSION)
}

/// A reader of a commit-log record without checking its CRC (the frame's CRC
/// covers it when a frame is indexed).
pub(super) fn log_record_unchecked<'a>(bytes: &'a [u8], what: &'static str) -> JournalResult<Dec<'a>> {
    Dec::unchecked(bytes, what, LOG_VERSION)
}

/// The part of an event record both versions share, after its header fields.
fn event_tail(w: &mut Enc, e: &NewEvent) {
    w.str16(&e.writer_id);
    w.str16(&e.manifest);
    w.u16(e.tags.len() as u16);
    for t in &e.tags {
        w.str16(t);
    }
    w.bytes32(&e.payload);
}

fn event_capacity(e: &NewEvent) -> usize {
    64 + e.persistence_id.len() + e.payload.len() + e.manifest.len() + e.writer_id.len()
}

pub fn encode_event(e: &NewEvent, offset: u64) -> Vec<u8> {
    record(event_capacity(e), VERSION, |w| {
        w.u64(offset);
        w.u64(e.seq_nr);
        w.u64(e.timestamp_ms);
        event_tail(w, e);
    })
}

pub fn decode_event(persistence_id: &str, bytes: &[u8]) -> JournalResult<StoredEvent> {
    let mut r = Dec::new(bytes, "event")?;
    let (offset, seq_nr, timestamp_ms) = (r.u64()?, r.u64()?, r.u64()?);
    decode_event_tail(&mut r, persistence_id.to_string(), seq_nr, offset, timestamp_ms)
}

fn decode_event_tail(
    r: &mut Dec,
    persistence_id: String,
    seq_nr: u64,
    offset: u64,
    timestamp_ms: u64,
) -> JournalResult<StoredEvent> {
    let writer_id = r.str16()?;
    let manifest = r.str16()?;
    let n = r.u16()?;
    let tags = (0..n).map(|_| r.str16()).collect::<JournalResult<Vec<_>>>()?;
    let payload = r.bytes32()?;
    Ok(StoredEvent { persistence_id, seq_nr, offset, timestamp_ms, writer_id, manifest, tags, payload })
}

/// Append a commit-log event record to `buf`; returns its length.
pub fn encode_event_record(buf: &mut Vec<u8>, e: &NewEvent, offset: u64) -> usize {
    buf.reserve(event_capacity(e));
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u64(offset);
    w.u64(e.seq_nr);
    w.u64(e.timestamp_ms);
    w.str16(&e.persistence_id);
    event_tail(&mut w, e);
    w.finish()
}

pub fn decode_event_record(bytes: &[u8]) -> JournalResult<StoredEvent> {
    let mut r = Dec::version(bytes, "event", LOG_VERSION)?;
    let (offset, seq_nr, timestamp_ms) = (r.u64()?, r.u64()?, r.u64()?);
    let pid = r.str16()?;
    decode_event_tail(&mut r, pid, seq_nr, offset, timestamp_ms)
}

/// What recovery needs of an event record, borrowed from `bytes`, CRC checked
/// like [`decode_event_record`]: (persistence id, [`EventRef`]).
pub fn event_ref(bytes: &[u8]) -> JournalResult<(&str, EventRef<'_>)> {
    let mut r = Dec::version(bytes, "event", LOG_VERSION)?;
    let (_offset, seq_nr, _timestamp) = (r.u64()?, r.u64()?, r.u64()?);
    let pid = r.str16_ref()?;
    let (_writer, manifest) = (r.take_str16()?, r.str16_ref()?);
    for _ in 0..r.u16()? {
        r.take_str16()?;
    }
    let n = r.u32()? as usize;
    Ok((pid, EventRef { seq_nr, manifest, payload: r.take(n)? }))
}

/// What the index needs of an event record, read without copying (and without
/// checking the CRC: the frame's CRC covers it when a frame is indexed).
pub struct EventHead<'a> {
    pub offset: u64,
    pub seq_nr: u64,
    pub persistence_id: &'a str,
    /// The event's tags, decoded as they are taken (indexing allocates nothing here).
    pub tags: Tags<'a>,
}

pub struct Tags<'a> {
    dec: Dec<'a>,
    left: u16,
}

impl<'a> Iterator for Tags<'a> {
    type Item = JournalResult<&'a str>;

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        Some(self.dec.str16_ref())
    }
}

pub fn event_head(bytes: &[u8]) -> JournalResult<EventHead<'_>> {
    let mut r = Dec::unchecked(bytes, "event", LOG_VERSION)?;
    let (offset, seq_nr, _timestamp) = (r.u64()?, r.u64()?, r.u64()?);
    let persistence_id = r.str16_ref()?;
    let (_writer, _manifest) = (r.str16_ref()?, r.str16_ref()?);
    let left = r.u16()?;
    Ok(EventHead { offset, seq_nr, persistence_id, tags: Tags { dec: r, left } })
}

/// The persistence id of a snapshot record, and the timer id of a timer record
/// (unchecked, like [`event_head`]).
pub fn snapshot_pid(bytes: &[u8]) -> JournalResult<&str> {
    let mut r = Dec::unchecked(bytes, "snapshot", LOG_VERSION)?;
    r.take(8 + 4 + 8)?;
    r.str16_ref()
}

pub fn timer_id(bytes: &[u8]) -> JournalResult<u64> {
    Dec::unchecked(bytes, "timer", LOG_VERSION)?.u64()
}

pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    record(32 + s.state.len(), VERSION, |w| {
        w.u64(s.seq_nr);
        w.u32(s.state_version);
        w.u64(s.timestamp_ms);
        w.bytes32(&s.state);
    })
}

pub fn decode_snapshot(persistence_id: &str, bytes: &[u8]) -> JournalResult<Snapshot> {
    let mut r = Dec::new(bytes, "snapshot")?;
    Ok(Snapshot {
        persistence_id: persistence_id.to_string(),
        seq_nr: r.u64()?,
        state_version: r.u32()?,
        timestamp_ms: r.u64()?,
        state: r.bytes32()?,
    })
}

/// Append a commit-log snapshot record to `buf`; returns its length.
pub fn encode_snapshot_record(buf: &mut Vec<u8>, s: &Snapshot) -> usize {
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u64(s.seq_nr);
    w.u32(s.state_version);
    w.u64(s.timestamp_ms);
    w.str16(&s.persistence_id);
    w.bytes32(&s.state);
    w.finish()
}

pub fn decode_snapshot_record(bytes: &[u8]) -> JournalResult<Snapshot> {
    let mut r = Dec::version(bytes, "snapshot", LOG_VERSION)?;
    let (seq_nr, state_version, timestamp_ms) = (r.u64()?, r.u32()?, r.u64()?);
    let persistence_id = r.str16()?;
    Ok(Snapshot { persistence_id, seq_nr, state_version, timestamp_ms, state: r.bytes32()? })
}

pub fn encode_timer(t: &Timer) -> Vec<u8> {
    record(32 + t.payload.len(), VERSION, |w| {
        w.u64(t.due_ms);
        w.str16(&t.entity_type);
        w.str16(&t.entity_id);
        w.bytes32(&t.payload);
    })
}

pub fn decode_timer(id: u64, bytes: &[u8]) -> JournalResult<Timer> {
    let mut r = Dec::new(bytes, "timer")?;
    Ok(Timer { id, due_ms: r.u64()?, entity_type: r.str16()?, entity_id: r.str16()?, payload: r.bytes32()? })
}

/// Append a commit-log timer record to `buf`; returns its length.
pub fn encode_timer_record(buf: &mut Vec<u8>, t: &Timer) -> usize {
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u64(t.id);
    w.u64(t.due_ms);
    w.str16(&t.entity_type);
    w.str16(&t.entity_id);
    w.bytes32(&t.payload);
    w.finish()
}

pub fn decode_timer_record(bytes: &[u8]) -> JournalResult<Timer> {
    let mut r = Dec::version(bytes, "timer", LOG_VERSION)?;
    Ok(Timer { id: r.u64()?, due_ms: r.u64()?, entity_type: r.str16()?, entity_id: r.str16()?, payload: r.bytes32()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            persistence_id: "t|1".into(),
            seq_nr: 7,
            timestamp_ms: 1_700_000_000_000,
            writer_id: "w".into(),
            manifest: "Deposited".into(),
            tags: vec!["a".into(), "b".into()],
            payload: br#"{"amount":5}"#.to_vec(),
        }
    }

    #[test]
    fn event_round_trips() {
        let bytes = encode_event(&event(), 42);
        let back = decode_event("t|1", &bytes).unwrap();
        assert_eq!(back.offset, 42);
        assert_eq!(back.seq_nr, 7);
        assert_eq!(back.tags, vec!["a", "b"]);
        assert_eq!(back.payload, event().payload);
        assert_eq!(back.manifest, "Deposited");
    }

    #[test]
    fn log_records_describe_themselves_and_round_trip() {
        let mut buf = b"earlier records".to_vec();
        let start = buf.len();
        let len = encode_event_record(&mut buf, &event(), 42);
        assert_eq!(buf.len(), start + len);
        let back = decode_event_record(&buf[start..]).unwrap();
        assert_eq!((back.persistence_id.as_str(), back.offset, back.seq_nr), ("t|1", 42, 7));
        assert_eq!((back.tags, back.payload), (event().tags, event().payload));
        let snap = Snapshot {
            persistence_id: "t|1".into(),
            seq_nr: 9,
            state_version: 3,
            timestamp_ms: 5,
            state: b"s".to_vec(),
        };
        let mut buf = Vec::new();
        encode_snapshot_record(&mut buf, &snap);
        assert_eq!(decode_snapshot_record(&buf).unwrap(), snap);
        let timer =
            Timer { id: 12, due_ms: 99, entity_type: "t".into(), entity_id: "1".into(), payload: b"c".to_vec() };
        let mut buf = Vec::new();
        encode_timer_record(&mut buf, &timer);
        assert_eq!(decode_timer_record(&buf).unwrap(), timer);
        // A version-1 value is not a log record, and the other way round.
        assert!(decode_event_record(&encode_event(&event(), 42)).is_err());
    }

    #[test]
    fn any_flipped_byte_of_a_log_record_is_detected() {
        let mut bytes = Vec::new();
        encode_event_record(&mut bytes, &event(), 42);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_event_record(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = encode_event(&event(), 42);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_event("t|1", &bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(decode_event("t|1", &bytes[..bytes.len() - 1]).is_err());
    }
}
