//! Opening a log: find the segments, check every frame against the rules in the
//! module docs of `log` ("Recovery"), cut a torn tail, remove a torn segment
//! creation, and refuse everything else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    Committed, FrameHeader, Invalid, SegmentHeader, FRAME_ALIGN, FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_HEADER_LEN,
};
use super::io::{LogFile, LogIo, Window};
use super::{LogError, RemovedSegment, TornTail};

/// Name of the file holding the committed end.
pub(super) const COMMITTED_FILE: &str = "COMMITTED";
/// Name of the lock file.
pub(super) const LOCK_FILE: &str = "LOCK";

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

/// The id of a segment file name (`{id:020}.log`), `None` for any other name.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id > 0)
}

pub(super) struct RecoveredSegment {
    pub path: PathBuf,
    pub file: Arc<dyn LogFile>,
    pub header: SegmentHeader,
    /// Where this segment's durable frames end.
    pub end: u64,
}

pub(super) struct Recovered {
    /// Segments 1..=n; empty for a new log.
    pub segments: Vec<RecoveredSegment>,
    /// Sequence number of the next frame.
    pub next_seq: u64,
    pub committed: Option<Committed>,
    pub torn_tail: Option<TornTail>,
    pub removed_segment: Option<RemovedSegment>,
}

pub(super) fn recover(dir: &Path, io: &dyn LogIo) -> Result<Recovered, LogError> {
    let names = io.list(dir).map_err(|e| LogError::io("list", dir, e))?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    for (i, &id) in ids.iter().enumerate() {
        let want = i as u64 + 1;
        if id != want {
            return Err(LogError::corrupt(
                segment_path(dir, want),
                0,
                format!(
                    "segment {want} is missing but segment {id} exists (segments are numbered from 1 without gaps)"
                ),
            ));
        }
    }
    let committed_path = dir.join(COMMITTED_FILE);
    let committed = io
        .read_file(&committed_path)
        .map_err(|e| LogError::io("read", &committed_path, e))?
        .and_then(|b| Committed::decode(&b));

    let count = ids.len() as u64;
    let mut opened = Vec::new();
    let mut removed_segment = None;
    for id in ids {
        let path = segment_path(dir, id);
        let file = io.open_segment(&path).map_err(|e| LogError::io("open", &path, e))?;
        let len = file.size().map_err(|e| LogError::io("stat", &path, e))?;
        match read_header(&*file, len).map_err(|e| LogError::io("read", &path, e))? {
            Ok(h) if h.id == id => opened.push((path, file, len, h)),
            Ok(h) => return Err(LogError::corrupt(path, 16, format!("the segment header names segment {}", h.id))),
            Err(why) => {
                // A torn creation: the newest segment, made after the last
                // acknowledged frame, crashed before its header was durable, and
                // never held a frame (frames are written only after that).
                let after_committed = committed.is_none_or(|c| c.segment < id);
                let empty =
                    || all_zero(&*file, SEGMENT_HEADER_LEN.min(len), len).map_err(|e| LogError::io("read", &path, e));
                if id == count && after_committed && empty()? {
                    drop(file);
                    io.remove(&path).map_err(|e| LogError::io("remove", &path, e))?;
                    io.sync_dir(dir).map_err(|e| LogError::io("sync directory", dir, e))?;
                    removed_segment = Some(RemovedSegment { file: path, what: why.0 });
                } else {
                    return Err(LogError::corrupt(path, 0, format!("segment header damaged ({why})")));
                }
            }
        }
    }
    if let Some(c) = committed {
        if c.segment > opened.len() as u64 {
            return Err(LogError::corrupt(
                segment_path(dir, c.segment),
                0,
                format!(
                    "acknowledged data missing: {COMMITTED_FILE} records frames up to frame {} ending at byte {} of \
                     segment {}, which does not exist",
                    c.seq, c.pos, c.segment
                ),
            ));
        }
    }

    let n = opened.len();
    let mut segments = Vec::with_capacity(n);
    let mut next_seq = 1;
    let mut torn_tail = None;
    for i in 0..n {
        let (path, file, len, h) = &opened[i];
        let (len, h) = (*len, *h);
        let last = i + 1 == n;
        if i == 0 && h.prev_end != 0 {
            return Err(LogError::corrupt(path, 24, "the first segment's header records a previous segment"));
        }
        if h.first_seq != next_seq {
            return Err(LogError::corrupt(
                path,
                32,
                format!(
                    "the segment starts at frame {} but the frames before it end with frame {}",
                    h.first_seq,
                    next_seq - 1
                ),
            ));
        }
        // A non-last segment ends where the next one says (`prev_end`); bytes
        // after that are a frame whose write or sync failed, and are ignored.
        let limit = if last { len } else { opened[i + 1].3.prev_end };
        if !last && limit > len {
            return Err(LogError::corrupt(
                path,
                len,
                format!(
                    "acknowledged data missing: the next segment records that this one holds frames up to byte \
                     {limit}, but the file ends at byte {len}"
                ),
            ));
        }
        if !last && limit < SEGMENT_HEADER_LEN {
            return Err(LogError::corrupt(&opened[i + 1].0, 24, "the previous segment's end lies inside its header"));
        }
        let this_committed = committed.filter(|c| c.segment == h.id);
        let scan =
            scan_frames(&**file, h.first_seq, limit, this_committed).map_err(|e| LogError::io("read", path, e))?;
        if !last {
            if let Some(bad) = &scan.bad {
                return Err(LogError::corrupt(path, bad.pos, bad.why.0.clone()));
            }
        }
        if let Some(c) = this_committed {
            if c.pos > scan.end {
                let damaged = match &scan.bad {
                    Some(bad) => format!("the frame at byte {} is damaged ({}) but ", bad.pos, bad.why),
                    None => String::new(),
                };
                return Err(LogError::corrupt(
                    path,
                    scan.end,
                    format!(
                        "acknowledged data missing: {damaged}{COMMITTED_FILE} records acknowledged frames up to frame \
                         {} ending at byte {}",
                        c.seq, c.pos
                    ),
                ));
            }
            if !scan.committed_matched {
                return Err(LogError::corrupt(
                    &committed_path,
                    16,
                    format!(
                        "records frame {} ending at byte {} of {}, but no such frame ends there",
                        c.seq,
                        c.pos,
                        path.display()
                    ),
                ));
            }
        }
        if last {
            torn_tail = cut_tail(&**file, path, &h, len, &scan)?;
        }
        next_seq = scan.next_seq;
        segments.push(RecoveredSegment { path: path.clone(), file: file.clone(), header: h, end: scan.end });
    }
    Ok(Recovered { segments, next_seq, committed, torn_tail, removed_segment })
}

