//! The I/O layer under the commit log: every file operation the log makes goes
//! through [`LogIo`] and [`LogFile`], so a test can put [`super::FaultyIo`]
//! underneath and make any of them fail the way a real disk does.
//!
//! [`StdIo`] is the real implementation: positioned reads and writes
//! (`pread`/`pwrite`) on std files, `fdatasync` for [`LogFile::sync_data`],
//! `fsync` for [`LogFile::sync_all`], `fallocate` to preallocate segments, zeros
//! written ahead for [`LogIo::prepare_segment`] and an `fsync` of the directory's
//! own descriptor for [`LogIo::sync_dir`].

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An open file of the log (a segment or `COMMITTED`). Shared between the writer
/// and readers, so every method takes `&self` and uses positioned I/O.
pub trait LogFile: Send + Sync {
    /// Fill `buf` from `pos`; `UnexpectedEof` if the file ends first.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write all of `buf` at `pos`, or fail. After a failure any prefix of `buf`
    /// may have been written.
    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the written data, and the metadata needed to read it back,
    /// are on stable storage.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and all metadata.
    fn sync_all(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Make the file at least `len` bytes long with every block allocated, so a
    /// later write inside it cannot fail for lack of space.
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// The directory-level operations of the log.
pub trait LogIo: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Take an exclusive lock on `path` (created if missing) for as long as the
    /// returned value lives; `WouldBlock` if someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Create a new segment file (it must not exist) and preallocate `len` bytes
    /// ([`LogFile::allocate`]). On error the file may exist, empty or short.
    fn create_segment(&self, path: &Path, len: u64) -> io::Result<Arc<dyn LogFile>>;
    /// Write a file of `len` zero bytes at `prepared` and `fsync` it: the next
    /// segment, made ahead of time (see the `log` module docs, "Writing"). A file
    /// already there is removed first, never truncated: a crash between the two
    /// steps of [`LogIo::link_segment`] leaves it a second name of a segment.
    /// On error the file is removed (if that fails too, it may remain, short).
    fn prepare_segment(&self, prepared: &Path, len: u64) -> io::Result<()>;
    /// Make the prepared file the segment at `path` (which must not exist): link
    /// it there, remove the prepared name, and open the segment.
    fn link_segment(&self, prepared: &Path, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Open an existing segment file for reading and writing.
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Open `COMMITTED` for rewriting in place, creating it if missing.
    fn open_committed(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// The whole content of a small file; `None` if it does not exist.
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries (created and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// [`LogIo`] on the real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl StdIo {
    pub fn new() -> Arc<StdIo> {
        Arc::new(StdIo)
    }
}

struct StdFile(File);

impl LogFile for StdFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        preallocate(&self.0, len)
    }
}

/// Allocate every block of `[0, len)` and extend the file to `len` if shorter.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let len_off = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: fallocate on a descriptor we own; mode 0 allocates and extends.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // A file system without fallocate: allocate by writing zeros.
            Some(libc::EOPNOTSUPP) => return write_zeros_to(file, len),
            _ => return Err(e),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    write_zeros_to(file, len)
}

/// Allocate by writing zeros from the current end to `len` (only ever past the
/// end, so no data is overwritten).
fn write_zeros_to(file: &File, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut pos = file.metadata()?.len();
    while pos < len {
        let n = (len - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

impl LogIo for StdIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn create_segment(&self, path: &Path, len: u64) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        preallocate(&file, len)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn prepare_segment(&self, prepared: &Path, len: u64) -> io::Result<()> {
        match std::fs::remove_file(prepared) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(prepared)?;
        let written = write_zeros_to(&file, len).and_then(|()| file.sync_all());
        if written.is_err() {
            // Short of space, a partial file would only hold on to what is left.
            let _ = std::fs::remove_file(prepared);
        }
        written
    }

    fn link_segment(&self, prepared: &Path, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        // A hard link, unlike `rename`, fails if `path` exists.
        std::fs::hard_link(prepared, path)?;
        std::fs::remove_file(prepared)?;
        self.open_segment(path)
    }

    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(StdFile(OpenOptions::new().read(true).write(true).open(path)?)))
    }

    fn open_committed(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A read-ahead buffer over one file: recovery and [`super::LogReader::frames_from`]
/// walk frames front to back, and one large read serves many small frames.
pub(super) struct Window {
    buf: Vec<u8>,
    start: u64,
}

/// Bytes read ahead at a time.
const READ_AHEAD: u64 = 1 << 20;

impl Window {
    pub fn new() -> Window {
        Window { buf: Vec::new(), start: 0 }
    }

    /// Forget what was read (the next `get` reads from the file).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Bytes `[pos, pos + n)` of `file`, which must lie below `limit`; reads
    /// ahead up to `limit`.
    pub fn get(&mut self, file: &dyn LogFile, pos: u64, n: u64, limit: u64) -> io::Result<&[u8]> {
        debug_assert!(pos + n <= limit);
        let have = self.start..self.start + self.buf.len() as u64;
        if !(have.contains(&pos) && pos + n <= have.end) {
            let len = n.max(READ_AHEAD.min(limit - pos));
            self.buf.resize(len as usize, 0);
            if let Err(e) = file.read_at(pos, &mut self.buf) {
                self.buf.clear();
                return Err(e);
            }
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + n as usize])
    }
}
