//! How the engine runs: shards, snapshots, stash, passivation, recovery, memory bound,
//! topic retention.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads running entities).
    pub shards: usize,
    /// Snapshot every N events for components whose `describe()` leaves it to the host (0 = never).
    pub snapshot_every: u64,
    /// Capacity of each entity's explicit stash.
    pub stash_capacity: usize,
    /// Passivate entities idle this long.
    pub idle_timeout: Duration,
    /// At most this many entities recover at the same time.
    pub max_concurrent_recoveries: usize,
    /// The journal refuses events with a larger payload.
    pub max_event_bytes: usize,
    /// Events handed to `apply-events` per call during recovery.
    pub recovery_batch: usize,
    /// Most entities in memory over all shards; each shard keeps at most
    /// `max(1, max_active_entities / shards)` and passivates its least recently
    /// used idle entities beyond that.
    pub max_active_entities: usize,
    /// How projections are fed (`projection/`).
    pub projections: ProjectionConfig,
    /// Readers of a topic are served its newest this many messages (0: all).
    pub topic_retention: u64,
}

/// How projections read the journal and what their updates may be.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Most events per batch: one `handle-events` call, one atomic write.
    pub batch_events: usize,
    /// Most event payload bytes per batch (at least one event is taken).
    pub batch_bytes: usize,
    /// Largest value one view update may store; a larger one fails the projection.
    pub max_value_bytes: usize,
    /// Wait before trying again after the journal could not be read or written.
    pub retry: Duration,
    /// Bytes of view values each worker keeps in memory, so a key read again is
    /// not read from the journal again (past it, the cache starts over empty).
    pub cache_bytes: usize,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            batch_events: 1000,
            batch_bytes: 4 << 20,
            max_value_bytes: 1 << 20,
            retry: Duration::from_secs(1),
            cache_bytes: 64 << 20,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            snapshot_every: 1000,
            stash_capacity: 1000,
            idle_timeout: Duration::from_secs(120),
            max_concurrent_recoveries: 64,
            max_event_bytes: 1 << 20,
            recovery_batch: 1000,
            max_active_entities: 100_000,
            projections: ProjectionConfig::default(),
            topic_retention: 100_000,
        }
    }
}
