//! A shard: one thread that owns a set of entities and runs their commands.
//!
//! Per entity this is Akka's EventSourcedBehavior: recover (snapshot + replay),
//! then for each command call the pure handler, persist the events, and only when
//! they are durable release the reply and side effects.
//!
//! Group commit with speculative state. The shard keeps an *open* batch and at most
//! one batch *in flight* at the writer (`batch.rs`). Commands are computed against
//! each entity's newest state, including events not yet durable, and their events
//! go into the open batch; when the in-flight write returns, the open batch is
//! flushed to the writer. So the batch size follows the fsync latency and no
//! command waits for a write it does not depend on. Invariants:
//!
//! * a reply or side effect is released only when every event of its entity up to
//!   that command is durable: a command that persists nothing but arrives while its
//!   entity has undurable events waits for them (`pending_batch`);
//! * `send`, `schedule` and `publish` side effects, and the idempotency key of a
//!   command another entity sent, are written in the same batch as the command's
//!   events (alone when it persisted none), never released before it is durable;
//! * if a write fails, every entity with events in it is dropped from memory (it
//!   recovers from the journal on its next command), its later events are removed
//!   from the open batch, and every command that depended on them fails;
//! * an entity is only passivated, stopped or restarted when nothing of it is pending;
//! * at most `max(1, max_active_entities / shards)` entities stay in memory once
//!   the loop has handled its messages, unless more than that have work pending:
//!   beyond the bound the least recently used quiet entities are passivated
//!   (`entities` is kept in least-recently-used order, `lifecycle.rs`).
//!
//! The files: `mod.rs` the thread and its message protocol; `batch.rs` the
//! group-commit bookkeeping; `lifecycle.rs` recovery, passivation and draining;
//! `command.rs` running a command and persisting its events; `handlers.rs` the
//! live handler instances; `entity.rs` what the shard keeps per entity;
//! `permits.rs` the bound on concurrent recoveries.
//!
//! Architecture invariant: a shard never imports the engine or the API; it reaches
//! other entities only through the router (side effects), and the journal's writes
//! only through the writer.

mod batch;
mod command;
mod entity;
mod handlers;
mod lifecycle;
mod live;
mod permits;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::Ownership;
use crate::component::{EntityHandler, Registry};
use crate::config::EngineConfig;
use crate::error::CommandError;
use crate::journal::Journal;
use crate::metrics::{Metrics, TypeMetrics};
use crate::names::partition_of;
use crate::router::ShardMsg;
use crate::side_effects::SideEffectRunner;
use crate::writer::{WriteRequest, Writer, WriterMsg};

use batch::{Batches, DurableBatch, FailedBatch, Flush};
use live::Live;
pub use permits::RecoveryPermits;

/// How often a shard looks for idle entities.
const TICK: Duration = Duration::from_millis(500);
/// Messages taken from the queue before the shard looks at its write again.
const MAX_DRAIN: usize = 4096;

/// What every shard shares.
pub struct Shared {
    pub config: EngineConfig,
    pub registry: Arc<Registry>,
    pub journal: Arc<dyn Journal>,
    pub side_effects: SideEffectRunner,
    pub writer: Writer,
    pub writer_id: String,
    pub recoveries: RecoveryPermits,
    pub metrics: Arc<Metrics>,
    /// With several hosts: the partitions this host owns (`None`: it is alone).
    pub ownership: Option<Arc<Ownership>>,
}

struct Shard {
    index: usize,
    shared: Arc<Shared>,
    me: Sender<ShardMsg>,
    /// Live entities, least recently active first (`live.rs`).
    entities: Live,
    /// Most entities this shard keeps in memory.
    max_entities: usize,
    /// How many entities this shard last counted in the `active_entities` gauge.
    reported_entities: usize,
    /// The live handler of each entity type, with its component version.
    handlers: foldhash::HashMap<String, (u64, Box<dyn EntityHandler>)>,
    /// The metrics of each entity type this shard has run (looked up here, not in
    /// the shared map, on the command path).
    types: RefCell<foldhash::HashMap<String, Arc<TypeMetrics>>>,
    /// What this shard last counted in the per-type gauges: entities, stashed commands.
    reported_types: HashMap<String, (usize, usize)>,
    batches: Batches,
    last_tick: Instant,
}

