//! The journal: where events become durable.
//!
//! The [`Journal`] trait is what the engine needs from storage. The backends:
//!
//! * `log_journal` (the default): mneme's own checksummed commit log (`log/`) is
//!   the source of truth; a fjall index (`index.rs`) is derived from it. Frame
//!   bodies: `body.rs`; records: `codec.rs`.
//! * `sled_store`: everything in sled (key layout `keys.rs`, values `codec.rs`).
//! * `postgres`: everything in a PostgreSQL database (`--postgres-url`), one
//!   transaction per write; the data directory keeps only the components.
//!
//! A data directory is locked by one process (`lock.rs`) before anything in it is
//! opened, and keeps the backend it was created with. Invariants every backend
//! keeps (checked for each backend by the shared tests in `tests.rs`):
//!
//! * `write` is atomic and durable: all events and snapshots of a batch are stored,
//!   or none; when it returns `Ok` the bytes have been synced to stable storage.
//! * sequence numbers of a persistence id are gapless from 1 (the engine, as the
//!   single writer of an entity, assigns them; a backend refuses a batch that would
//!   leave a gap or overwrite an event);
//! * every event gets a global offset, strictly increasing in write order, which is
//!   the order of `events_by_tag`;
//! * every stored event carries a checksum that reads verify;
//! * the outbox's part of a batch (`outbox.rs`: commands to deliver, deliveries
//!   done, idempotency keys applied, topic messages) is stored in the same atomic
//!   write as its events; each topic's positions are gapless from 1.

mod body;
pub mod codec;
mod index;
mod location;
mod keys;
pub mod lock;
pub mod log;
pub mod log_journal;
pub mod outbox;
mod outbox_index;
pub mod postgres;
pub mod read_ahead;
pub mod sled_store;
pub mod verify;
pub mod views;
#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use lock::DataLock;
pub use log_journal::LogJournal;
pub use outbox::{AppliedKey, OutboxBatch, OutboxEntry, StoredTopicMessage, TopicMessage};
pub use postgres::PostgresJournal;
pub use sled_store::SledJournal;
pub use views::{ProjectionBatch, ProjectionOffset, ViewUpdate};

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

/// What recovery needs of a stored event, borrowed from the journal's read buffer:
/// replaying an entity allocates nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub seq_nr: u64,
    pub manifest: &'a str,
    pub payload: &'a [u8],
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

/// One atomic, durable write: the events of many commands (of many entities),
/// the snapshots taken at the end of them, and what those commands left for the
/// outbox (commands to send, deliveries done, keys applied, topic messages).
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<NewEvent>,
    pub snapshots: Vec<Snapshot>,
    pub outbox: OutboxBatch,
    /// With several hosts on one database: the leases the batch was made under.
    /// `None` for a host alone on its journal.
    pub fence: Option<Fence>,
}

/// The leases a write was made under: the node that writes and, for each partition
/// (`names::partition_of`) the batch writes into, the epoch of that node's lease.
/// A journal shared by several hosts stores the batch only if every lease is still
/// that node's at that epoch, checked in the write's own transaction; otherwise
/// nothing is stored and the write fails with `JournalError::Fenced`. Every event
/// is stored with the epoch of its partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    /// `(partition, epoch)`, at most one per partition.
    pub leases: Vec<(u32, u64)>,
}

impl Fence {
    /// The epoch this fence holds for `partition`.
    pub fn epoch_of(&self, partition: u32) -> Option<u64> {
        self.leases.iter().find(|(p, _)| *p == partition).map(|(_, e)| *e)
    }

    /// Add the leases of `other` (the same node's). Two epochs of one partition are
    /// both kept: one of them is stale, so the journal refuses the write.
    pub fn merge(&mut self, other: &Fence) {
        for lease in &other.leases {
            if !self.leases.contains(lease) {
                self.leases.push(*lease);
            }
        }
    }
}

