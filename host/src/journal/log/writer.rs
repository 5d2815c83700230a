//! [`CommitLog`]: the single writer. Appends frames, makes each durable before
//! acknowledging it, rolls segments, and handles write and sync failures as the
//! module docs of `log` ("Faults while writing") state.

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::thread::JoinHandle;

use super::format::{
    encode_frame, frame_len, Committed, SegmentHeader, FRAME_ALIGN, FRAME_HEADER_LEN, MAX_BODY, SEGMENT_HEADER_LEN,
};
use super::io::{LogFile, LogIo};
use super::reader::{LogReader, Segment, Shared};
use super::recover::{recover, segment_path, COMMITTED_FILE, LOCK_FILE};
use super::{Appended, LogError, LogOptions, OpenReport, Position};

/// The writer of a commit log. There is one per directory (a lock file keeps a
/// second one, in this process or another, out).
pub struct CommitLog {
    dir: PathBuf,
    opts: LogOptions,
    io: Arc<dyn LogIo>,
    shared: Arc<Shared>,
    /// The last segment, where frames are appended.
    active: Arc<Segment>,
    /// `active`'s length as created.
    capacity: u64,
    /// End of the acknowledged frames in `active` (equal to `active.end`).
    pos: u64,
    next_seq: u64,
    /// A sync failed in `active` (or a failed write could not be undone): no
    /// frame may be acknowledged in it any more, the next append rolls first.
    must_roll: bool,
    /// A segment file left by a failed roll that could not be removed then; it
    /// holds no frame and is removed before the next roll.
    leftover: Option<PathBuf>,
    committed: Arc<dyn LogFile>,
    committed_path: PathBuf,
    buf: Vec<u8>,
    /// The next segment's file, being written ahead (from when `active` is half
    /// full) or ready.
    prepared: Option<Prepared>,
    _lock: Box<dyn Any + Send + Sync>,
}

/// Name of the file the next segment is prepared in (see the `log` module docs).
pub(super) const PREPARED_FILE: &str = "next-segment";

/// The next segment's file, written full of zeros and synced by a thread of its
/// own, so that a roll does not wait for it and every later `fdatasync` in the
/// segment writes data only: in a segment merely `fallocate`d, each sync also
/// records that the blocks it wrote are no longer unwritten (BENCHMARKS.md,
/// "Segments written ahead").
struct Prepared {
    /// The thread's result, once it is done. The file is
    /// `segment_capacity(opts, 0)` bytes long: a segment of the usual size.
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for CommitLog {
    /// The thread preparing a segment ends before the lock is released: the
    /// next writer of this directory must not find it still writing its file.
    fn drop(&mut self) {
        if let Some(thread) = self.prepared.as_mut().and_then(|p| p.thread.take()) {
            let _ = thread.join();
        }
    }
}

impl CommitLog {
    /// Open (or create) the log in `dir`, recovering it as the module docs
    /// describe. The report says what recovery found and did; the caller logs a
    /// torn tail or a removed segment.
    pub fn open(dir: &Path, opts: LogOptions, io: Arc<dyn LogIo>) -> Result<(CommitLog, OpenReport), LogError> {
        io.create_dir_all(dir).map_err(|e| LogError::io("create directory", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = io.lock(&lock_path).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => LogError::Locked { file: lock_path.clone() },
            _ => LogError::io("lock", &lock_path, e),
        })?;
        let rec = recover(dir, &*io)?;
        let mut capacity = rec.segments.last().map_or(0, |s| s.header.capacity);
        let mut segments: Vec<Arc<Segment>> = rec
            .segments
            .into_iter()
            .map(|s| {
                Arc::new(Segment {
                    id: s.header.id,
                    path: s.path,
                    file: s.file,
                    first_seq: s.header.first_seq,
                    end: AtomicU64::new(s.end),
                })
            })
            .collect();
        if segments.is_empty() {
            let header = SegmentHeader { id: 1, prev_end: 0, first_seq: 1, capacity: segment_capacity(&opts, 0) };
            let file = create_segment(&*io, dir, &header, None).map_err(|(e, _)| e)?;
            capacity = header.capacity;
            segments.push(Arc::new(Segment {
                id: 1,
                path: segment_path(dir, 1),
                file,
                first_seq: 1,
                end: AtomicU64::new(SEGMENT_HEADER_LEN),
            }));
        }
        let committed_path = dir.join(COMMITTED_FILE);
        let committed = io.open_committed(&committed_path).map_err(|e| LogError::io("open", &committed_path, e))?;
        let active = segments.last().unwrap().clone();
        let pos = active.end.load(Ordering::Relaxed);
        let report = OpenReport {
            torn_tail: rec.torn_tail,
            removed_segment: rec.removed_segment,
            segments: segments.len(),
            end: Position { segment: active.id, pos },
            frames: rec.next_seq - 1,
            committed: rec.committed.map(|c| Position { segment: c.segment, pos: c.pos }),
        };
        let log = CommitLog {
            dir: dir.to_path_buf(),
            opts,
            io,
            shared: Arc::new(Shared { segments: RwLock::new(segments) }),
            active,
            capacity,
            pos,
            next_seq: rec.next_seq,
            must_roll: false,
            leftover: None,
            committed,
            committed_path,
            buf: Vec::new(),
            prepared: None,
            _lock: lock,
        };
        Ok((log, report))
    }

