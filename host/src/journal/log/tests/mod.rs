//! Tests of the commit log on real files in temporary directories. Each file
//! covers one behaviour: `basics` (round trips, rolls, concurrent reads),
//! `torn` (a torn last write at every byte, and what is corruption instead),
//! `flips` (every single flipped byte of a small log), `faults` (failing writes,
//! syncs and segment creation while appending), `random` (all of it mixed,
//! checked against a model).

mod basics;
mod faults;
mod flips;
mod random;
mod torn;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

pub(super) fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

pub(super) fn open(dir: &Path, segment_bytes: u64) -> Result<(CommitLog, OpenReport), LogError> {
    CommitLog::open(dir, opts(segment_bytes), StdIo::new())
}

pub(super) fn open_with(
    dir: &Path,
    segment_bytes: u64,
    io: &Arc<FaultyIo>,
) -> Result<(CommitLog, OpenReport), LogError> {
    CommitLog::open(dir, opts(segment_bytes), io.clone())
}

/// A body of `len` bytes for frame `i`: no zero byte, different per frame.
pub(super) fn body(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i as usize * 31 + j * 7) % 255) as u8 + 1).collect()
}

/// Every frame of the log as `(first_offset, body)`, failing on any error.
pub(super) fn frames(reader: &LogReader) -> Vec<(u64, Vec<u8>)> {
    reader.frames_from(Position::START).map(|f| f.map(|f| (f.first_offset, f.body)).unwrap()).collect()
}

pub(super) fn segment_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

/// Copy every file of `from` (the log's files; not `LOCK`) into `to`.
pub(super) fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub(super) fn is_corrupt_in(r: &Result<(CommitLog, OpenReport), LogError>, file: &Path) -> bool {
    matches!(r, Err(LogError::Corrupt { file: f, .. }) if f == file)
}

/// The first `n` bytes of a file.
pub(super) fn truncate(path: &Path, n: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(n).unwrap();
}

/// Overwrite bytes of a file at `pos`.
pub(super) fn patch(path: &Path, pos: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, pos).unwrap();
}

/// Appends checked against what was acknowledged.
pub(super) struct Run {
    pub dir: tempfile::TempDir,
    pub io: Arc<FaultyIo>,
    segment_bytes: u64,
    log: Option<CommitLog>,
    pub ok: Vec<(u64, Vec<u8>)>,
    pub failed: Vec<Vec<u8>>,
    next: u64,
}

impl Run {
    pub fn new(segment_bytes: u64) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        let (log, _) = open_with(dir.path(), segment_bytes, &io).unwrap();
        Run { dir, io, segment_bytes, log: Some(log), ok: Vec::new(), failed: Vec::new(), next: 0 }
    }

    pub fn log(&mut self) -> &mut CommitLog {
        self.log.as_mut().unwrap()
    }

    /// Append the next frame (`len` bytes, at least 8); check an `Ok` one reads back at once.
    pub fn append(&mut self, len: usize) -> Result<Appended, LogError> {
        let i = self.next;
        self.next += 1;
        // A body unique in the log: it starts with its number.
        let mut b = body(i, len.max(8));
        b[..8].copy_from_slice(format!("#{i:07}").as_bytes());
        let r = self.log().append(i, &b);
        match &r {
            Ok(a) => {
                let reader = self.log().reader();
                assert_eq!(*reader.read(a.segment, a.body_pos, b.len() as u32).unwrap(), b[..]);
                assert_eq!(reader.end(), a.end);
                self.ok.push((i, b));
            }
            Err(_) => self.failed.push(b),
        }
        r
    }

    /// The log as readers see it now holds exactly the acknowledged frames.
    pub fn check(&mut self) {
        let reader = self.log().reader();
        assert_eq!(frames(&reader), self.ok);
    }

    /// Kill (drop without close) and reopen on the real file system: exactly
    /// the acknowledged frames are there, none of the failed ones.
    pub fn restart(&mut self) -> OpenReport {
        self.log = None;
        self.io.clear();
        let (log, report) = open_with(self.dir.path(), self.segment_bytes, &self.io).unwrap();
        self.log = Some(log);
        assert_eq!(report.frames, self.ok.len() as u64);
        self.check();
        report
    }

    /// Whether `needle` occurs in any segment file.
    pub fn on_disk(&self, needle: &[u8]) -> bool {
        std::fs::read_dir(self.dir.path()).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }
}
