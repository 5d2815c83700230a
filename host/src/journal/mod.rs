//! The journal: where events become durable.
//!
//! The [`Journal`] trait is what the engine needs from storage; `sled_store` and
//! `fjall_store` are the embedded backends (same key layout, `keys.rs`; same record
//! formats, `codec.rs`). Invariants every backend keeps (checked for each backend
//! by the shared tests in `tests.rs`):
//!
//! * `write` is atomic and durable: all events and snapshots of a batch are stored,
//!   or none; when it returns `Ok` the bytes have been synced to stable storage.
//! * sequence numbers of a persistence id are gapless from 1 (the engine, as the
//!   single writer of an entity, assigns them; a backend refuses a batch that would
//!   leave a gap or overwrite an event);
//! * every event gets a global offset, strictly increasing in write order, which is
//!   the order of `events_by_tag`;
//! * every stored event carries a checksum that reads verify.

pub mod codec;
pub mod fjall_store;
mod keys;
pub mod log;
pub mod sled_store;
#[cfg(test)]
pub(crate) mod tests;

use thiserror::Error;

pub use fjall_store::FjallJournal;
pub use sled_store::SledJournal;

/// An event the engine wants stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub persistence_id: String,
    pub seq_nr: u64,
    pub timestamp_ms: u64,
    pub writer_id: String,
    pub manifest: String,
    pub tags: Vec<String>,
    pub payload: Vec<u8>,
}

/// An event as read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub persistence_id: String,
    pub seq_nr: u64,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub writer_id: String,
    pub manifest: String,
    pub tags: Vec<String>,
    pub payload: Vec<u8>,
}

/// An entity's state bytes at a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub persistence_id: String,
    pub seq_nr: u64,
    pub state_version: u32,
    pub timestamp_ms: u64,
    pub state: Vec<u8>,
}

/// One atomic, durable write: the events of many commands (of many entities) and
/// the snapshots taken at the end of them.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<NewEvent>,
    pub snapshots: Vec<Snapshot>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.snapshots.is_empty()
    }
    pub fn append(&mut self, other: WriteBatch) {
        self.events.extend(other.events);
        self.snapshots.extend(other.snapshots);
    }
}

/// A command stored to be delivered later (the `schedule` side effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub id: u64,
    pub due_ms: u64,
    pub entity_type: String,
    pub entity_id: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum JournalError {
    /// The batch breaks an invariant (gap or duplicate sequence number, bad name).
    #[error("{0}")]
    Invalid(String),
    /// Stored bytes do not match their checksum or format.
    #[error("journal corrupt: {0}")]
    Corrupt(String),
    /// The storage failed.
    #[error("storage error: {0}")]
    Storage(String),
}

pub type JournalResult<T> = Result<T, JournalError>;

/// Storage for events, snapshots and timers. Implementations are shared between
/// threads: the writer thread calls `write`, shards and the API read.
pub trait Journal: Send + Sync + 'static {
    /// Store the batch atomically and durably (see the module invariants).
    fn write(&self, batch: &WriteBatch) -> JournalResult<()>;
    /// Highest stored sequence number of `pid` (0 if none).
    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64>;
    /// Events of `pid` with `from <= seq_nr`, in order, at most `limit`.
    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>>;
    /// Events carrying `tag` with `offset >= from`, in offset order, at most `limit`.
    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>>;
    /// The latest snapshot of `pid`.
    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>>;
    /// Store a timer durably.
    fn put_timer(&self, timer: &Timer) -> JournalResult<()>;
    /// Remove a delivered timer (durably).
    fn remove_timer(&self, id: u64) -> JournalResult<()>;
    /// All stored timers, earliest first.
    fn timers(&self) -> JournalResult<Vec<Timer>>;
    /// A fresh timer id, unique for this journal.
    fn next_timer_id(&self) -> JournalResult<u64>;
}

/// The embedded journal backends. fjall is the default: measured 3-4x sled's
/// durable write rate (BENCHMARKS.md), and its sync is an `fdatasync` of its
/// write-ahead journal (see `fjall_store.rs`), at least as strong as what the sled
/// backend does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Fjall,
    Sled,
}

impl Backend {
    pub const NAMES: [&'static str; 2] = ["fjall", "sled"];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fjall => "fjall",
            Backend::Sled => "sled",
        }
    }

    pub fn parse(name: &str) -> Result<Backend, String> {
        match name {
            "fjall" => Ok(Backend::Fjall),
            "sled" => Ok(Backend::Sled),
            other => Err(format!("unknown journal backend `{other}`: use fjall or sled")),
        }
    }

    /// Where this backend keeps its files inside a data directory.
    pub fn dir(self, data: &std::path::Path) -> std::path::PathBuf {
        data.join(format!("journal-{}", self.name()))
    }
}

/// Open the journal of a data directory. Refuses a backend other than the one that
/// wrote the directory, so switching `--journal` never shows an empty journal.
pub fn open(data: &std::path::Path, backend: Backend) -> JournalResult<std::sync::Arc<dyn Journal>> {
    for other in [Backend::Fjall, Backend::Sled] {
        if other != backend && other.dir(data).exists() && !backend.dir(data).exists() {
            return Err(JournalError::Invalid(format!(
                "{} holds a {} journal: start with `--journal {}`",
                data.display(),
                other.name(),
                other.name()
            )));
        }
    }
    Ok(match backend {
        Backend::Fjall => std::sync::Arc::new(FjallJournal::open(&backend.dir(data))?),
        Backend::Sled => std::sync::Arc::new(SledJournal::open(&backend.dir(data))?),
    })
}