    /// Write one frame (one group-commit batch) and `fdatasync` it.
    ///
    /// `Ok`: the frame is durable and readers see it. `Err`: nothing of the
    /// frame is visible, now or after a restart, and the log stays usable (a
    /// later append may succeed; after a failed sync it first rolls to a new
    /// segment, and fails again for as long as that is impossible).
    pub fn append(&mut self, first_offset: u64, body: &[u8]) -> Result<Appended, LogError> {
        if body.len() > MAX_BODY {
            return Err(LogError::TooLarge { len: body.len() });
        }
        let len = frame_len(body.len());
        if self.must_roll || self.pos + len > self.capacity {
            self.roll(len)?;
        }
        self.buf.clear();
        encode_frame(&mut self.buf, self.next_seq, first_offset, body);
        let seg = self.active.clone();
        let pos = self.pos;
        if let Err(e) = seg.file.write_at(pos, &self.buf) {
            self.undo_write(pos, len);
            return Err(LogError::io("write", &seg.path, e));
        }
        if let Err(e) = seg.file.sync_data() {
            self.abandon_segment(pos, len);
            return Err(LogError::io("fdatasync", &seg.path, e));
        }
        let end = pos + len;
        let seq = self.next_seq;
        self.pos = end;
        self.next_seq += 1;
        seg.end.store(end, Ordering::Release);
        // Not synced: it survives the process, not necessarily the machine (see
        // the module docs). The frame is durable either way, so a failure here
        // only costs recovery some knowledge.
        let record = Committed { segment: seg.id, pos: end, seq }.encode();
        if let Err(e) = self.committed.write_at(0, &record) {
            tracing::warn!("commit log: updating {} failed: {e}", self.committed_path.display());
        }
        if self.prepared.is_none() && end > self.capacity / 2 {
            self.prepare_next();
        }
        Ok(Appended {
            segment: seg.id,
            frame_pos: pos,
            body_pos: pos + FRAME_HEADER_LEN,
            end: Position { segment: seg.id, pos: end },
            seq,
        })
    }

    /// The durable end: where the last acknowledged frame ends (the start of
    /// the last segment if it has no frame yet).
    pub fn end(&self) -> Position {
        Position { segment: self.active.id, pos: self.pos }
    }

    /// A reader sharing this log's segments.
    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Clean shutdown: make `COMMITTED` durable too, so the next open knows the
    /// committed end even after a power loss.
    pub fn close(self) -> Result<(), LogError> {
        self.committed.sync_data().map_err(|e| LogError::io("fdatasync", &self.committed_path, e))?;
        self.io.sync_dir(&self.dir).map_err(|e| LogError::io("sync directory", &self.dir, e))
    }

    /// A write of the frame at `pos` failed, after writing any part of it: put
    /// zeros back and make them durable, so the frame cannot be found later. If
    /// that fails too, the segment is given up as after a failed sync.
    fn undo_write(&mut self, pos: u64, len: u64) {
        let file = &self.active.file;
        if write_zeros(&**file, pos, len).and_then(|()| file.sync_data()).is_err() {
            self.abandon_segment(pos, len);
        }
    }

    /// The frame at `pos` may be on disk although its append fails (its sync
    /// failed, or it could not be undone), and this file's page cache is not to
    /// be trusted any more. Zero the frame's header (best effort: if the process
    /// is killed before the roll below is durable, a restart then finds a torn
    /// tail there, not a frame), then roll to a new segment whose `prev_end` is
    /// `pos`, which makes the frame void for good whatever reached the disk.
    /// Until a roll succeeds, appends fail, each retrying it.
    fn abandon_segment(&mut self, pos: u64, len: u64) {
        self.must_roll = true;
        let file = &self.active.file;
        if file.write_at(pos, &[0u8; FRAME_HEADER_LEN as usize]).is_ok() {
            let _ = file.sync_data();
        }
        let _ = self.roll(len);
    }

