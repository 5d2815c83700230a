//! The messages shards receive, and the [`Router`] that sends them to the shard
//! owning an entity.
//!
//! This module sits below both the engine (which sends commands in) and the shards
//! (which receive them, and send commands to other entities as side effects), so
//! neither has to import the other to talk.
//!
//! Architecture invariant: the router holds channels, no state, and imports nothing
//! above `error`, `clock` and `names`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use crate::clock::now_ms;
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

/// Where a command's outcome goes: the caller waiting for it, or nobody (a command
/// sent by another entity or a timer).
pub type ReplyTo = Option<oneshot::Sender<CommandResult<Outcome>>>;

/// A command on its way to its entity.
pub struct Envelope {
    pub entity_type: String,
    pub entity_id: String,
    pub manifest: String,
    pub payload: Vec<u8>,
    /// When the engine accepted it (the command's timestamp in `command-metadata`).
    pub accepted_ms: u64,
    pub reply_to: ReplyTo,
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

    /// Fire and forget: deliver a command whose reply nobody waits for.
    pub fn tell(&self, entity_type: String, entity_id: String, payload: Vec<u8>) {
        let pid = persistence_id(&entity_type, &entity_id);
        let env = Envelope {
            entity_type,
            entity_id,
            manifest: String::new(),
            payload,
            accepted_ms: now_ms(),
            reply_to: None,
        };
        let _ = self.shard_of(&pid).send(ShardMsg::Command(env));
    }
}
