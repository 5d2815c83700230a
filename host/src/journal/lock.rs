//! One process per data directory: `DATA/LOCK`, an exclusive `flock` taken before
//! anything else in the directory is opened or created, and held until the process
//! exits (the kernel releases it even after kill -9).
//!
//! The file holds the pid of the holder, so the refusal can name it. It is never
//! removed: a stale file without a lock on it means nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::{JournalError, JournalResult};

/// Holds `DATA/LOCK` while alive.
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Create `data` if needed and lock it, or fail naming the process that holds it.
    pub fn acquire(data: &Path) -> JournalResult<DataLock> {
        let io = |what: &str, e: std::io::Error| JournalError::Storage(format!("{what} {}: {e}", data.display()));
        std::fs::create_dir_all(data).map_err(|e| io("creating data directory", e))?;
        let path = data.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening the lock file of", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(JournalError::Locked(format!(
                    "data directory {} is in use by another mneme process{holder}: only one process may use a data \
                     directory at a time (it holds {})",
                    data.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        // Best effort: the pid only makes the refusal above more helpful.
        let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
        Ok(DataLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataLock::acquire(dir.path()).unwrap();
        let err = DataLock::acquire(dir.path()).err().expect("second lock must fail").to_string();
        assert!(err.contains("in use by another mneme process"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DataLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
