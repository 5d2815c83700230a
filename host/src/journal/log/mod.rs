//! mneme's commit log: an append-only, checksummed, segmented log of frames,
//! the source of truth of the journal (indexes are derived from it).
//!
//! A frame is one group-commit batch: an opaque body and the caller's
//! `first_offset`. [`CommitLog::append`] writes a frame and `fdatasync`s it; `Ok`
//! means durable. Recovery never cuts away an acknowledged frame: damage that it
//! cannot prove to be an unacknowledged, torn last write makes [`CommitLog::open`]
//! fail with [`LogError::Corrupt`], naming the file and byte offset.
//!
//! # Files
//!
//! A directory holding:
//!
//! * segment files `{id:020}.log` (`00000000000000000001.log`, ...), ids
//!   consecutive from 1. Each starts with a 64-byte segment header (magic,
//!   format version, segment id, `prev_end`, `first_seq`, capacity, CRC-32C),
//!   followed by frames back to back from byte 64, then zeros to the end of the
//!   file. Byte layouts: `format.rs`.
//! * `COMMITTED`: 44 bytes, the position and sequence number of the end of the
//!   last acknowledged frame, with a CRC-32C. Rewritten in place (`pwrite`, no
//!   sync) after every successful append, so it survives a killed process (it
//!   is in the page cache) but not necessarily a power loss, and it is only
//!   ever behind the durable data (it is written after the data's sync).
//!   [`CommitLog::close`] syncs it.
//! * `LOCK`: locked (`flock`) by the open [`CommitLog`], keeping a second writer out.
//! * `next-segment`, at times: the next segment's file, zeros, prepared ahead
//!   (below). Not part of the log: recovery ignores it, and the writer removes
//!   it before preparing another.
//!
//! A frame is a 32-byte header (magic `MNFR`, body length, sequence number,
//! `first_offset`, a CRC-32C of the header, a CRC-32C of header and body), the
//! body, and zero padding to a multiple of 8 bytes. Sequence numbers count
//! frames from 1 across all segments; a segment header's `first_seq` is its
//! first frame's. A [`Position`] is `(segment id, byte offset in that segment)`.
//!
//! # Writing
//!
//! * A segment is created with its full length allocated, so a write inside it
//!   never fails for lack of space: `ENOSPC` can only come when a segment is
//!   created. Its header is written, the file `fsync`ed and the directory
//!   `fsync`ed before any frame is written to it.
//! * The first segment is allocated with `fallocate`. Once the last segment is
//!   half full, a thread writes the next one ahead as `next-segment`: zeros to
//!   its full length, `fsync`ed. The roll that finds it ready hard-links it under
//!   the new segment's name (a link, unlike `rename`, never replaces a file),
//!   removes the prepared name and goes on as for a created segment (header,
//!   `fsync`, directory `fsync`). A roll never waits for it: one not ready, or
//!   failed, and the roll creates the segment with `fallocate`. Written zeros
//!   make every later `fdatasync` in the segment a data write only, where in an
//!   `fallocate`d segment each also records on disk that the blocks it wrote are
//!   no longer unwritten. Killed between the link and the removal, the prepared
//!   name is a second name of the segment: the next preparation removes that
//!   name and writes a new file, never truncating the old one. The thread ends
//!   before the writer releases `LOCK`.
//! * An append writes the frame at the end of the last segment with one
//!   `pwrite`, then `fdatasync`s the file (data and the metadata needed to read
//!   it; the size never changes after creation), then publishes the new end to
//!   readers and rewrites `COMMITTED`. A frame is written only after the one
//!   before it is durable, so at any moment at most one frame is in flight.
//! * When a frame does not fit in the rest of the segment, the log rolls: a new
//!   segment is created with `prev_end` = the end of the last acknowledged frame
//!   in the old one. A frame larger than `segment_bytes` gets a segment sized
//!   for it.
//!
//! # Faults while writing
//!
//! No restart is needed after any of these; the failing append returns `Err`
//! and nothing of its frame is visible, then or after a restart.
//!
//! * The `pwrite` fails or is short: the frame's bytes are overwritten with zeros
//!   and synced (so a crash cannot resurrect a frame that reached the disk
//!   anyway); the end is unchanged and the next append writes at the same place.
//! * The `fdatasync` fails: the file's page cache is no longer trusted (after a
//!   failed `fsync` the kernel may have dropped the dirty pages or marked them
//!   clean, and a retried `fsync` can report success for data that never reached
//!   the disk: PostgreSQL's "fsyncgate"). The frame's header is zeroed (best
//!   effort, in the page cache: a process killed before the next step is done
//!   restarts to a torn tail there, not a frame), then the log rolls to a new
//!   segment whose `prev_end` excludes the frame, which makes the frame void
//!   whatever bytes of it reached the disk. A failed `pwrite` whose undoing
//!   fails is handled the same way.
//! * If that roll fails (`ENOSPC`, ...), every append fails, each retrying the
//!   roll first, until a roll succeeds: no frame is ever acknowledged after an
//!   unresolved failed sync in the same segment.
//! * Creating a segment fails (`ENOSPC` from `fallocate`, ...): the partial file
//!   is removed, the append fails with nothing written, later appends retry.
//!
//! # Recovery (`recover.rs`)
//!
//! The committed end `C` is what `COMMITTED` records; if the file is missing,
//! short or fails its CRC, `C` is unknown ("nothing known committed", the state
//! after a power loss) and every rule below that mentions `C` holds vacuously.
//! The rules, in order:
//!
//! 1. Segment ids must be 1..=n without a gap, else `Corrupt` (a segment is
//!    missing).
//! 2. Every segment header must be intact and name its own id, except a *torn
//!    creation*: the header of the last segment is damaged, the segment lies
//!    after `C` (`C.segment < id`) and holds nothing but zeros after its header
//!    (no frame was ever written to it). That file is removed (and the directory
//!    synced), reported in [`OpenReport::removed_segment`], and the segment
//!    before it is the last one.
//! 3. `C` must not name a segment that does not exist ("acknowledged data
//!    missing").
//! 4. Segment 1 has `prev_end` 0 and `first_seq` 1; every later segment's
//!    `first_seq` follows the previous segment's last frame.
//! 5. A segment that is not the last must hold valid frames (magic, both CRCs,
//!    zero padding, consecutive sequence numbers) from byte 64 up to exactly the
//!    next segment's `prev_end`; anything else is `Corrupt`. Bytes after
//!    `prev_end` are ignored: they can only be a frame whose write or sync failed.
//! 6. The last segment is read frame by frame until the first position `E` that
//!    does not hold a valid frame with the next sequence number (or the end of
//!    the file).
//! 7. If `C` is in a segment, a frame with `C`'s sequence number must end exactly
//!    at `C`; if `C` lies beyond the valid frames of its segment, acknowledged
//!    data is missing: `Corrupt`. (So a damaged frame at or before the committed
//!    end is never cut.)
//! 8. After `E` in the last segment: if a valid frame (any sequence number) lies
//!    at any 8-aligned position from `E` on, the bad bytes at `E` hide
//!    acknowledged data (a frame is written only after the previous one is
//!    durable): `Corrupt`. Positions inside a torn frame whose header is intact
//!    (the log wrote it, so its extent is known) are not searched: its body is
//!    opaque caller data.
//! 9. Otherwise, non-zero bytes from `E` on are a *torn tail*: the frame that was
//!    being written when the process or machine stopped, never acknowledged
//!    (rule 7 puts it after `C`). They are zeroed and synced (a file found shorter
//!    than its capacity is extended again) and reported in
//!    [`OpenReport::torn_tail`] with file, offset and length.
//!
//! What recovery cannot tell, and what it therefore does:
//!
//! * With `COMMITTED` lost or stale (power loss), damage confined to the
//!   acknowledged last frame of the log, with nothing valid after it, looks
//!   exactly like a torn write and is cut as one. Everywhere else a single
//!   damaged byte is detected and refused (see the flipped-byte test).
//! * A frame written whole but not acknowledged (the process stopped between
//!   its write and the end of its `append`) is a valid last frame and is kept:
//!   the caller never got an answer for it, so either outcome is allowed. A
//!   frame whose `append` returned `Err` is kept only if the process stops
//!   before a roll succeeds *and* zeroing its header failed too (or a power loss
//!   lost the zeroed page while the frame's own pages were on disk).
//! * Rule 8 searches the bytes of a torn frame whose header was lost for frames.
//!   A body that itself holds the bytes of a valid frame, at an 8-aligned
//!   position, would then make `open` refuse: a refusal, never a loss.
//!
//! `open` reads every frame of every segment, so its time grows with the size of
//! the log.
//!
//! # Prior art
//!
//! Kafka (`LogSegment.recover`) truncates a segment at the first invalid batch
//! past its recovery point, which can cut acknowledged data when the damage is
//! not at the tail. TigerBeetle's WAL recovery truncates a corrupt prepare only
//! when it is the newest op, its redundant header (written after the prepare)
//! does not vouch for it and there are no other faults; anything else is a fault
//! to repair. EventStoreDB keeps a writer checkpoint (`writer.chk`) flushed after
//! the data, treats data past it as unwritten and a checkpoint past the data as
//! corruption. This log follows the last two: `COMMITTED` plays the checkpoint,
//! a valid later frame plays the vouching header, and only the last frame may be
//! torn.

