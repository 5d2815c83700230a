//! Projections in the journal: their views (key → value) and their offsets.
//!
//! A projection's batch — the view updates computed from a run of events and the
//! offset of the last of those events — is stored as **one frame** of the commit
//! log: the frame is durable whole or not at all, so a view never holds the
//! updates of events its offset does not cover, nor misses the updates of events
//! it does. After any crash the view is the fold of the events up to its offset,
//! each exactly once, and the projection continues after that offset.
//!
//! A projection may have several views at once, one per *generation*: a new
//! component version with another `view-version` rebuilds a new generation from
//! offset 0 beside the one that serves queries, and takes over (its offset record
//! is written with `live` set) once it has caught up.
//!
//! Records (body kinds 5, 6, 7; the encoder of `codec.rs`, version 2, CRC-32 first):
//!
//! ```text
//! view put          := crc32 | 2u8 | generation u32 | projection str16 | key str16 | value bytes32
//! view delete       := crc32 | 2u8 | generation u32 | projection str16 | key str16
//! projection offset := crc32 | 2u8 | generation u32 | offset u64 | view_version u32
//!                      | component_version u64 | flags u8 (bit 0: live) | projection str16
//! ```
//! A projection frame holds one offset record and the view records of the batch,
//! each key at most once.
//!
//! Index entries (`index.rs`, derived from the log like every other entry):
//!
//! ```text
//! b'v' projection 0x00 generation(u32 BE) key   -> Loc of the key's latest put record
//!                                                   (removed by a delete record)
//! b'p' projection 0x00 generation(u32 BE)       -> Loc of the generation's latest offset record
//! ```
//! Projection names never contain NUL and keys no control characters, so the
//! prefixes are unambiguous, and a view's keys sort bytewise after its prefix.
//!
//! The commit-log journal stores projections as above, the PostgreSQL journal in
//! its tables `mneme.views` and `mneme.projection_offsets` (one transaction per
//! batch, the offset checked and set in it); for sled the
//! [`Journal`](super::Journal) methods' default answer is [`NEED_LOG`].

use std::collections::{HashMap, HashSet};

use super::codec::{Dec, Enc, LOG_VERSION};
use super::{JournalError, JournalResult};
use crate::names::{validate_projection_name, validate_view_key};

/// What a journal without projection support answers.
pub const NEED_LOG: &str =
    "projections need the commit-log journal (`--journal log`, the default) or PostgreSQL; this data \
     directory uses sled";

/// One change to a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewUpdate {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl ViewUpdate {
    pub fn key(&self) -> &str {
        match self {
            ViewUpdate::Put { key, .. } | ViewUpdate::Delete { key } => key,
        }
    }
}

/// Where a projection's generation stands: what its offset record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionOffset {
    pub projection: String,
    /// Which view of the projection (see the module docs).
    pub generation: u32,
    /// The global offset of the last event folded into this view (0: none yet).
    pub offset: u64,
    /// The `view-version` of the component that builds this view.
    pub view_version: u32,
    /// The component version that wrote this record.
    pub component_version: u64,
    /// This generation serves queries (set when it was first, or once it caught up).
    pub live: bool,
}

/// One atomic write of a projection: its view updates and its new offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionBatch {
    /// The new offset record (the offset of the last event the updates cover).
    pub offset: ProjectionOffset,
    /// The offset the batch continues from: the generation's stored offset, 0 for a
    /// new generation. The journal refuses the batch if the stored offset differs
    /// (a batch computed twice is never stored twice).
    pub previous_offset: u64,
    /// At most one update per key.
    pub updates: Vec<ViewUpdate>,
    /// With several hosts: the lease the batch was computed under (projections run
    /// on the holder of partition 0); checked like a `WriteBatch`'s.
    pub fence: Option<super::Fence>,
}

/// The first bytes of every index key of `projection`'s offsets.
pub fn offset_prefix(projection: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(projection.len() + 6);
    k.push(b'p');
    k.extend_from_slice(projection.as_bytes());
    k.push(0);
    k
}