pub fn spawn(index: usize, shared: Arc<Shared>, me: Sender<ShardMsg>, rx: Receiver<ShardMsg>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("mneme-shard-{index}"))
        .spawn(move || {
            let max_entities = (shared.config.max_active_entities / shared.config.shards.max(1)).max(1);
            let mut shard = Shard {
                index,
                shared,
                me,
                entities: Live::default(),
                max_entities,
                reported_entities: 0,
                handlers: foldhash::HashMap::default(),
                types: RefCell::default(),
                reported_types: HashMap::new(),
                batches: Batches::new(),
                last_tick: Instant::now(),
            };
            shard.run(rx);
        })
        .expect("spawn shard thread")
}

impl Shard {
    fn run(&mut self, rx: Receiver<ShardMsg>) {
        let mut stopping = false;
        loop {
            match rx.recv_timeout(TICK) {
                Ok(msg) => stopping |= self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            for msg in rx.try_iter().take(MAX_DRAIN) {
                stopping |= self.handle(msg);
            }
            self.flush();
            if self.last_tick.elapsed() >= TICK {
                self.passivate_idle();
                self.report_types(false);
                self.last_tick = Instant::now();
            }
            if self.entities.len() > self.max_entities {
                self.passivate_least_recently_used();
            }
            self.report_entities(self.entities.len());
            if stopping && self.batches.is_idle() {
                self.report_entities(0);
                self.report_types(true);
                tracing::debug!(shard = self.index, "shard stopped");
                return;
            }
        }
    }

    /// Keep this shard's share of the `active_entities` gauge at `now`.
    fn report_entities(&mut self, now: usize) {
        if now != self.reported_entities {
            Metrics::adjust(&self.shared.metrics.active_entities, self.reported_entities, now);
            self.reported_entities = now;
        }
    }

    /// Run `f` on the metrics of `entity_type` (a type with a component).
    fn with_type<R>(&self, entity_type: &str, f: impl FnOnce(&TypeMetrics) -> R) -> R {
        if let Some(m) = self.types.borrow().get(entity_type) {
            return f(m);
        }
        let m = self.shared.metrics.of_type(entity_type);
        let r = f(&m);
        self.types.borrow_mut().insert(entity_type.to_string(), m);
        r
    }

    /// Keep this shard's share of the per-type gauges (entities in memory, stashed
    /// commands) current; at the end (`stopped`) take it back.
    fn report_types(&mut self, stopped: bool) {
        let mut now: HashMap<&str, (usize, usize)> = HashMap::new();
        if !stopped {
            now.extend(self.entities.per_type().map(|(t, c)| (t, (c.entities, c.stashed))));
        }
        let mut changed = Vec::new();
        for (t, before) in &self.reported_types {
            let after = now.get(t.as_str()).copied().unwrap_or_default();
            if after != *before {
                changed.push((t.clone(), *before, after));
            }
        }
        for (t, after) in &now {
            if !self.reported_types.contains_key(*t) {
                changed.push((t.to_string(), (0, 0), *after));
            }
        }
        for (t, before, after) in changed {
            self.with_type(&t, |m| {
                Metrics::adjust(&m.active_entities, before.0, after.0);
                Metrics::adjust(&m.stashed_commands, before.1, after.1);
            });
            self.reported_types.insert(t, after);
        }
    }

    /// Returns true when asked to shut down.
    fn handle(&mut self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Command(env) => self.deliver(env),
            ShardMsg::GetState { entity_type, entity_id, reply_to } => {
                let _ = reply_to.send(self.durable_state(&entity_type, &entity_id));
            }
            ShardMsg::Written { batch_id, result } => self.written(batch_id, result),
            ShardMsg::Shutdown => return true,
        }
        false
    }