/// The segment header, or why it is not one (I/O errors apart).
fn read_header(file: &dyn LogFile, len: u64) -> std::io::Result<Result<SegmentHeader, Invalid>> {
    if len < SEGMENT_HEADER_LEN {
        return Ok(Err(Invalid(format!("the file is {len} bytes, shorter than a segment header"))));
    }
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_at(0, &mut b)?;
    Ok(SegmentHeader::decode(&b))
}

/// A frame that failed its checks.
pub(super) struct Bad {
    pub pos: u64,
    pub why: Invalid,
    /// Its header, if that is intact and carries the expected sequence number:
    /// then the log wrote this header and the frame's extent is known.
    header: Option<FrameHeader>,
}

struct Scan {
    /// End of the last valid frame (or of the segment header).
    end: u64,
    next_seq: u64,
    /// Where the frames stopped before `limit`.
    bad: Option<Bad>,
    /// A frame with the committed sequence number ends at the committed position.
    committed_matched: bool,
}

/// Walk the frames of a segment from its header up to `limit`.
fn scan_frames(file: &dyn LogFile, first_seq: u64, limit: u64, committed: Option<Committed>) -> std::io::Result<Scan> {
    let mut w = Window::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut seq = first_seq;
    let mut committed_matched = false;
    while pos < limit {
        match decode_frame(file, &mut w, pos, limit, Some(seq))? {
            Ok(h) => {
                pos += h.frame_len();
                committed_matched |= committed.is_some_and(|c| c.pos == pos && c.seq == seq);
                seq += 1;
            }
            Err(bad) => return Ok(Scan { end: pos, next_seq: seq, bad: Some(bad), committed_matched }),
        }
    }
    Ok(Scan { end: pos, next_seq: seq, bad: None, committed_matched })
}

/// Decode and fully check the frame at `pos`, which must end by `limit`. With
/// `expect_seq`, a frame with another sequence number is bad.
pub(super) fn decode_frame(
    file: &dyn LogFile,
    w: &mut Window,
    pos: u64,
    limit: u64,
    expect_seq: Option<u64>,
) -> std::io::Result<Result<FrameHeader, Bad>> {
    let bad = |why: Invalid, header: Option<FrameHeader>| Ok(Err(Bad { pos, why, header }));
    if pos + FRAME_HEADER_LEN > limit {
        return bad(Invalid(format!("{} bytes before the end, too few for a frame header", limit - pos)), None);
    }
    let hb = w.get(file, pos, FRAME_HEADER_LEN, limit)?;
    let h = match FrameHeader::decode(hb) {
        Ok(h) => h,
        Err(why) => return bad(why, None),
    };
    if let Some(seq) = expect_seq {
        if h.seq != seq {
            return bad(Invalid(format!("frame number {} where frame {seq} was expected", h.seq)), None);
        }
    }
    let end = pos + h.frame_len();
    if end > limit {
        return bad(
            Invalid(format!("the frame runs {} bytes past the end of the segment's data", end - limit)),
            Some(h),
        );
    }
    let all = w.get(file, pos, h.frame_len(), limit)?;
    let body_end = (FRAME_HEADER_LEN + h.body_len as u64) as usize;
    match h.check_body(&all[..FRAME_HEADER_LEN as usize], &all[FRAME_HEADER_LEN as usize..body_end], &all[body_end..]) {
        Ok(()) => Ok(Ok(h)),
        Err(why) => bad(why, Some(h)),
    }
}