pub fn offset_key(projection: &str, generation: u32) -> Vec<u8> {
    let mut k = offset_prefix(projection);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

/// The first bytes of the index keys of a view's keys starting with `key_prefix`.
pub fn view_prefix(projection: &str, generation: u32, key_prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(projection.len() + key_prefix.len() + 6);
    k.push(b'v');
    k.extend_from_slice(projection.as_bytes());
    k.push(0);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(key_prefix.as_bytes());
    k
}

pub fn view_key(projection: &str, generation: u32, key: &str) -> Vec<u8> {
    view_prefix(projection, generation, key)
}

/// The view key at the end of an index key of `projection`'s `generation`.
pub fn key_of_view_key<'a>(index_key: &'a [u8], projection: &str, generation: u32) -> JournalResult<&'a str> {
    index_key
        .strip_prefix(view_prefix(projection, generation, "").as_slice())
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| JournalError::Corrupt(format!("index: bad view key of projection `{projection}`")))
}

pub fn encode_put(buf: &mut Vec<u8>, projection: &str, generation: u32, key: &str, value: &[u8]) -> usize {
    buf.reserve(16 + projection.len() + key.len() + value.len());
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u32(generation);
    w.str16(projection);
    w.str16(key);
    w.bytes32(value);
    w.finish()
}

pub fn encode_delete(buf: &mut Vec<u8>, projection: &str, generation: u32, key: &str) -> usize {
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u32(generation);
    w.str16(projection);
    w.str16(key);
    w.finish()
}

pub fn encode_offset(buf: &mut Vec<u8>, o: &ProjectionOffset) -> usize {
    let mut w = Enc::into(buf, LOG_VERSION);
    w.u32(o.generation);
    w.u64(o.offset);
    w.u32(o.view_version);
    w.u64(o.component_version);
    w.u8(u8::from(o.live));
    w.str16(&o.projection);
    w.finish()
}

/// A view record, decoded (its CRC checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRecord {
    pub projection: String,
    pub generation: u32,
    pub update: ViewUpdate,
}

pub fn decode_put(bytes: &[u8]) -> JournalResult<ViewRecord> {
    let mut r = Dec::version(bytes, "view put", LOG_VERSION)?;
    let generation = r.u32()?;
    let projection = r.str16()?;
    let key = r.str16()?;
    let value = r.bytes32()?;
    Ok(ViewRecord { projection, generation, update: ViewUpdate::Put { key, value } })
}

pub fn decode_delete(bytes: &[u8]) -> JournalResult<ViewRecord> {
    let mut r = Dec::version(bytes, "view delete", LOG_VERSION)?;
    let generation = r.u32()?;
    let projection = r.str16()?;
    let key = r.str16()?;
    Ok(ViewRecord { projection, generation, update: ViewUpdate::Delete { key } })
}

pub fn decode_offset(bytes: &[u8]) -> JournalResult<ProjectionOffset> {
    let mut r = Dec::version(bytes, "projection offset", LOG_VERSION)?;
    let generation = r.u32()?;
    let offset = r.u64()?;
    let view_version = r.u32()?;
    let component_version = r.u64()?;
    let flags = r.take(1)?[0];
    let projection = r.str16()?;
    Ok(ProjectionOffset { projection, generation, offset, view_version, component_version, live: flags & 1 == 1 })
}

/// The index key a view record (put or delete) names, read without copying and
/// without checking the CRC (the frame's CRC covers it when a frame is indexed).
pub fn view_index_key(bytes: &[u8]) -> JournalResult<Vec<u8>> {
    let mut r = Dec::unchecked(bytes, "view", LOG_VERSION)?;
    let generation = r.u32()?;
    let projection = r.str16_ref()?;
    let key = r.str16_ref()?;
    Ok(view_key(projection, generation, key))
}

/// The index key an offset record names (unchecked, like [`view_index_key`]).
pub fn offset_index_key(bytes: &[u8]) -> JournalResult<Vec<u8>> {
    let mut r = Dec::unchecked(bytes, "projection offset", LOG_VERSION)?;
    let generation = r.u32()?;
    r.take(8 + 4 + 8 + 1)?;
    Ok(offset_key(r.str16_ref()?, generation))
}

/// Refuse a batch no projection should write: a bad name or key, a key twice, an
/// offset that goes back, a value too large for a record.
pub fn check_batch(batch: &ProjectionBatch) -> JournalResult<()> {
    let invalid = |m: String| Err(JournalError::Invalid(m));
    let o = &batch.offset;
    validate_projection_name(&o.projection).map_err(JournalError::Invalid)?;
    if o.offset < batch.previous_offset {
        return invalid(format!(
            "projection `{}` batch goes back from offset {} to {}",
            o.projection, batch.previous_offset, o.offset
        ));
    }
    let mut keys = HashSet::with_capacity(batch.updates.len());
    for u in &batch.updates {
        validate_view_key(u.key()).map_err(JournalError::Invalid)?;
        if !keys.insert(u.key()) {
            return invalid(format!("projection `{}` batch updates key `{}` twice", o.projection, u.key()));
        }
        if let ViewUpdate::Put { value, .. } = u {
            if value.len() > u32::MAX as usize / 2 {
                return invalid(format!("view value of {} bytes is too large for a record", value.len()));
            }
        }
    }
    Ok(())
}