    /// Hand the open batch to the writer if nothing is in flight.
    fn flush(&mut self) {
        match self.batches.take_for_write() {
            None => {}
            // Only held replies: everything they depend on is already durable.
            Some(Flush::Durable(batch)) => self.batch_durable(batch),
            Some(Flush::Write { batch_id, mut batch }) => {
                if let Some(ownership) = &self.shared.ownership {
                    // Each entity's writes under the lease it was recovered under.
                    let leases = batch.entity_pids().map(|pid| {
                        let epoch = self.entities.get(pid).map_or(0, |e| e.epoch);
                        (partition_of(pid), epoch)
                    });
                    let fence = ownership.fence(leases);
                    batch.fence = Some(fence);
                }
                let me = self.me.clone();
                let on_written = Box::new(move |result| {
                    let _ = me.send(ShardMsg::Written { batch_id, result });
                });
                let request = WriterMsg::Write(Box::new(WriteRequest { batch, on_written }));
                if self.shared.writer.send(request).is_err() {
                    self.written(batch_id, Err("journal writer stopped".into()));
                }
            }
        }
    }

    /// The writer finished the in-flight batch.
    fn written(&mut self, batch_id: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(batch) = self.batches.written(batch_id) {
                    self.batch_durable(batch);
                }
            }
            Err(e) => {
                if let Some(failed) = self.batches.failed(batch_id) {
                    self.batch_failed(failed, e);
                }
            }
        }
        self.flush();
    }
}

impl Shard {
    /// The batch is durable: advance durable state, release replies and side effects.
    fn batch_durable(&mut self, batch: DurableBatch) {
        let mut members = foldhash::HashSet::default();
        members.reserve(batch.replies.len().max(batch.touched.len()));
        for (pid, (seq_nr, state)) in batch.touched {
            if let Some(e) = self.entities.get_mut(&pid) {
                e.durable_seq_nr = seq_nr;
                e.durable_state = state;
            }
            members.insert(pid);
        }
        for r in batch.replies {
            self.shared.side_effects.release(&r.pid, r.side_effects);
            if let Some(envelope) = r.envelope {
                self.respond(envelope, r.result);
            }
            members.insert(r.pid);
        }
        for pid in members {
            if let Some(e) = self.entities.get_mut(&pid) {
                if e.pending_batch == Some(batch.id) {
                    e.pending_batch = None;
                }
            }
            self.finish_drain(&pid);
        }
    }

    /// The write failed: nothing of the batch is stored. Drop its entities (they
    /// recover from the journal) and fail every command that depended on them.
    fn batch_failed(&mut self, batch: FailedBatch, error: String) {
        for r in batch.replies {
            match r.envelope {
                Some(envelope) => self.respond(envelope, Err(CommandError::WriteFailed(error.clone()))),
                None => tracing::warn!(pid = %r.pid, "side effects of a recovery lost with a failed write: {error}"),
            }
        }
        let mut redeliver = Vec::new();
        for pid in &batch.dropped {
            if let Some(e) = self.entities.remove(pid) {
                for env in e.stash {
                    let msg = "entity restarted after a journal write failure: stashed command dropped";
                    self.respond(env, Err(CommandError::Dropped(msg.into())));
                }
                redeliver.extend(e.waiting);
            }
        }
        for (pid, e) in self.entities.iter_mut() {
            if e.pending_batch == Some(batch.id) && !batch.dropped.contains(pid) {
                e.pending_batch = None;
            }
        }
        tracing::warn!(
            shard = self.index,
            entities = batch.dropped.len(),
            "write failed; entities will recover from the journal"
        );
        for env in redeliver {
            self.deliver(env);
        }
    }
}