fn all_zero(file: &dyn LogFile, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_at(at, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The last segment after its valid frames: zeros (a clean end), or a torn tail
/// to cut, or, if a valid frame lies anywhere in it, corruption.
fn cut_tail(
    file: &dyn LogFile,
    path: &Path,
    h: &SegmentHeader,
    len: u64,
    scan: &Scan,
) -> Result<Option<TornTail>, LogError> {
    let p = scan.end;
    let io_err = |op| move |e| LogError::io(op, path, e);
    // Inside a torn frame whose header is intact, its (opaque) body is not
    // searched for frames: only what lies after its extent.
    let skip = scan.bad.as_ref().and_then(|b| b.header).map_or(p, |fh| (p + fh.frame_len()).min(len));
    let tail = scan_tail(file, p, skip, len).map_err(io_err("read"))?;
    if let Some((q, seq)) = tail.valid_frame {
        let why = scan.bad.as_ref().map_or_else(String::new, |b| format!(" ({})", b.why));
        return Err(LogError::corrupt(
            path,
            p,
            format!(
                "the frame at byte {p} is damaged{why}, but a valid frame (number {seq}) follows at byte {q}: \
                 a frame is written only after the one before it is durable, so the damaged one was acknowledged"
            ),
        ));
    }
    let mut torn = None;
    if let Some(z) = tail.last_nonzero {
        let zeros = vec![0u8; (z + 1 - p).min(1 << 20) as usize];
        let mut at = p;
        while at <= z {
            let n = (z + 1 - at).min(zeros.len() as u64);
            file.write_at(at, &zeros[..n as usize]).map_err(io_err("write"))?;
            at += n;
        }
        torn = Some(TornTail { file: path.to_path_buf(), offset: p, bytes: z + 1 - p });
    }
    if len < h.capacity {
        // A tail cut short (by a truncation): restore the preallocated length.
        file.allocate(h.capacity).map_err(io_err("allocate"))?;
        file.sync_all().map_err(io_err("fsync"))?;
    } else if torn.is_some() {
        file.sync_data().map_err(io_err("fdatasync"))?;
    }
    Ok(torn)
}

/// What lies in the last segment after its valid frames.
struct Tail {
    /// The first valid frame (any sequence number) at a frame-aligned position:
    /// (position, sequence number).
    valid_frame: Option<(u64, u64)>,
    /// Position of the last non-zero byte.
    last_nonzero: Option<u64>,
}

/// Look at `[p, len)`, not searching for frames inside `(p, skip)`.
fn scan_tail(file: &dyn LogFile, p: u64, skip: u64, len: u64) -> std::io::Result<Tail> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; (len.saturating_sub(p)).min(CHUNK) as usize];
    let mut probe = Window::new();
    let (mut found, mut last_nonzero) = (None, None);
    let mut at = p;
    while at < len {
        let n = (len - at).min(CHUNK);
        let chunk = &mut buf[..n as usize];
        file.read_at(at, chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            last_nonzero = Some(at + i as u64);
        }
        // `p` and CHUNK are multiples of FRAME_ALIGN, so `at` is too.
        let mut q = at;
        while found.is_none() && q + FRAME_HEADER_LEN <= len && q < at + n {
            let i = (q - at) as usize;
            let magic = i + 4 <= chunk.len() && &chunk[i..i + 4] == FRAME_MAGIC;
            if magic && (q == p || q >= skip) {
                if let Ok(h) = decode_frame(file, &mut probe, q, len, None)? {
                    found = Some((q, h.seq));
                }
            }
            q += FRAME_ALIGN;
        }
        at += n;
    }
    Ok(Tail { valid_frame: found, last_nonzero })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_parse_only_in_the_exact_form() {
        assert_eq!(parse_segment_name("00000000000000000001.log"), Some(1));
        assert_eq!(parse_segment_name(&format!("{:020}.log", u64::MAX)), Some(u64::MAX));
        assert_eq!(segment_path(Path::new("d"), 12), Path::new("d/00000000000000000012.log"));
        for bad in [
            "1.log",
            "0000000000000000001.log",
            "00000000000000000000.log",
            "0000000000000000000a.log",
            "00000000000000000001.log.tmp",
            "COMMITTED",
            "LOCK",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
