//! What can go wrong in the commit log, worded for the operator who reads it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::Position;

#[derive(Debug)]
pub enum LogError {
    /// Stored bytes contradict the format or each other in a way no crash of
    /// mneme produces (see the recovery rules in the module docs): acknowledged
    /// data is damaged or missing. Never repaired automatically.
    Corrupt {
        file: PathBuf,
        /// Byte offset in `file` where the damage was found.
        offset: u64,
        what: String,
    },
    /// The operating system refused an operation.
    Io {
        /// What the log was doing: "write", "fdatasync", "create", ...
        op: &'static str,
        file: PathBuf,
        source: io::Error,
    },
    /// Another `CommitLog` holds the directory's lock.
    Locked { file: PathBuf },
    /// A frame body larger than the format allows ([`super::format::MAX_BODY`]).
    TooLarge { len: usize },
    /// A read of bytes at or beyond the durable end of a segment, or of a segment
    /// that does not exist.
    OutOfRange { segment: u64, pos: u64, len: u64, end: Position },
}

impl LogError {
    pub(super) fn io(op: &'static str, file: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io { op, file: file.into(), source }
    }

    pub(super) fn corrupt(file: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> LogError {
        LogError::Corrupt { file: file.into(), offset, what: what.into() }
    }

    /// The OS error, for an `Io` error.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Corrupt { file, offset, what } => write!(
                f,
                "commit log corrupt: {} at byte {offset}: {what}. Acknowledged data is damaged or missing \
                 and is never cut away automatically: restore the data directory from a backup, or run \
                 `mneme journal verify DATA` for a full report",
                file.display()
            ),
            LogError::Io { op, file, source } => {
                write!(f, "commit log: {op} on {} failed: {source}", file.display())
            }
            LogError::Locked { file } => write!(
                f,
                "commit log {} is locked by another process (could not lock {})",
                file.parent().unwrap_or(file).display(),
                file.display()
            ),
            LogError::TooLarge { len } => write!(
                f,
                "commit log: a frame body of {len} bytes is larger than the maximum of {} bytes",
                super::format::MAX_BODY
            ),
            LogError::OutOfRange { segment, pos, len, end } => write!(
                f,
                "commit log: bytes {pos}..{} of segment {segment} are not below the durable end ({end})",
                pos + len
            ),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
