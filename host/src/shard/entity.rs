//! What a shard keeps in memory per live entity.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::router::Envelope;

/// Why an entity is draining: it leaves memory once nothing of it is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// `stop: true`: passivate.
    Stop,
    /// The component's state version changed: recover again with the new code.
    Restart,
}

pub struct Entity {
    pub entity_type: String,
    pub entity_id: String,
    pub component_version: u64,
    pub state_version: u32,
    /// Newest state, including events not yet durable.
    pub state: Arc<[u8]>,
    pub seq_nr: u64,
    /// State as of the last durable event.
    pub durable_state: Arc<[u8]>,
    pub durable_seq_nr: u64,
    pub last_snapshot_seq_nr: u64,
    /// The newest batch holding events or pending replies of this entity.
    pub pending_batch: Option<u64>,
    pub stash: VecDeque<Envelope>,
    /// Commands that arrived while the entity was draining.
    pub waiting: VecDeque<Envelope>,
    pub draining: Option<Drain>,
    pub last_active: Instant,
    /// With several hosts: the epoch of the partition's lease it was recovered
    /// under (0 when the host is alone). Its writes are fenced by it.
    pub epoch: u64,
}

impl Entity {
    /// Nothing pending, draining, stashed or waiting: safe to drop from memory.
    pub fn is_quiet(&self) -> bool {
        self.pending_batch.is_none() && self.draining.is_none() && self.stash.is_empty() && self.waiting.is_empty()
    }
}

impl Entity {
    /// A freshly recovered entity at `seq_nr` with `state`, all of it durable.
    pub fn recovered(
        entity_type: &str,
        entity_id: &str,
        component_version: u64,
        state_version: u32,
        state: Arc<[u8]>,
        seq_nr: u64,
        last_snapshot_seq_nr: u64,
    ) -> Entity {
        Entity {
            entity_type: entity_type.to_string(),
            entity_id: entity_id.to_string(),
            component_version,
            state_version,
            state: state.clone(),
            seq_nr,
            durable_state: state,
            durable_seq_nr: seq_nr,
            last_snapshot_seq_nr,
            pending_batch: None,
            stash: VecDeque::new(),
            waiting: VecDeque::new(),
            draining: None,
            last_active: Instant::now(),
            epoch: 0,
        }
    }
}