    /// Remove the segment file a failed roll left, if any.
    fn remove_leftover(&mut self) -> Result<(), LogError> {
        if let Some(path) = self.leftover.take() {
            match self.io.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.leftover = Some(path.clone());
                    return Err(LogError::io("remove", path, e));
                }
            }
        }
        Ok(())
    }

    /// Start writing the next segment's file ahead, on a thread of its own.
    fn prepare_next(&mut self) {
        let (tx, done) = mpsc::channel();
        let (io, path, len) = (self.io.clone(), self.dir.join(PREPARED_FILE), segment_capacity(&self.opts, 0));
        let thread = std::thread::Builder::new()
            .name("mneme-log-prepare".into())
            .spawn(move || {
                let _ = tx.send(io.prepare_segment(&path, len));
            })
            // Without the thread `done` reports a failure, and the roll creates
            // the segment itself.
            .ok();
        self.prepared = Some(Prepared { done, thread });
    }

    /// Wait until the segment being prepared ahead, if any, is ready (or
    /// failed); `false` if none was being prepared. For tests and the benchmark:
    /// the writer itself never waits for it.
    pub fn wait_prepared(&mut self) -> bool {
        match self.prepared.as_mut().and_then(|p| p.thread.take()) {
            Some(thread) => thread.join().is_ok(),
            None => false,
        }
    }

    /// The prepared file, if it is ready for a segment of `capacity` bytes.
    /// One still being written, or ready but of another size (a segment sized
    /// for an oversized frame), is kept for a later roll (the roll does not
    /// wait); one that failed is forgotten (the next segment prepares again).
    fn take_prepared(&mut self, capacity: u64) -> Option<PathBuf> {
        if capacity != segment_capacity(&self.opts, 0) {
            return None;
        }
        let ready = match self.prepared.as_ref()?.done.try_recv() {
            Err(mpsc::TryRecvError::Empty) => return None,
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!("commit log: preparing the next segment failed: {e}");
                false
            }
            Err(mpsc::TryRecvError::Disconnected) => false,
        };
        self.prepared = None;
        ready.then(|| self.dir.join(PREPARED_FILE))
    }

    /// Make a new segment, with room for a frame of `need` bytes, the active one.
    fn roll(&mut self, need: u64) -> Result<(), LogError> {
        let id = self.active.id + 1;
        let header = SegmentHeader {
            id,
            prev_end: self.pos,
            first_seq: self.next_seq,
            capacity: segment_capacity(&self.opts, need),
        };
        self.remove_leftover()?;
        let prepared = self.take_prepared(header.capacity);
        let file = match prepared.map(|p| create_segment(&*self.io, &self.dir, &header, Some(&p))) {
            Some(Ok(file)) => Ok(file),
            Some(Err((e, leftover))) => {
                tracing::debug!("commit log: the prepared segment could not be used ({e}); creating one");
                self.leftover = leftover;
                self.remove_leftover()?;
                create_segment(&*self.io, &self.dir, &header, None)
            }
            None => create_segment(&*self.io, &self.dir, &header, None),
        }
        .map_err(|(e, leftover)| {
            self.leftover = leftover;
            e
        })?;
        let seg = Arc::new(Segment {
            id,
            path: segment_path(&self.dir, id),
            file,
            first_seq: header.first_seq,
            end: AtomicU64::new(SEGMENT_HEADER_LEN),
        });
        self.shared.segments.write().unwrap().push(seg.clone());
        self.active = seg;
        self.capacity = header.capacity;
        self.pos = SEGMENT_HEADER_LEN;
        self.must_roll = false;
        Ok(())
    }
}

/// Length of a new segment that must hold a frame of `need` bytes.
fn segment_capacity(opts: &LogOptions, need: u64) -> u64 {
    opts.segment_bytes.max(SEGMENT_HEADER_LEN + need).next_multiple_of(FRAME_ALIGN)
}

/// Create a segment durably: the file, preallocated (or the file prepared ahead
/// at `prepared`, zeros and synced, linked as the segment), its header, `fsync`,
/// then an `fsync` of the directory. Only then may a frame in it be
/// acknowledged. On failure the segment's name is removed again (it holds no
/// frame); if even that fails its path comes back with the error.
fn create_segment(
    io: &dyn LogIo,
    dir: &Path,
    header: &SegmentHeader,
    prepared: Option<&Path>,
) -> Result<Arc<dyn LogFile>, (LogError, Option<PathBuf>)> {
    let path = segment_path(dir, header.id);
    let fail = |op: &'static str, e: io::Error| {
        let leftover = match io.remove(&path) {
            Ok(()) => {
                let _ = io.sync_dir(dir);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => Some(path.clone()),
        };
        (LogError::io(op, &path, e), leftover)
    };
    let (op, made) = match prepared {
        Some(prepared) => ("link", io.link_segment(prepared, &path)),
        None => ("create", io.create_segment(&path, header.capacity)),
    };
    let file = match made {
        Ok(file) => file,
        // Never remove a file this call did not make.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err((LogError::io(op, &path, e), None)),
        Err(e) => return Err(fail(op, e)),
    };
    file.write_at(0, &header.encode()).map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("fsync", e))?;
    io.sync_dir(dir).map_err(|e| fail("sync directory", e))?;
    Ok(file)
}

fn write_zeros(file: &dyn LogFile, pos: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = pos;
    while at < pos + len {
        let n = (pos + len - at).min(zeros.len() as u64);
        file.write_at(at, &zeros[..n as usize])?;
        at += n;
    }
    Ok(())
}
