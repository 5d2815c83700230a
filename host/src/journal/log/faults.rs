//! [`FaultyIo`]: the real file system ([`StdIo`]) with errors injected on a
//! schedule, to test what the log does when a disk fails. Faults hit segment
//! files only (`COMMITTED` and the directory operations pass through), and each
//! is the real OS error (`EIO`, `ENOSPC`) a failing disk or a full file system
//! returns.

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::io::{LogFile, LogIo, StdIo};

/// When an armed fault fires, counting the calls of its kind from the moment it
/// was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The n-th call (1 is the next one), once.
    Nth(u64),
    /// Every call, until cleared.
    Every,
}

#[derive(Debug, Default)]
struct Arm {
    when: Option<When>,
    seen: u64,
}

impl Arm {
    fn set(&mut self, when: When) {
        *self = Arm { when: Some(when), seen: 0 };
    }

    fn fire(&mut self) -> bool {
        match self.when {
            None => false,
            Some(When::Every) => true,
            Some(When::Nth(n)) => {
                self.seen += 1;
                if self.seen == n {
                    self.when = None;
                }
                self.seen == n
            }
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    write: Arm,
    short: Arm,
    short_keep: usize,
    sync: Arm,
    no_space: Arm,
    injected: u64,
}

/// [`LogIo`] over real files that fails on command.
pub struct FaultyIo {
    inner: StdIo,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyIo {
    pub fn new() -> Arc<FaultyIo> {
        Arc::new(FaultyIo { inner: StdIo, faults: Arc::default() })
    }

    /// Writes to segment files fail with `EIO`, writing nothing.
    pub fn fail_writes(&self, when: When) {
        self.faults.lock().unwrap().write.set(when);
    }

    /// Writes to segment files write their first `keep` bytes (fewer if the
    /// write is not longer), then fail with `EIO`.
    pub fn short_writes(&self, when: When, keep: usize) {
        let mut f = self.faults.lock().unwrap();
        f.short.set(when);
        f.short_keep = keep;
    }

    /// `fdatasync` of segment files fails with `EIO`, after the data was in fact
    /// synced: the worst case for the log, whose failed frame is then on disk.
    pub fn fail_syncs(&self, when: When) {
        self.faults.lock().unwrap().sync.set(when);
    }

    /// Creating (or extending) a segment file fails with `ENOSPC`; a segment
    /// being created is left behind empty, as a failed `fallocate` leaves it.
    pub fn no_space(&self, when: When) {
        self.faults.lock().unwrap().no_space.set(when);
    }

    /// Disarm every fault.
    pub fn clear(&self) {
        let mut f = self.faults.lock().unwrap();
        let injected = f.injected;
        *f = Faults { injected, ..Faults::default() };
    }

    /// How many faults fired so far.
    pub fn injected(&self) -> u64 {
        self.faults.lock().unwrap().injected
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Faults {
    fn fired(&mut self, fired: bool) -> bool {
        self.injected += fired as u64;
        fired
    }
}

struct FaultyFile {
    inner: Arc<dyn LogFile>,
    faults: Arc<Mutex<Faults>>,
}

impl LogFile for FaultyFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(pos, buf)
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let (fail, short, keep) = {
            let mut f = self.faults.lock().unwrap();
            // Both schedules count every write.
            let (w, s) = (f.write.fire(), f.short.fire());
            let fail = f.fired(w);
            let short = !fail && f.fired(s);
            (fail, short, f.short_keep)
        };
        if fail {
            return Err(eio());
        }
        if short {
            let keep = keep.min(buf.len().saturating_sub(1));
            self.inner.write_at(pos, &buf[..keep])?;
            return Err(eio());
        }
        self.inner.write_at(pos, buf)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()?;
        let mut f = self.faults.lock().unwrap();
        let fire = f.sync.fire();
        if f.fired(fire) {
            return Err(eio());
        }
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut f = self.faults.lock().unwrap();
        let fire = f.no_space.fire();
        if f.fired(fire) {
            return Err(enospc());
        }
        drop(f);
        self.inner.allocate(len)
    }
}

impl FaultyIo {
    fn wrap(&self, file: Arc<dyn LogFile>) -> Arc<dyn LogFile> {
        Arc::new(FaultyFile { inner: file, faults: self.faults.clone() })
    }
}

impl LogIo for FaultyIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn create_segment(&self, path: &Path, len: u64) -> io::Result<Arc<dyn LogFile>> {
        let fire = {
            let mut f = self.faults.lock().unwrap();
            let fire = f.no_space.fire();
            f.fired(fire)
        };
        if fire {
            self.inner.create_segment(path, 0)?;
            return Err(enospc());
        }
        Ok(self.wrap(self.inner.create_segment(path, len)?))
    }

    /// Never prepares: the fault schedules count segment creations
    /// (`create_segment`), and a segment prepared ahead would move a fault to
    /// another roll. The writer then creates every segment as a roll needs it.
    fn prepare_segment(&self, _prepared: &Path, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn link_segment(&self, prepared: &Path, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(self.wrap(self.inner.link_segment(prepared, path)?))
    }

    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(self.wrap(self.inner.open_segment(path)?))
    }

    fn open_committed(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        self.inner.open_committed(path)
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.inner.read_file(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}