/// What `verify` checks of the projection records, frame by frame: every frame
/// with view records has exactly one offset record, of the same projection and
/// generation; offsets never go back; and at the end, what the index must hold.
#[derive(Default)]
pub struct ViewsCheck {
    /// Index key → location of the latest put, for every key that has a value.
    pub live_keys: HashMap<Vec<u8>, super::location::Loc>,
    /// Index key of each generation's offset → (location of its latest record, offset).
    pub offsets: HashMap<Vec<u8>, (super::location::Loc, u64)>,
    /// View records and offset records read.
    pub records: u64,
}

/// One frame's projection records, for [`ViewsCheck::frame`].
pub enum FrameRecord<'a> {
    View { loc: super::location::Loc, bytes: &'a [u8], put: bool },
    Offset { loc: super::location::Loc, bytes: &'a [u8] },
}

impl ViewsCheck {
    /// Check one frame's projection records; returns the problems found.
    pub fn frame(&mut self, records: &[FrameRecord]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut offset: Option<ProjectionOffset> = None;
        let mut views: Vec<ViewRecord> = Vec::new();
        let mut keys = HashSet::new();
        for r in records {
            self.records += 1;
            match r {
                FrameRecord::View { loc, bytes, put } => {
                    let decoded = if *put { decode_put(bytes) } else { decode_delete(bytes) };
                    let v = match decoded {
                        Ok(v) => v,
                        Err(e) => {
                            problems.push(format!("view record at segment {} byte {}: {e}", loc.segment, loc.pos));
                            continue;
                        }
                    };
                    let key = view_key(&v.projection, v.generation, v.update.key());
                    if !keys.insert(key.clone()) {
                        problems.push(format!(
                            "projection `{}`: a frame updates key `{}` twice",
                            v.projection,
                            v.update.key()
                        ));
                    }
                    if *put {
                        self.live_keys.insert(key, *loc);
                    } else {
                        self.live_keys.remove(&key);
                    }
                    views.push(v);
                }
                FrameRecord::Offset { loc, bytes } => match decode_offset(bytes) {
                    Ok(o) => {
                        if offset.is_some() {
                            problems.push(format!("projection `{}`: a frame holds two offset records", o.projection));
                        }
                        let key = offset_key(&o.projection, o.generation);
                        if let Some((_, before)) = self.offsets.get(&key) {
                            if o.offset < *before {
                                problems.push(format!(
                                    "projection `{}` generation {}: offset goes back from {before} to {}",
                                    o.projection, o.generation, o.offset
                                ));
                            }
                        }
                        self.offsets.insert(key, (*loc, o.offset));
                        offset = Some(o);
                    }
                    Err(e) => problems
                        .push(format!("projection offset record at segment {} byte {}: {e}", loc.segment, loc.pos)),
                },
            }
        }
        for v in &views {
            match &offset {
                Some(o) if o.projection == v.projection && o.generation == v.generation => {}
                _ => problems.push(format!(
                    "projection `{}` generation {}: view records without their offset record in the same frame",
                    v.projection, v.generation
                )),
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(updates: Vec<ViewUpdate>) -> ProjectionBatch {
        ProjectionBatch {
            offset: ProjectionOffset {
                projection: "balances".into(),
                generation: 1,
                offset: 10,
                view_version: 1,
                component_version: 1,
                live: true,
            },
            previous_offset: 5,
            updates,
            fence: None,
        }
    }

    fn put(key: &str, value: &[u8]) -> ViewUpdate {
        ViewUpdate::Put { key: key.into(), value: value.to_vec() }
    }

    #[test]
    fn records_round_trip_and_name_their_index_keys() {
        let mut buf = b"before".to_vec();
        let start = buf.len();
        let len = encode_put(&mut buf, "balances", 3, "alice", b"{\"balance\":5}");
        assert_eq!(buf.len(), start + len);
        let rec = &buf[start..];
        let back = decode_put(rec).unwrap();
        assert_eq!((back.projection.as_str(), back.generation), ("balances", 3));
        assert_eq!(back.update, put("alice", b"{\"balance\":5}"));
        assert_eq!(view_index_key(rec).unwrap(), view_key("balances", 3, "alice"));

        let mut buf = Vec::new();
        encode_delete(&mut buf, "balances", 3, "bob");
        assert_eq!(decode_delete(&buf).unwrap().update, ViewUpdate::Delete { key: "bob".into() });
        assert_eq!(view_index_key(&buf).unwrap(), view_key("balances", 3, "bob"));
        assert!(decode_put(&buf).is_err(), "a delete is not a put");

        let o = batch(vec![]).offset;
        let mut buf = Vec::new();
        encode_offset(&mut buf, &o);
        assert_eq!(decode_offset(&buf).unwrap(), o);
        assert_eq!(offset_index_key(&buf).unwrap(), offset_key("balances", 1));
        let not_live = ProjectionOffset { live: false, ..o };
        let mut buf = Vec::new();
        encode_offset(&mut buf, &not_live);
        assert!(!decode_offset(&buf).unwrap().live);
    }

    #[test]
    fn any_flipped_byte_of_a_view_record_is_detected() {
        let mut bytes = Vec::new();
        encode_put(&mut bytes, "balances", 1, "alice", b"12");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_put(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        let mut bytes = Vec::new();
        encode_offset(&mut bytes, &batch(vec![]).offset);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode_offset(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn keys_of_one_view_sort_under_its_prefix_and_apart_from_others() {
        let a = view_key("p", 1, "a");
        assert!(a.starts_with(&view_prefix("p", 1, "")));
        assert!(!view_key("p", 2, "a").starts_with(&view_prefix("p", 1, "")));
        assert!(!view_key("pq", 1, "a").starts_with(&view_prefix("p", 1, "")), "names are NUL-terminated");
        assert!(view_key("p", 1, "a") < view_key("p", 1, "b"));
        assert_eq!(key_of_view_key(&view_key("p", 7, "a:b"), "p", 7).unwrap(), "a:b");
        assert!(offset_key("p", 1).starts_with(&offset_prefix("p")));
        assert!(!offset_key("pq", 1).starts_with(&offset_prefix("p")));
        assert!(offset_key("p", 2) > offset_key("p", 1));
    }

    #[test]
    fn batches_that_no_projection_should_write_are_refused() {
        assert!(check_batch(&batch(vec![put("a", b"1"), ViewUpdate::Delete { key: "b".into() }])).is_ok());
        assert!(check_batch(&batch(vec![put("a", b"1"), ViewUpdate::Delete { key: "a".into() }])).is_err());
        assert!(check_batch(&batch(vec![put("", b"1")])).is_err());
        assert!(check_batch(&batch(vec![put("a\nb", b"1")])).is_err());
        let mut back = batch(vec![]);
        back.previous_offset = 11;
        assert!(check_batch(&back).is_err(), "offset going back");
        let mut name = batch(vec![]);
        name.offset.projection = "../x".into();
        assert!(check_batch(&name).is_err());
    }

    #[test]
    fn the_check_of_frames_finds_views_without_offsets_and_offsets_going_back() {
        let loc = |pos| super::super::location::Loc { segment: 1, pos, len: 1 };
        let offset = |n: u64| {
            let mut b = Vec::new();
            encode_offset(&mut b, &ProjectionOffset { offset: n, ..batch(vec![]).offset });
            b
        };
        let (o10, o9) = (offset(10), offset(9));
        let mut p = Vec::new();
        encode_put(&mut p, "balances", 1, "alice", b"1");
        let mut check = ViewsCheck::default();
        let ok = check.frame(&[
            FrameRecord::View { loc: loc(0), bytes: &p, put: true },
            FrameRecord::Offset { loc: loc(1), bytes: &o10 },
        ]);
        assert!(ok.is_empty(), "{ok:?}");
        assert_eq!(check.live_keys.len(), 1);
        let lone = check.frame(&[FrameRecord::View { loc: loc(2), bytes: &p, put: true }]);
        assert!(lone[0].contains("without their offset record"), "{lone:?}");
        let back = check.frame(&[FrameRecord::Offset { loc: loc(3), bytes: &o9 }]);
        assert!(back[0].contains("goes back"), "{back:?}");
    }
}

/// The projection methods of the commit-log journal: atomicity, the offset check,
/// reads, and what survives a reopen, a rebuilt index and a torn write.
#[cfg(test)]
#[path = "views_tests.rs"]
mod journal_tests;
