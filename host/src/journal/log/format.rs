//! Byte layouts of the commit log: segment header, frame, `COMMITTED` record.
//!
//! Integers are little endian. Every CRC is CRC-32C (Castagnoli, the polynomial
//! with hardware support on x86-64 SSE 4.2 and ARMv8), computed by the `crc32c`
//! crate with the standard initial value and final xor (the CRC of "123456789" is
//! `0xe3069283`).
//!
//! ```text
//! segment header, 64 bytes at offset 0 of every segment file
//!   0  magic       8   b"MNEMELOG"
//!   8  version     u32 FORMAT_VERSION (1)
//!  12  reserved    u32 0
//!  16  segment     u64 the segment id, equal to the number in the file name
//!  24  prev_end    u64 byte offset in segment-1 where its durable frames end (0 in segment 1)
//!  32  first_seq   u64 sequence number of this segment's first frame
//!  40  capacity    u64 the segment's length in bytes as created (preallocated)
//!  48  reserved    12  0
//!  60  crc         u32 CRC-32C of bytes [0, 60)
//!
//! frame, at offset 64 of a segment or right after the previous frame
//!   0  magic        4  b"MNFR"
//!   4  body_len     u32
//!   8  seq          u64 frame sequence number: 1, 2, 3, ... across all segments
//!  16  first_offset u64 the caller's number for the batch (the journal's first event offset)
//!  24  header_crc   u32 CRC-32C of bytes [0, 24)
//!  28  frame_crc    u32 CRC-32C of bytes [0, 28) followed by the body
//!  32  body         body_len bytes, opaque
//!      padding      0-7 zero bytes, so the next frame starts at a multiple of 8
//!
//! COMMITTED, 44 bytes, the whole file
//!   0  magic       8   b"MNCOMMIT"
//!   8  version     u32 FORMAT_VERSION (1)
//!  12  reserved    u32 0
//!  16  segment     u64 } position where the last acknowledged frame ends
//!  24  pos         u64 }
//!  32  seq         u64 sequence number of the last acknowledged frame
//!  40  crc         u32 CRC-32C of bytes [0, 40)
//! ```
//!
//! Why two CRCs per frame: `header_crc` lets a reader trust `body_len` and `seq`
//! before it reads the body, so recovery can tell "this header was written by the
//! log, its body is incomplete" (a torn write, whose extent is then known) from
//! "these bytes are not a frame at all"; `frame_crc` covers header and body, so
//! any damage to either is detected. Padding is checked to be zero, so no byte
//! between the first header and the end of the last frame escapes a check.

use std::fmt;

/// Version of every layout in this file. A reader refuses any other value.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; the first frame of a segment starts here.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: u64 = 32;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: u64 = 8;
/// Largest body a frame can carry (`body_len` is a u32; the frame, padded, must
/// also fit a u32 length).
pub const MAX_BODY: usize = u32::MAX as usize - FRAME_HEADER_LEN as usize - FRAME_ALIGN as usize;
/// Length of the `COMMITTED` record.
pub const COMMITTED_LEN: usize = 44;

const SEGMENT_MAGIC: &[u8; 8] = b"MNEMELOG";
/// The first byte is non-zero, so a frame whose first byte reached the disk is
/// never mistaken for the zeros after the last frame.
pub const FRAME_MAGIC: &[u8; 4] = b"MNFR";
const COMMITTED_MAGIC: &[u8; 8] = b"MNCOMMIT";

pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Length of a frame carrying `body_len` bytes, padding included.
pub fn frame_len(body_len: usize) -> u64 {
    (FRAME_HEADER_LEN + body_len as u64).next_multiple_of(FRAME_ALIGN)
}

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    pub prev_end: u64,
    pub first_seq: u64,
    pub capacity: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.id.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_end.to_le_bytes());
        b[32..40].copy_from_slice(&self.first_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check a header (`b` holds at least [`SEGMENT_HEADER_LEN`] bytes).
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, Invalid> {
        let b = &b[..SEGMENT_HEADER_LEN as usize];
        if &b[0..8] != SEGMENT_MAGIC {
            return Err(Invalid::new("no segment header magic"));
        }
        if crc32c(&b[..60]) != u32_at(b, 60) {
            return Err(Invalid::new("segment header checksum mismatch"));
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(Invalid(format!("unknown segment format version {version}")));
        }
        if u32_at(b, 12) != 0 || b[48..60].iter().any(|&x| x != 0) {
            return Err(Invalid::new("non-zero reserved bytes in the segment header"));
        }
        let h = SegmentHeader {
            id: u64_at(b, 16),
            prev_end: u64_at(b, 24),
            first_seq: u64_at(b, 32),
            capacity: u64_at(b, 40),
        };
        if h.capacity < SEGMENT_HEADER_LEN || !h.prev_end.is_multiple_of(FRAME_ALIGN) || h.first_seq == 0 {
            return Err(Invalid::new("segment header fields out of range"));
        }
        Ok(h)
    }
}

/// A frame header whose magic and `header_crc` are correct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub seq: u64,
    pub first_offset: u64,
    pub frame_crc: u32,
}

impl FrameHeader {
    /// Decode a header from [`FRAME_HEADER_LEN`] bytes, checking magic and
    /// `header_crc` (not the body: see [`FrameHeader::check_body`]).
    pub fn decode(b: &[u8]) -> Result<FrameHeader, Invalid> {
        let b = &b[..FRAME_HEADER_LEN as usize];
        if &b[0..4] != FRAME_MAGIC {
            return Err(Invalid::new(if b.iter().all(|&x| x == 0) {
                "zeros where a frame should start"
            } else {
                "no frame magic"
            }));
        }
        if crc32c(&b[..24]) != u32_at(b, 24) {
            return Err(Invalid::new("frame header checksum mismatch"));
        }
        let body_len = u32_at(b, 4);
        if body_len as usize > MAX_BODY {
            return Err(Invalid::new("frame body length out of range"));
        }
        Ok(FrameHeader { body_len, seq: u64_at(b, 8), first_offset: u64_at(b, 16), frame_crc: u32_at(b, 28) })
    }