impl WriteBatch {
    /// The entities this batch writes for: its events, snapshots and applied keys,
    /// and the sources of its outbox entries and topic messages. A fence must hold
    /// the partition of each.
    pub fn entity_pids(&self) -> impl Iterator<Item = &str> {
        let o = &self.outbox;
        (self.events.iter().map(|e| e.persistence_id.as_str()))
            .chain(self.snapshots.iter().map(|s| s.persistence_id.as_str()))
            .chain(o.applied.iter().map(|k| k.persistence_id.as_str()))
            .chain(o.entries.iter().map(|e| e.source.as_str()))
            .chain(o.published.iter().map(|m| m.source.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.snapshots.is_empty() && self.outbox.is_empty()
    }
    pub fn append(&mut self, other: WriteBatch) {
        self.events.extend(other.events);
        self.snapshots.extend(other.snapshots);
        self.outbox.append(other.outbox);
        match (&mut self.fence, other.fence) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (slot @ None, theirs) => *slot = theirs,
            (Some(_), None) => {}
        }
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
    /// The storage failed (a full disk, an I/O error); it may work again later.
    #[error("storage error: {0}")]
    Storage(String),
    /// Another process holds the data directory (or a part of it).
    #[error("{0}")]
    Locked(String),
    /// The write was made under a lease this host no longer holds (another host
    /// owns the partition now): nothing of it was stored.
    #[error("fenced: {0}")]
    Fenced(String),
}

pub type JournalResult<T> = Result<T, JournalError>;

/// Storage for events, snapshots, timers and the outbox. Implementations are shared between
/// threads: the writer thread calls `write`, shards and the API read.
pub trait Journal: Send + Sync + 'static {
    /// Store the batch atomically and durably (see the module invariants).
    fn write(&self, batch: &WriteBatch) -> JournalResult<()>;
    /// Highest stored sequence number of `pid` (0 if none).
    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64>;
    /// Events of `pid` with `from <= seq_nr`, in order, at most `limit`.
    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>>;
    /// The same events as [`events`](Journal::events), handed to `each` one by one
    /// without being copied out (recovery's read); returns how many.
    fn for_each_event(
        &self,
        pid: &str,
        from: u64,
        limit: usize,
        each: &mut dyn FnMut(EventRef<'_>),
    ) -> JournalResult<usize> {
        let events = self.events(pid, from, limit)?;
        for e in &events {
            each(EventRef { seq_nr: e.seq_nr, manifest: &e.manifest, payload: &e.payload });
        }
        Ok(events.len())
    }
    /// Events carrying `tag` with `offset >= from`, in offset order, at most `limit`.
    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>>;
    /// Every event with `offset >= from`, in offset order, at most `limit` (all
    /// events, whatever their tags).
    fn events_from(&self, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>>;
    /// The latest snapshot of `pid`.
    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>>;
    /// Store a timer durably. (`schedule` is an outbox entry since the outbox; the
    /// engine only delivers and removes the timers earlier versions stored.)
    fn put_timer(&self, timer: &Timer) -> JournalResult<()>;
    /// Remove a delivered timer (durably).
    fn remove_timer(&self, id: u64) -> JournalResult<()>;
    /// All stored timers, earliest first.
    fn timers(&self) -> JournalResult<Vec<Timer>>;
    /// A fresh timer id, unique for this journal.
    fn next_timer_id(&self) -> JournalResult<u64>;
    /// The global offset of the newest durable event (0 when there is none).
    fn head(&self) -> u64;
    /// Outbox entries stored and not yet marked done, in key order.
    fn outbox_pending(&self) -> JournalResult<Vec<OutboxEntry>>;
    /// Whether the entity `pid` has applied the command with idempotency key `key`.
    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool>;
    /// Messages of `topic` with `position >= from`, oldest first, at most `limit`.
    fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredTopicMessage>>;
    /// The newest position of `topic` (0 when it has no message).
    fn topic_head(&self, topic: &str) -> JournalResult<u64>;
    /// Why the journal cannot write right now (the last write failed and no write
    /// has succeeded since), for `GET /health`.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Bytes the journal takes on disk, when it can tell (`mneme_journal_disk_bytes`).
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    // Projections (`views.rs`). The commit-log and PostgreSQL journals store them;
    // the defaults refuse with [`views::NEED_LOG`].

    /// Store a projection batch atomically and durably: its view updates and its new
    /// offset, or nothing. Refused (`Invalid`) unless the generation's stored offset
    /// is the batch's `previous_offset`.
    fn write_projection(&self, _batch: &ProjectionBatch) -> JournalResult<()> {
        Err(JournalError::Invalid(views::NEED_LOG.into()))
    }
    /// The offset record of every generation of `projection`, oldest generation first.
    fn projection_offsets(&self, _projection: &str) -> JournalResult<Vec<ProjectionOffset>> {
        Err(JournalError::Invalid(views::NEED_LOG.into()))
    }
    /// The value of `key` in a generation of `projection`'s view.
    fn view_get(&self, _projection: &str, _generation: u32, _key: &str) -> JournalResult<Option<Vec<u8>>> {
        Err(JournalError::Invalid(views::NEED_LOG.into()))
    }
    /// Keys starting with `prefix`, from `from_key` on (inclusive), in key order (bytewise),
    /// at most `limit`, with their values.
    fn view_scan(
        &self,
        _projection: &str,
        _generation: u32,
        _prefix: &str,
        _from_key: &str,
        _limit: usize,
    ) -> JournalResult<Vec<(String, Vec<u8>)>> {
        Err(JournalError::Invalid(views::NEED_LOG.into()))
    }
}

/// The journal backends: two embedded, one PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// mneme's commit log with a fjall index.
    #[default]
    Log,
    Sled,
    /// A PostgreSQL database (`JournalOptions::postgres_url`).
    Postgres,
}

impl Backend {
    pub const NAMES: [&'static str; 3] = ["log", "sled", "postgres"];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Log => "log",
            Backend::Sled => "sled",
            Backend::Postgres => "postgres",
        }
    }

    pub fn parse(name: &str) -> Result<Backend, String> {
        match name {
            "log" => Ok(Backend::Log),
            "sled" => Ok(Backend::Sled),
            "postgres" => Ok(Backend::Postgres),
            "fjall" => Err(FJALL_REPLACED.into()),
            other => Err(format!("unknown journal backend `{other}`: use log (the default), sled or postgres")),
        }
    }

    /// The directory whose presence says a data directory uses this backend (for
    /// PostgreSQL, a marker: the journal is in the database).
    pub fn dir(self, data: &Path) -> PathBuf {
        match self {
            Backend::Log => log_journal::log_dir(data),
            Backend::Sled => data.join("journal-sled"),
            Backend::Postgres => data.join("journal-postgres"),
        }
    }
}

const FJALL_REPLACED: &str = "the fjall journal was replaced by mneme's commit log (`--journal log`, the default), \
     which keeps fjall only as a derived index";

/// How to open a data directory's journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub backend: Backend,
    /// Size of a new commit-log segment (the `log` backend).
    pub log_segment_bytes: u64,
    /// The database of the `postgres` backend (`postgres://user:password@host:port/db`).
    pub postgres_url: Option<String>,
    /// Several hosts share the `postgres` database: no writer lock; every write
    /// carries its leases (`Fence`).
    pub shared: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            backend: Backend::default(),
            log_segment_bytes: log::LogOptions::default().segment_bytes,
            postgres_url: None,
            shared: false,
        }
    }
}

