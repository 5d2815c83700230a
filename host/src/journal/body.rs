//! The body of a commit-log frame: the records of one group-commit batch.
//!
//! ```text
//! body   := record *
//! record := kind u8 | len u32 LE | bytes[len]
//! kind   := 1 event | 2 snapshot | 3 timer stored | 4 timer removed
//!           | 5 view put | 6 view delete | 7 projection offset
//!           | 8 outbox entry | 9 outbox entry done | 10 applied idempotency key
//!           | 11 topic message
//! ```
//! `bytes` of kinds 1-3 are the version-2 records of `codec.rs` (each with its own
//! CRC, so a read through the index, which goes straight to `bytes`, is checked
//! too); kind 4 is the timer id, u64 LE; kinds 5-7 are a projection's records
//! (`views.rs`), written together as one frame per projection batch; kinds 8-11
//! are the version-2 records of `outbox.rs`. The whole body is also covered by
//! the frame's CRC.

use super::codec;
use super::views::{self, ProjectionOffset, ViewUpdate};
use super::{JournalError, JournalResult, NewEvent, Snapshot, Timer};

const EVENT: u8 = 1;
const SNAPSHOT: u8 = 2;
const TIMER_STORED: u8 = 3;
const TIMER_REMOVED: u8 = 4;
const VIEW_PUT: u8 = 5;
const VIEW_DELETE: u8 = 6;
const PROJECTION_OFFSET: u8 = 7;
const RECORD_HEADER: usize = 5;

/// The kinds of the outbox's records in a frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    Entry,
    Done,
    Applied,
    TopicMessage,
}

impl OutboxKind {
    pub fn from_u8(kind: u8) -> Option<OutboxKind> {
        match kind {
            8 => Some(OutboxKind::Entry),
            9 => Some(OutboxKind::Done),
            10 => Some(OutboxKind::Applied),
            11 => Some(OutboxKind::TopicMessage),
            _ => None,
        }
    }

    pub(super) fn code(self) -> u8 {
        match self {
            OutboxKind::Entry => 8,
            OutboxKind::Done => 9,
            OutboxKind::Applied => 10,
            OutboxKind::TopicMessage => 11,
        }
    }
}

/// A record of a body: where its bytes are, relative to the body's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Event {
        at: usize,
        len: usize,
    },
    Snapshot {
        at: usize,
        len: usize,
    },
    TimerStored {
        at: usize,
        len: usize,
    },
    TimerRemoved {
        id: u64,
    },
    /// Kinds 5-7: a projection's records (`views.rs`).
    ViewPut {
        at: usize,
        len: usize,
    },
    ViewDelete {
        at: usize,
        len: usize,
    },
    ProjectionOffset {
        at: usize,
        len: usize,
    },
    /// Kinds 8-11: the outbox's records (`outbox.rs`).
    Outbox {
        kind: OutboxKind,
        at: usize,
        len: usize,
    },
}

/// Builds a body.
#[derive(Default)]
pub struct BodyBuilder {
    buf: Vec<u8>,
}

impl BodyBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        BodyBuilder { buf: Vec::with_capacity(bytes) }
    }

    pub(super) fn push(&mut self, kind: u8, encode: impl FnOnce(&mut Vec<u8>) -> usize) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[kind, 0, 0, 0, 0]);
        let len = encode(&mut self.buf) as u32;
        self.buf[at + 1..at + RECORD_HEADER].copy_from_slice(&len.to_le_bytes());
    }

    pub fn event(&mut self, e: &NewEvent, offset: u64) {
        self.push(EVENT, |buf| codec::encode_event_record(buf, e, offset));
    }

    pub fn snapshot(&mut self, s: &Snapshot) {
        self.push(SNAPSHOT, |buf| codec::encode_snapshot_record(buf, s));
    }

    pub fn timer_stored(&mut self, t: &Timer) {
        self.push(TIMER_STORED, |buf| codec::encode_timer_record(buf, t));
    }

    pub fn timer_removed(&mut self, id: u64) {
        self.push(TIMER_REMOVED, |buf| {
            buf.extend_from_slice(&id.to_le_bytes());
            8
        });
    }

    pub fn view_update(&mut self, projection: &str, generation: u32, update: &ViewUpdate) {
        match update {
            ViewUpdate::Put { key, value } => {
                self.push(VIEW_PUT, |buf| views::encode_put(buf, projection, generation, key, value))
            }
            ViewUpdate::Delete { key } => {
                self.push(VIEW_DELETE, |buf| views::encode_delete(buf, projection, generation, key))
            }
        }
    }

    pub fn projection_offset(&mut self, o: &ProjectionOffset) {
        self.push(PROJECTION_OFFSET, |buf| views::encode_offset(buf, o));
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The records of a body, in order.
pub fn records(body: &[u8]) -> JournalResult<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let bad = |what: &str| JournalError::Corrupt(format!("frame body: {what} at byte {at} of the body"));
        let header = body.get(at..at + RECORD_HEADER).ok_or_else(|| bad("truncated record header"))?;
        let len = u32::from_le_bytes(header[1..].try_into().unwrap()) as usize;
        let start = at + RECORD_HEADER;
        let bytes = body.get(start..start + len).ok_or_else(|| bad("record runs past the end"))?;
        out.push(match header[0] {
            EVENT => Record::Event { at: start, len },
            SNAPSHOT => Record::Snapshot { at: start, len },
            TIMER_STORED => Record::TimerStored { at: start, len },
            TIMER_REMOVED if len == 8 => Record::TimerRemoved { id: u64::from_le_bytes(bytes.try_into().unwrap()) },
            VIEW_PUT => Record::ViewPut { at: start, len },
            VIEW_DELETE => Record::ViewDelete { at: start, len },
            PROJECTION_OFFSET => Record::ProjectionOffset { at: start, len },
            kind if OutboxKind::from_u8(kind).is_some() => {
                Record::Outbox { kind: OutboxKind::from_u8(kind).unwrap(), at: start, len }
            }
            kind => return Err(bad(&format!("unknown record kind {kind} (length {len})"))),
        });
        at = start + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::ev;

    #[test]
    fn a_body_lists_its_records_where_they_are() {
        let mut b = BodyBuilder::default();
        b.event(&ev("a|1", 1, &["t"]), 10);
        b.timer_removed(7);
        b.snapshot(&Snapshot {
            persistence_id: "a|1".into(),
            seq_nr: 1,
            state_version: 1,
            timestamp_ms: 0,
            state: vec![1],
        });
        let body = b.finish();
        let recs = records(&body).unwrap();
        assert_eq!(recs.len(), 3);
        let Record::Event { at, len } = recs[0] else { panic!() };
        assert_eq!(codec::decode_event_record(&body[at..at + len]).unwrap().offset, 10);
        assert_eq!(recs[1], Record::TimerRemoved { id: 7 });
        let Record::Snapshot { at, len } = recs[2] else { panic!() };
        assert_eq!(codec::decode_snapshot_record(&body[at..at + len]).unwrap().state, vec![1]);
        assert!(records(&body[..body.len() - 1]).is_err(), "a cut body is refused");
        let mut unknown = body.clone();
        unknown[0] = 99;
        assert!(records(&unknown).is_err());
    }
}