    /// Length of the whole frame, padding included.
    pub fn frame_len(&self) -> u64 {
        frame_len(self.body_len as usize)
    }

    /// Check `frame_crc` over `header` (the 32 header bytes), `body` and that
    /// `padding` is zero. `body.len()` must be `body_len`.
    pub fn check_body(&self, header: &[u8], body: &[u8], padding: &[u8]) -> Result<(), Invalid> {
        debug_assert_eq!(body.len(), self.body_len as usize);
        let crc = crc32c::crc32c_append(crc32c(&header[..28]), body);
        if crc != self.frame_crc {
            return Err(Invalid::new("frame checksum mismatch"));
        }
        if padding.iter().any(|&x| x != 0) {
            return Err(Invalid::new("non-zero padding after the frame"));
        }
        Ok(())
    }
}

/// Append the frame (header, body, padding) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, first_offset: u64, body: &[u8]) {
    assert!(body.len() <= MAX_BODY, "frame body too large");
    let start = out.len();
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&first_offset.to_le_bytes());
    let header_crc = crc32c(&out[start..start + 24]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    let frame_crc = crc32c::crc32c_append(crc32c(&out[start..start + 28]), body);
    out.extend_from_slice(&frame_crc.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(start + frame_len(body.len()) as usize, 0);
}

/// What `COMMITTED` says: the end of the last acknowledged frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub segment: u64,
    pub pos: u64,
    pub seq: u64,
}

impl Committed {
    pub fn encode(&self) -> [u8; COMMITTED_LEN] {
        let mut b = [0u8; COMMITTED_LEN];
        b[0..8].copy_from_slice(COMMITTED_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.pos.to_le_bytes());
        b[32..40].copy_from_slice(&self.seq.to_le_bytes());
        let crc = crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` unless `b` is exactly a well-formed record (recovery then treats
    /// the committed end as unknown; see the module docs of `log`).
    pub fn decode(b: &[u8]) -> Option<Committed> {
        if b.len() != COMMITTED_LEN
            || &b[0..8] != COMMITTED_MAGIC
            || crc32c(&b[..40]) != u32_at(b, 40)
            || u32_at(b, 8) != FORMAT_VERSION
            || u32_at(b, 12) != 0
        {
            return None;
        }
        let c = Committed { segment: u64_at(b, 16), pos: u64_at(b, 24), seq: u64_at(b, 32) };
        (c.segment >= 1 && c.seq >= 1 && c.pos > SEGMENT_HEADER_LEN).then_some(c)
    }
}

/// Why bytes are not a valid header, frame or record (goes into
/// `LogError::Corrupt::what`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(what: &str) -> Invalid {
        Invalid(what.to_string())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn segment_header_round_trips_and_every_flipped_byte_is_detected() {
        let h = SegmentHeader { id: 7, prev_end: 4096, first_seq: 99, capacity: 1 << 20 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..b.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = b;
                bad[i] ^= mask;
                assert!(SegmentHeader::decode(&bad).is_err(), "flip {mask:#x} at byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn frame_round_trips_and_every_flipped_byte_is_detected() {
        for body_len in [0usize, 1, 7, 8, 9, 100] {
            let body: Vec<u8> = (0..body_len).map(|i| (i * 7 + 1) as u8).collect();
            let mut b = Vec::new();
            encode_frame(&mut b, 42, 1000, &body);
            assert_eq!(b.len() as u64, frame_len(body_len));
            assert_eq!(b.len() % FRAME_ALIGN as usize, 0);
            let check = |b: &[u8]| -> Result<FrameHeader, Invalid> {
                let h = FrameHeader::decode(&b[..32])?;
                if h.body_len as usize != body_len {
                    // A changed length is caught by the header CRC; never reached.
                    return Err(Invalid::new("length changed"));
                }
                let end = 32 + body_len;
                h.check_body(&b[..32], &b[32..end], &b[end..])?;
                Ok(h)
            };
            let h = check(&b).unwrap();
            assert_eq!((h.seq, h.first_offset, h.body_len as usize), (42, 1000, body_len));
            for i in 0..b.len() {
                for mask in [0x01u8, 0x80, 0xff] {
                    let mut bad = b.clone();
                    bad[i] ^= mask;
                    assert!(
                        check(&bad).is_err(),
                        "flip {mask:#x} at byte {i} of a {body_len}-byte frame went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn committed_round_trips_and_every_flipped_byte_is_detected() {
        let c = Committed { segment: 3, pos: 4160, seq: 12 };
        let b = c.encode();
        assert_eq!(Committed::decode(&b), Some(c));
        assert_eq!(Committed::decode(&b[..43]), None);
        for i in 0..b.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = b;
                bad[i] ^= mask;
                assert_eq!(Committed::decode(&bad), None, "flip {mask:#x} at byte {i} went unnoticed");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_frame_round_trips(seq in 1u64.., first_offset: u64, body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut b = vec![0xaa; 3];
            encode_frame(&mut b, seq, first_offset, &body);
            let f = &b[3..];
            let h = FrameHeader::decode(&f[..32]).unwrap();
            proptest::prop_assert_eq!((h.seq, h.first_offset, h.body_len as usize), (seq, first_offset, body.len()));
            let end = 32 + body.len();
            proptest::prop_assert_eq!(&f[32..end], &body[..]);
            proptest::prop_assert!(h.check_body(&f[..32], &f[32..end], &f[end..]).is_ok());
        }
    }
}
