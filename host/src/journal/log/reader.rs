//! Reading the log while it is written: [`LogReader`] and its frame iterator.
//!
//! The writer and the readers share the list of segments. Each segment carries
//! the end of its durable frames (`end`), which the writer advances (`Release`)
//! only after the frame's `fdatasync` returned; readers load it (`Acquire`) and
//! never read at or past it, so they only ever see acknowledged bytes, and
//! those never change while the log is open. A segment's `end` is final before
//! the next segment is added to the list, so a reader that finds a next segment
//! and then loads `end` knows it has the whole of this one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::io::{LogFile, Window};
use super::recover::decode_frame;
use super::{LogError, Position};

/// A segment as the open log knows it.
pub(super) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub file: Arc<dyn LogFile>,
    pub first_seq: u64,
    /// End of the durable frames (see the module docs).
    pub end: AtomicU64,
}

/// What the writer and readers share: segments 1..=n, in order (`segments[i]`
/// has id `i + 1`).
pub(super) struct Shared {
    pub segments: RwLock<Vec<Arc<Segment>>>,
}

impl Shared {
    pub fn segment(&self, id: u64) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap();
        id.checked_sub(1).and_then(|i| segments.get(i as usize)).cloned()
    }
}

/// One frame as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts.
    pub start: Position,
    /// Where it ends (where the next frame of the same segment would start).
    pub end: Position,
    /// Its sequence number: 1, 2, 3, ... in append order.
    pub seq: u64,
    pub first_offset: u64,
    /// Byte offset of the body in segment `start.segment`.
    pub body_pos: u64,
    pub body: Vec<u8>,
}

/// Reads durable bytes and frames, concurrently with appends. Cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    pub(super) shared: Arc<Shared>,
}

impl LogReader {
    /// The durable end: where the last acknowledged frame ends.
    pub fn end(&self) -> Position {
        let segments = self.shared.segments.read().unwrap();
        let last = segments.last().expect("an open log has a segment");
        Position { segment: last.id, pos: last.end.load(Ordering::Acquire) }
    }

    /// Bytes `[pos, pos + len)` of segment `segment`, which must lie below the
    /// segment's durable end. The bytes are copied out with one positioned read
    /// (`pread`): no map of the file outlives the call, and every read goes
    /// through the log's I/O layer.
    pub fn read(&self, segment: u64, pos: u64, len: u32) -> Result<Vec<u8>, LogError> {
        let mut buf = Vec::new();
        self.read_into(segment, pos, len, &mut buf)?;
        Ok(buf)
    }

    /// [`LogReader::read`] into `buf`, which ends up holding exactly the bytes.
    /// A caller reading many spans passes the same buffer each time: a span of
    /// megabytes then costs no allocation, and no zeroing or first touch of
    /// fresh pages, which a new buffer per span does.
    pub fn read_into(&self, segment: u64, pos: u64, len: u32, buf: &mut Vec<u8>) -> Result<(), LogError> {
        let out_of_range = || LogError::OutOfRange { segment, pos, len: len as u64, end: self.end() };
        let seg = self.shared.segment(segment).ok_or_else(out_of_range)?;
        let end = seg.end.load(Ordering::Acquire);
        if pos.checked_add(len as u64).is_none_or(|e| e > end) {
            return Err(out_of_range());
        }
        // Zeroes only what lies past `buf`'s current length; checked above first,
        // so a bad length from a damaged index allocates nothing.
        buf.resize(len as usize, 0);
        seg.file.read_at(pos, buf).map_err(|e| LogError::io("read", &seg.path, e))
    }

    /// Every durable frame from `from` on, in order, each checked again (CRC,
    /// sequence number). `from` must be the start of a frame or the end of the
    /// log (`Position { segment: 1, pos: 0 }` means the very beginning). The
    /// iterator ends at the durable end as it is when it gets there, and after
    /// an error.
    pub fn frames_from(&self, from: Position) -> Frames {
        let from = if from.segment == 0 { Position { segment: 1, pos: 0 } } else { from };
        let (seg, error) = match self.shared.segment(from.segment) {
            Some(seg) if from.pos <= seg.end.load(Ordering::Acquire) => (Some(seg), None),
            _ => (None, Some(LogError::OutOfRange { segment: from.segment, pos: from.pos, len: 0, end: self.end() })),
        };
        let pos = from.pos.max(SEGMENT_HEADER_LEN);
        let seq = seg.as_ref().filter(|_| pos == SEGMENT_HEADER_LEN).map(|s| s.first_seq);
        Frames { shared: self.shared.clone(), seg, pos, seq, window: Window::new(), error }
    }
}

/// The iterator of [`LogReader::frames_from`].
pub struct Frames {
    shared: Arc<Shared>,
    /// `None` once finished.
    seg: Option<Arc<Segment>>,
    pos: u64,
    /// The sequence number the next frame must have, when known.
    seq: Option<u64>,
    window: Window,
    /// An error to yield before finishing.
    error: Option<LogError>,
}

impl Iterator for Frames {
    type Item = Result<Frame, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.seg = None;
            return Some(Err(e));
        }
        loop {
            let seg = self.seg.clone()?;
            // Look for a next segment before loading `end` (see the module docs).
            let next = self.shared.segment(seg.id + 1);
            let end = seg.end.load(Ordering::Acquire);
            if self.pos < end {
                let r = self.read_frame(&seg, end);
                if r.is_err() {
                    self.seg = None;
                }
                return Some(r);
            }
            match next {
                Some(next) => {
                    self.pos = SEGMENT_HEADER_LEN;
                    self.seq = Some(next.first_seq);
                    self.seg = Some(next);
                    self.window.reset();
                }
                None => {
                    self.seg = None;
                    return None;
                }
            }
        }
    }
}

impl std::iter::FusedIterator for Frames {}

impl Frames {
    fn read_frame(&mut self, seg: &Segment, end: u64) -> Result<Frame, LogError> {
        let pos = self.pos;
        let io_err = |e| LogError::io("read", &seg.path, e);
        let h = match decode_frame(&*seg.file, &mut self.window, pos, end, self.seq).map_err(io_err)? {
            Ok(h) => h,
            Err(bad) => return Err(LogError::corrupt(&seg.path, bad.pos, bad.why.0)),
        };
        let body_pos = pos + FRAME_HEADER_LEN;
        let body = self.window.get(&*seg.file, body_pos, h.body_len as u64, end).map_err(io_err)?.to_vec();
        self.pos = pos + h.frame_len();
        self.seq = Some(h.seq + 1);
        Ok(Frame {
            start: Position { segment: seg.id, pos },
            end: Position { segment: seg.id, pos: self.pos },
            seq: h.seq,
            first_offset: h.first_offset,
            body_pos,
            body,
        })
    }
}
