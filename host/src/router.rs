//! The messages shards receive, and the [`Router`] that sends them to the shard
//! owning an entity.
//!
//! This module sits below both the engine (which sends commands in) and the shards
//! (which receive them), and the outbox (which delivers the commands entities
//! send), so none of them has to import another to talk.
//!
//! Architecture invariant: the router holds channels, no state, and imports nothing
//! above `error`, `clock` and `names`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use crate::error::CommandResult;
use crate::names::persistence_id;

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `reply: ok(bytes)`.
    Reply(Vec<u8>),
    /// `reply: error(message)`: a domain rejection, not a fault.
    ReplyError(String),
    /// The handler gave no reply.
    NoReply,
}

/// An entity's durable state, as returned by `Engine::state`.
#[derive(Debug, Clone)]
pub struct EntityState {
    pub seq_nr: u64,
    pub state: Arc<[u8]>,
    pub component_version: u64,
}

/// Where a command's outcome goes.
pub enum ReplyTo {
    /// Nobody waits for it.
    None,
    /// The caller waiting for it (`Engine::submit`).
    Caller(oneshot::Sender<CommandResult<Outcome>>),
    /// Called with the outcome, on the shard's thread: the outbox learns whether
    /// a delivery is done or must be tried again.
    Callback(Box<dyn FnOnce(CommandResult<Outcome>) + Send>),
}

impl ReplyTo {
    /// Hand the outcome over.
    pub fn send(self, result: CommandResult<Outcome>) {
        match self {
            ReplyTo::None => {}
            ReplyTo::Caller(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Callback(f) => f(result),
        }
    }
}

/// Who sent a command, when an entity did (a `send` or `schedule` side effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Persistence id of the sending entity.
    pub source: String,
    /// The command's idempotency key: the target applies it at most once.
    pub key: String,
}

/// A command on its way to its entity.
pub struct Envelope {
    pub entity_type: String,
    pub entity_id: String,
    pub manifest: String,
    pub payload: Vec<u8>,
    /// When the engine accepted it (the command's timestamp in `command-metadata`).
    pub accepted_ms: u64,
    /// The same moment on the monotonic clock, for `mneme_command_seconds`.
    pub accepted: Instant,
    pub reply_to: ReplyTo,
    /// Set for a command another entity sent (`command-metadata.origin`).
    pub origin: Option<Origin>,
    /// The command's trace span (disabled unless spans are exported).
    pub span: tracing::Span,
}

/// What a shard is asked to do.
pub enum ShardMsg {
    Command(Envelope),
    GetState {
        entity_type: String,
        entity_id: String,
        reply_to: oneshot::Sender<CommandResult<EntityState>>,
    },
    /// The writer finished the shard's batch `batch_id`.
    Written {
        batch_id: u64,
        result: Result<(), String>,
    },
    Shutdown,
}

/// Sends messages to the shard that owns an entity.
#[derive(Clone)]
pub struct Router {
    shards: Arc<Vec<Sender<ShardMsg>>>,
}

impl Router {
    pub fn new(shards: Vec<Sender<ShardMsg>>) -> Router {
        Router { shards: Arc::new(shards) }
    }

    /// The shard of a persistence id (by hash).
    pub fn shard_of(&self, pid: &str) -> &Sender<ShardMsg> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pid.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    pub fn shards(&self) -> &[Sender<ShardMsg>] {
        &self.shards
    }

    /// Hand a command to its entity's shard; the envelope back when the shard
    /// has stopped.
    pub fn deliver(&self, env: Envelope) -> Result<(), Box<Envelope>> {
        let pid = persistence_id(&env.entity_type, &env.entity_id);
        self.shard_of(&pid).send(ShardMsg::Command(env)).map_err(|e| match e.0 {
            ShardMsg::Command(env) => Box::new(env),
            _ => unreachable!("sent a command"),
        })
    }
}
