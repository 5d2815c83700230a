//! Why a command did not produce a successful reply.
//!
//! Every failure a caller can see is one of these variants; the HTTP layer maps each
//! to one status code (see `api`), so the same failure always looks the same.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CommandError {
    /// No component is deployed under this entity type.
    #[error("unknown entity type `{0}`")]
    UnknownType(String),
    /// The entity type's component is still being compiled or loaded (at start);
    /// the message says what is pending. Try again shortly.
    #[error("entity type `{entity_type}` is not ready yet: {what}; retry shortly (GET /ready tells when)")]
    NotReady { entity_type: String, what: String },
    /// The entity type or id does not satisfy the naming rules.
    #[error("{0}")]
    InvalidId(String),
    /// The guest could not decode the command.
    #[error("{0}")]
    Malformed(String),
    /// The entity does not handle this command in its current state (Akka's
    /// `unhandled`), with the entity's own explanation when it gave one
    /// (Akka's `Effect.unhandled.thenReply(StatusReply.Error(..))`).
    #[error("command not handled by `{entity_type}` in its current state{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Unhandled { entity_type: String, reason: Option<String> },
    /// The entity's stash is at capacity, so a command it asked to stash was refused.
    #[error("stash of `{0}` is full ({1} commands): command dropped")]
    StashFull(String, usize),
    /// The guest trapped, ran past its deadline or its memory cap. Nothing was persisted.
    #[error("guest fault in `{entity_type}`: {reason}")]
    GuestFault { entity_type: String, reason: String },
    /// The journal refused the events (e.g. too large). Nothing was persisted.
    #[error("journal rejected the events: {0}")]
    Rejected(String),
    /// The durable write failed. Nothing of this command is persisted; the entity
    /// recovers from the journal on its next command.
    #[error("journal write failed, nothing persisted: {0}")]
    WriteFailed(String),
    /// The journal cannot be read or written right now (a full disk, an I/O
    /// error); it may work again later. Nothing of the command was persisted.
    #[error("journal unavailable: {0}")]
    JournalUnavailable(String),
    /// A record the command needed is damaged (checksum mismatch, an index entry
    /// pointing elsewhere): reported, never served.
    #[error("{0}")]
    JournalCorrupt(String),
    /// Recovery of the entity from the journal failed.
    #[error("recovery of `{pid}` failed: {reason}")]
    RecoveryFailed { pid: String, reason: String },
    /// The entity stopped (or restarted) while the command was stashed.
    #[error("{0}")]
    Dropped(String),
    /// With several hosts: this host does not hold the lease of the entity's
    /// partition (another host does, or none right now, during a failover).
    #[error("this host does not own `{pid}` now: partition {partition} is {}; retry (any host forwards to the owner)", holder.as_deref().map(|h| format!("held by host `{h}`")).unwrap_or_else(|| "between hosts".into()))]
    NotOwner { pid: String, partition: u32, holder: Option<String> },
    /// The engine is shutting down (or has shut down) and will not reply.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

pub type CommandResult<T> = Result<T, CommandError>;
