//! On-disk record formats of the embedded journal.
//!
//! Every value starts with a CRC-32 (IEEE, little endian) of the bytes after it, then
//! a format version byte, so a torn or flipped value is detected on read instead of
//! being replayed into an entity. Integers are little endian; strings and byte
//! strings are length-prefixed (u16 for names, u32 for payloads).
//!
//! ```text
//! event    := crc32 | 1u8 | offset u64 | seq_nr u64 | timestamp_ms u64
//!             | writer_id str16 | manifest str16 | tag_count u16 | tag str16 *
//!             | payload bytes32
//! snapshot := crc32 | 1u8 | seq_nr u64 | state_version u32 | timestamp_ms u64 | state bytes32
//! timer    := crc32 | 1u8 | due_ms u64 | entity_type str16 | entity_id str16 | payload bytes32
//! ```

use super::{JournalError, JournalResult, NewEvent, Snapshot, StoredEvent, Timer};

const VERSION: u8 = 1;

struct Enc(Vec<u8>);

impl Enc {
    fn new(capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 5);
        v.extend_from_slice(&[0, 0, 0, 0, VERSION]);
        Enc(v)
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str16(&mut self, s: &str) {
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.0[4..]);
        self.0[..4].copy_from_slice(&crc.to_le_bytes());
        self.0
    }
}

struct Dec<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> JournalResult<Self> {
        if bytes.len() < 5 {
            return Err(JournalError::Corrupt(format!("{what} record too short")));
        }
        let stored = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        if crc32fast::hash(&bytes[4..]) != stored {
            return Err(JournalError::Corrupt(format!("{what} record checksum mismatch")));
        }
        if bytes[4] != VERSION {
            return Err(JournalError::Corrupt(format!("{what} record has unknown format version {}", bytes[4])));
        }
        Ok(Dec { rest: &bytes[5..], what })
    }
    fn take(&mut self, n: usize) -> JournalResult<&'a [u8]> {
        if self.rest.len() < n {
            return Err(JournalError::Corrupt(format!("{} record truncated", self.what)));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u16(&mut self) -> JournalResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> JournalResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> JournalResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str16(&mut self) -> JournalResult<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| JournalError::Corrupt(format!("{} record has invalid UTF-8", self.what)))
    }
    fn bytes32(&mut self) -> JournalResult<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

pub fn encode_event(e: &NewEvent, offset: u64) -> Vec<u8> {
    let mut w = Enc::new(64 + e.payload.len() + e.manifest.len() + e.writer_id.len());
    w.u64(offset);
    w.u64(e.seq_nr);
    w.u64(e.timestamp_ms);
    w.str16(&e.writer_id);
    w.str16(&e.manifest);
    w.u16(e.tags.len() as u16);
    for t in &e.tags {
        w.str16(t);
    }
    w.bytes32(&e.payload);
    w.finish()
}

pub fn decode_event(persistence_id: &str, bytes: &[u8]) -> JournalResult<StoredEvent> {
    let mut r = Dec::new(bytes, "event")?;
    let offset = r.u64()?;
    let seq_nr = r.u64()?;
    let timestamp_ms = r.u64()?;
    let writer_id = r.str16()?;
    let manifest = r.str16()?;
    let n = r.u16()?;
    let tags = (0..n).map(|_| r.str16()).collect::<JournalResult<Vec<_>>>()?;
    let payload = r.bytes32()?;
    Ok(StoredEvent {
        persistence_id: persistence_id.to_string(),
        seq_nr,
        offset,
        timestamp_ms,
        writer_id,
        manifest,
        tags,
        payload,
    })
}

pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut w = Enc::new(32 + s.state.len());
    w.u64(s.seq_nr);
    w.u32(s.state_version);
    w.u64(s.timestamp_ms);
    w.bytes32(&s.state);
    w.finish()
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

pub fn encode_timer(t: &Timer) -> Vec<u8> {
    let mut w = Enc::new(32 + t.payload.len());
    w.u64(t.due_ms);
    w.str16(&t.entity_type);
    w.str16(&t.entity_id);
    w.bytes32(&t.payload);
    w.finish()
}

pub fn decode_timer(id: u64, bytes: &[u8]) -> JournalResult<Timer> {
    let mut r = Dec::new(bytes, "timer")?;
    Ok(Timer { id, due_ms: r.u64()?, entity_type: r.str16()?, entity_id: r.str16()?, payload: r.bytes32()? })
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