/// Open the journal of a data directory with the default options of `backend`.
pub fn open(data: &Path, backend: Backend) -> JournalResult<Arc<dyn Journal>> {
    open_with(data, &JournalOptions { backend, ..JournalOptions::default() })
}

/// Open the journal of a data directory, after locking the directory (so no
/// other process opens or creates anything in it). Refuses a backend other than
/// the one that wrote the directory, so switching `--journal` never shows an empty
/// journal.
pub fn open_with(data: &Path, options: &JournalOptions) -> JournalResult<Arc<dyn Journal>> {
    open_locked(data, DataLock::acquire(data)?, options)
}

/// [`open_with`] for a caller that took the data directory's lock itself (the
/// server takes it before it listens, so a second process never answers at all).
pub fn open_locked(data: &Path, lock: DataLock, options: &JournalOptions) -> JournalResult<Arc<dyn Journal>> {
    let backend = options.backend;
    if options.shared && backend != Backend::Postgres {
        return Err(JournalError::Invalid(format!(
            "several hosts share one journal only on PostgreSQL: start with `--journal postgres`, not `--journal {}`",
            backend.name()
        )));
    }
    if data.join("journal-fjall").exists() {
        return Err(JournalError::Invalid(format!(
            "{} holds a journal written by the fjall backend of an earlier mneme (journal-fjall/), which this \
             version does not read: {FJALL_REPLACED}. Keep serving it with the earlier mneme, or start this one \
             on a new data directory",
            data.display()
        )));
    }
    for other in [Backend::Log, Backend::Sled, Backend::Postgres] {
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
        Backend::Log => {
            let log_options = log::LogOptions { segment_bytes: options.log_segment_bytes };
            Arc::new(LogJournal::open_with(data, lock, log_options, Arc::new(log::StdIo))?)
        }
        Backend::Sled => Arc::new(SledJournal::open_locked(&backend.dir(data), lock)?),
        Backend::Postgres => {
            let url = options.postgres_url.as_deref().ok_or_else(|| {
                JournalError::Invalid("`--journal postgres` needs `--postgres-url` (or MNEME_POSTGRES_URL)".into())
            })?;
            let mut journal = if options.shared {
                PostgresJournal::open_shared(url)?
            } else {
                PostgresJournal::open_waiting(url, postgres::LOCK_WAIT)?
            };
            let marker = backend.dir(data);
            std::fs::create_dir_all(&marker)
                .map_err(|e| JournalError::Storage(format!("creating {}: {e}", marker.display())))?;
            // The data directory's lock is held as long as the journal is.
            journal.hold(lock);
            Arc::new(journal)
        }
    })
}

/// Bytes of the files under `dir` (0 for what cannot be read: a gauge, not a check).
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