mod error;
pub mod faults;
pub mod format;
pub mod io;
mod reader;
mod recover;
mod writer;

pub mod bench;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

pub use bench::bench_appends;
pub use error::LogError;
pub use faults::{FaultyIo, When};
pub use io::{LogFile, LogIo, StdIo};
pub use reader::{Frame, Frames, LogReader};
pub use writer::CommitLog;

/// Options of a [`CommitLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Length of a new segment (a frame larger than that gets a segment sized
    /// for it). Default 64 MiB.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_bytes: 64 << 20 }
    }
}

/// A place in the log: a byte offset in a segment. Ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub pos: u64,
}

impl Position {
    /// Where the first frame of a log goes.
    pub const START: Position = Position { segment: 1, pos: format::SEGMENT_HEADER_LEN };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} byte {}", self.segment, self.pos)
    }
}

/// Where an acknowledged frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub segment: u64,
    /// Offset of the frame (its header) in the segment.
    pub frame_pos: u64,
    /// Offset of the body in the segment (`frame_pos + 32`).
    pub body_pos: u64,
    /// The new durable end.
    pub end: Position,
    /// The frame's sequence number.
    pub seq: u64,
}

/// The unacknowledged frame recovery cut from the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Byte offset in `file` where the torn bytes began.
    pub offset: u64,
    /// How many bytes were cut (zeroed), up to the last non-zero one.
    pub bytes: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut a torn write of {} bytes at byte {} of {}: a frame that was being written when mneme stopped, \
             never acknowledged",
            self.bytes,
            self.offset,
            self.file.display()
        )
    }
}

/// A segment file recovery removed because its creation was torn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedSegment {
    pub file: PathBuf,
    /// What was wrong with its header.
    pub what: String,
}

impl fmt::Display for RemovedSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {}: a segment whose creation was interrupted ({}), holding no frame",
            self.file.display(),
            self.what
        )
    }
}

/// What [`CommitLog::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub torn_tail: Option<TornTail>,
    pub removed_segment: Option<RemovedSegment>,
    /// Number of segments.
    pub segments: usize,
    /// The durable end.
    pub end: Position,
    /// Number of frames in the log.
    pub frames: u64,
    /// What `COMMITTED` recorded; `None` if it was missing or damaged.
    pub committed: Option<Position>,
}
