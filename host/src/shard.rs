//! A shard: one thread that owns a set of entities and runs their commands.
//!
//! Per entity this is Akka's EventSourcedBehavior: recover (snapshot + replay),
//! then for each command call the pure handler, persist the events, and only when
//! they are durable release the reply and side effects.
//!
//! Group commit with speculative state. The shard keeps an *open* batch and at most
//! one batch *in flight* at the writer. Commands are computed against each entity's
//! newest state, including events not yet durable, and their events go into the
//! open batch; when the in-flight write returns, the open batch is submitted. So the
//! batch size follows the fsync latency and no command waits for a write it does
//! not depend on. Invariants:
//!
//! * a reply or side effect is released only when every event of its entity up to
//!   that command is durable: a command that persists nothing but arrives while its
//!   entity has undurable events waits for them (`pending_batch`);
//! * if a write fails, every entity with events in it is dropped from memory (it
//!   recovers from the journal on its next command), its later events are removed
//!   from the open batch, and every command that depended on them fails;
//! * an entity is only passivated, stopped or restarted when nothing of it is pending.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::component::bindings::exports::mneme::entity::handler;
use crate::component::bindings::mneme::entity::types::{Action, CommandMetadata, Reply, SideEffect};
use crate::component::{EntityHandler, LoadedComponent};
use crate::engine::{EntityState, Outcome, Shared, WriteRequest, WriterMsg};
use crate::error::{CommandError, CommandResult};
use crate::metrics::Metrics;
use crate::journal::{persistence_id, validate_label, NewEvent, Snapshot, WriteBatch};

/// How often a shard looks for idle entities.
const TICK: Duration = Duration::from_millis(500);
/// Messages taken from the queue before the shard looks at its write again.
const MAX_DRAIN: usize = 4096;

pub(crate) struct Envelope {
    pub entity_type: String,
    pub entity_id: String,
    pub manifest: String,
    pub payload: Vec<u8>,
    pub accepted_ms: u64,
    pub reply: Option<oneshot::Sender<CommandResult<Outcome>>>,
}

impl Envelope {
    fn respond(self, metrics: &Metrics, result: CommandResult<Outcome>) {
        metrics.count_outcome(&result);
        if let Some(tx) = self.reply {
            let _ = tx.send(result);
        }
    }
}

pub(crate) enum ShardMsg {
    Command(Envelope),
    GetState { entity_type: String, entity_id: String, reply: oneshot::Sender<CommandResult<EntityState>> },
    Written { batch_id: u64, result: Result<(), String> },
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// `stop: true`: passivate.
    Stop,
    /// The component's state version changed: recover again with the new code.
    Restart,
}

struct Entity {
    entity_type: String,
    entity_id: String,
    component_version: u64,
    state_version: u32,
    /// Newest state, including events not yet durable.
    state: Arc<[u8]>,
    seq_nr: u64,
    /// State as of the last durable event.
    durable_state: Arc<[u8]>,
    durable_seq: u64,
    last_snapshot_seq: u64,
    /// The newest batch holding events or held replies of this entity.
    pending_batch: Option<u64>,
    stash: VecDeque<Envelope>,
    /// Commands that arrived while the entity was draining.
    waiting: VecDeque<Envelope>,
    draining: Option<Drain>,
    last_active: Instant,
}

/// A reply and side effects held until a batch is durable.
struct Completion {
    pid: String,
    envelope: Envelope,
    result: CommandResult<Outcome>,
    effects: Vec<SideEffect>,
}

#[derive(Default)]
struct Batch {
    id: u64,
    write: WriteBatch,
    /// Entities with events in this batch, and their newest state in it.
    touched: HashMap<String, (u64, Arc<[u8]>)>,
    completions: Vec<Completion>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.write.is_empty() && self.completions.is_empty()
    }
}

struct Shard {
    index: usize,
    shared: Arc<Shared>,
    me: Sender<ShardMsg>,
    entities: HashMap<String, Entity>,
    sandboxes: HashMap<String, (u64, Box<dyn EntityHandler>)>,
    open: Batch,
    in_flight: Option<Batch>,
    next_batch_id: u64,
    last_tick: Instant,
}

pub(crate) fn spawn(index: usize, shared: Arc<Shared>, me: Sender<ShardMsg>, rx: Receiver<ShardMsg>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("mneme-shard-{index}"))
        .spawn(move || {
            let mut shard = Shard {
                index,
                shared,
                me,
                entities: HashMap::new(),
                sandboxes: HashMap::new(),
                open: Batch { id: 1, ..Batch::default() },
                in_flight: None,
                next_batch_id: 2,
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
            self.submit();
            if self.last_tick.elapsed() >= TICK {
                self.passivate_idle();
                self.last_tick = Instant::now();
            }
            if stopping && self.in_flight.is_none() && self.open.is_empty() {
                tracing::debug!(shard = self.index, "shard stopped");
                return;
            }
        }
    }

    /// Returns true when asked to shut down.
    fn handle(&mut self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Command(env) => self.deliver(env),
            ShardMsg::GetState { entity_type, entity_id, reply } => {
                let _ = reply.send(self.durable_state(&entity_type, &entity_id));
            }
            ShardMsg::Written { batch_id, result } => self.written(batch_id, result),
            ShardMsg::Shutdown => return true,
        }
        false
    }

    /// Hand the open batch to the writer if nothing is in flight.
    fn submit(&mut self) {
        if self.in_flight.is_some() || self.open.is_empty() {
            return;
        }
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let mut batch = std::mem::replace(&mut self.open, Batch { id, ..Batch::default() });
        if batch.write.is_empty() {
            // Only held replies: everything they depend on is already durable.
            self.completed(batch);
            return;
        }
        let write = std::mem::take(&mut batch.write);
        let batch_id = batch.id;
        self.in_flight = Some(batch);
        let req = WriteRequest { batch: write, batch_id, notify: self.me.clone() };
        if self.shared.writer.send(WriterMsg::Write(req)).is_err() {
            self.written(batch_id, Err("journal writer stopped".into()));
        }
    }

    fn written(&mut self, batch_id: u64, result: Result<(), String>) {
        let Some(batch) = self.in_flight.take() else { return };
        debug_assert_eq!(batch.id, batch_id);
        match result {
            Ok(()) => self.completed(batch),
            Err(e) => self.failed(batch, e),
        }
        self.submit();
    }

    /// The batch is durable: advance durable state, release replies and effects.
    fn completed(&mut self, batch: Batch) {
        let mut members: HashSet<String> = HashSet::new();
        for (pid, (seq, state)) in batch.touched {
            if let Some(e) = self.entities.get_mut(&pid) {
                e.durable_seq = seq;
                e.durable_state = state;
            }
            members.insert(pid);
        }
        for c in batch.completions {
            self.shared.effects.run(&c.pid, c.effects);
            c.envelope.respond(&self.shared.metrics, c.result);
            members.insert(c.pid);
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
    fn failed(&mut self, batch: Batch, error: String) {
        let dropped: HashSet<String> = batch.touched.into_keys().collect();
        for c in batch.completions {
            c.envelope.respond(&self.shared.metrics, Err(CommandError::WriteFailed(error.clone())));
        }
        // Later work built on the failed events goes too.
        self.open.write.events.retain(|e| !dropped.contains(&e.persistence_id));
        self.open.write.snapshots.retain(|s| !dropped.contains(&s.persistence_id));
        self.open.touched.retain(|pid, _| !dropped.contains(pid));
        let (lost, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.open.completions).into_iter().partition(|c| dropped.contains(&c.pid));
        self.open.completions = kept;
        for c in lost {
            c.envelope.respond(&self.shared.metrics, Err(CommandError::WriteFailed(error.clone())));
        }
        let mut redeliver = Vec::new();
        for pid in &dropped {
            if let Some(e) = self.entities.remove(pid) {
                for env in e.stash {
                    env.respond(&self.shared.metrics, Err(CommandError::Dropped(
                        "entity restarted after a journal write failure: stashed command dropped".into(),
                    )));
                }
                redeliver.extend(e.waiting);
            }
        }
        for (pid, e) in self.entities.iter_mut() {
            if e.pending_batch == Some(batch.id) && !dropped.contains(pid) {
                e.pending_batch = None;
            }
        }
        tracing::warn!(shard = self.index, entities = dropped.len(), "write failed; entities will recover from the journal");
        for env in redeliver {
            self.deliver(env);
        }
    }

    fn passivate_idle(&mut self) {
        let timeout = self.shared.config.idle_timeout;
        let before = self.entities.len();
        self.entities.retain(|_, e| {
            !(e.pending_batch.is_none()
                && e.draining.is_none()
                && e.stash.is_empty()
                && e.waiting.is_empty()
                && e.last_active.elapsed() >= timeout)
        });
        let passivated = (before - self.entities.len()) as u64;
        self.shared.metrics.passivations_total.fetch_add(passivated, std::sync::atomic::Ordering::Relaxed);
    }

    fn durable_state(&mut self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let pid = persistence_id(entity_type, entity_id);
        if !self.entities.contains_key(&pid) {
            let comp = self.component(entity_type)?;
            let entity = self.recover(&comp, entity_type, entity_id)?;
            self.entities.insert(pid.clone(), entity);
        }
        let e = &self.entities[&pid];
        Ok(EntityState { seq_nr: e.durable_seq, state: e.durable_state.clone(), component_version: e.component_version })
    }

    fn component(&self, entity_type: &str) -> CommandResult<Arc<LoadedComponent>> {
        self.shared.registry.get(entity_type).ok_or_else(|| CommandError::UnknownType(entity_type.to_string()))
    }

    /// This shard's live instance of the component's version.
    fn sandbox(&mut self, comp: &LoadedComponent) -> CommandResult<&mut dyn EntityHandler> {
        let fresh = !matches!(self.sandboxes.get(&comp.entity_type), Some((v, _)) if *v == comp.version);
        if fresh {
            let sb = comp.instantiate(self.shared.registry.runtime()).map_err(|reason| CommandError::GuestFault {
                entity_type: comp.entity_type.clone(),
                reason: format!("instantiation failed: {reason}"),
            })?;
            self.sandboxes.insert(comp.entity_type.clone(), (comp.version, sb));
        }
        Ok(self.sandboxes.get_mut(&comp.entity_type).unwrap().1.as_mut())
    }

    /// A trapped instance cannot be entered again: forget it, the next call makes a new one.
    fn fault(&mut self, comp: &LoadedComponent, reason: String) -> CommandError {
        self.sandboxes.remove(&comp.entity_type);
        tracing::warn!(entity_type = %comp.entity_type, "guest fault: {reason}");
        CommandError::GuestFault { entity_type: comp.entity_type.clone(), reason }
    }

    /// Recovery: latest snapshot of the current state version, then the events after
    /// it through `apply-events` in batches, then `on-recovery-completed`.
    fn recover(&mut self, comp: &Arc<LoadedComponent>, entity_type: &str, entity_id: &str) -> CommandResult<Entity> {
        let shared = self.shared.clone();
        let _permit = shared.recoveries.acquire();
        let pid = persistence_id(entity_type, entity_id);
        let failed = |reason: String| CommandError::RecoveryFailed { pid: pid.clone(), reason };
        let snapshot = shared.journal.load_snapshot(&pid).map_err(|e| failed(e.to_string()))?;
        let snapshot = snapshot.filter(|s| s.state_version == comp.info.state_version);
        let (mut state, mut seq, snap_seq) = match snapshot {
            Some(s) => (s.state, s.seq_nr, s.seq_nr),
            None => {
                let empty = self.sandbox(comp)?.empty_state();
                (empty.map_err(|f| self.fault(comp, f.0))?, 0, 0)
            }
        };
        loop {
            let stored = shared.journal.events(&pid, seq + 1, shared.config.recovery_batch).map_err(|e| failed(e.to_string()))?;
            if stored.is_empty() {
                break;
            }
            let mut events = Vec::with_capacity(stored.len());
            for e in stored {
                if e.seq_nr != seq + 1 {
                    return Err(failed(format!("journal has a gap: event {} follows {}", e.seq_nr, seq)));
                }
                seq = e.seq_nr;
                // Tags are for the journal's queries, not for the state: not handed in.
                events.push(handler::Event { manifest: e.manifest, payload: e.payload, tags: Vec::new() });
            }
            state = match self.sandbox(comp)?.apply_events(&state, &events) {
                Ok(Ok(s)) => s,
                Ok(Err(msg)) => return Err(failed(format!("apply-events refused a stored event: {msg}"))),
                Err(f) => return Err(self.fault(comp, f.0)),
            };
        }
        let effects = self.sandbox(comp)?.on_recovery_completed(&state).map_err(|f| self.fault(comp, f.0))?;
        shared.effects.run(&pid, effects);
        let state: Arc<[u8]> = state.into();
        shared.metrics.recoveries_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%pid, seq_nr = seq, from_snapshot = snap_seq, "recovered");
        Ok(Entity {
            entity_type: entity_type.to_string(),
            entity_id: entity_id.to_string(),
            component_version: comp.version,
            state_version: comp.info.state_version,
            state: state.clone(),
            seq_nr: seq,
            durable_state: state,
            durable_seq: seq,
            last_snapshot_seq: snap_seq,
            pending_batch: None,
            stash: VecDeque::new(),
            waiting: VecDeque::new(),
            draining: None,
            last_active: Instant::now(),
        })
    }

    /// Route a command to its entity, recovering the entity first if needed.
    fn deliver(&mut self, env: Envelope) {
        let pid = persistence_id(&env.entity_type, &env.entity_id);
        let comp = match self.component(&env.entity_type) {
            Ok(c) => c,
            Err(e) => return env.respond(&self.shared.metrics, Err(e)),
        };
        let mut entity = match self.entities.remove(&pid) {
            Some(e) => e,
            None => match self.recover(&comp, &env.entity_type, &env.entity_id) {
                Ok(e) => e,
                Err(e) => return env.respond(&self.shared.metrics, Err(e)),
            },
        };
        entity.last_active = Instant::now();
        if entity.draining.is_none() && entity.component_version != comp.version {
            if entity.state_version != comp.info.state_version {
                entity.draining = Some(Drain::Restart);
            } else {
                entity.component_version = comp.version;
            }
        }
        // `queue` only ever holds commands unstashed by an earlier one (no allocation
        // on the common path).
        let mut queue = VecDeque::new();
        let mut next = Some(env);
        while let Some(env) = next.take().or_else(|| queue.pop_front()) {
            if entity.draining.is_some() {
                entity.waiting.push_back(env);
                continue;
            }
            self.run_command(&comp, &pid, &mut entity, env, &mut queue);
        }
        self.entities.insert(pid.clone(), entity);
        self.finish_drain(&pid);
    }

    /// Passivate or restart a draining entity once nothing of it is pending.
    fn finish_drain(&mut self, pid: &str) {
        let ready = matches!(self.entities.get(pid), Some(e) if e.draining.is_some() && e.pending_batch.is_none());
        if !ready {
            return;
        }
        let e = self.entities.remove(pid).unwrap();
        for env in e.stash {
            env.respond(&self.shared.metrics, Err(CommandError::Dropped("entity stopped: stashed command dropped".into())));
        }
        self.shared.metrics.passivations_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(pid, reason = ?e.draining, "entity passivated");
        for env in e.waiting {
            self.deliver(env);
        }
    }

    /// Release now if nothing of the entity is pending, else with its newest batch.
    fn complete(&mut self, pid: &str, entity: &mut Entity, envelope: Envelope, result: CommandResult<Outcome>, effects: Vec<SideEffect>) {
        if entity.pending_batch.is_some() {
            entity.pending_batch = Some(self.open.id);
            self.open.completions.push(Completion { pid: pid.to_string(), envelope, result, effects });
        } else {
            self.shared.effects.run(pid, effects);
            envelope.respond(&self.shared.metrics, result);
        }
    }

    fn run_command(&mut self, comp: &Arc<LoadedComponent>, pid: &str, entity: &mut Entity, mut env: Envelope, queue: &mut VecDeque<Envelope>) {
        let command = handler::Command {
            manifest: std::mem::take(&mut env.manifest),
            payload: std::mem::take(&mut env.payload),
            metadata: CommandMetadata {
                entity_type: entity.entity_type.clone(),
                entity_id: entity.entity_id.clone(),
                sequence_nr: entity.seq_nr,
                timestamp_ms: env.accepted_ms,
            },
        };
        let decided = match self.sandbox(comp) {
            Ok(sb) => sb.handle_command(&entity.state, &command),
            Err(e) => return env.respond(&self.shared.metrics, Err(e)),
        };
        env.manifest = command.manifest;
        env.payload = command.payload;
        let effect = match decided {
            Ok(Ok(effect)) => effect,
            Ok(Err(msg)) => return env.respond(&self.shared.metrics, Err(CommandError::Malformed(msg))),
            Err(f) => {
                let err = self.fault(comp, f.0);
                return env.respond(&self.shared.metrics, Err(err));
            }
        };
        let outcome = match effect.reply {
            Some(Reply::Ok(bytes)) => Outcome::Reply(bytes),
            Some(Reply::Error(msg)) => Outcome::ReplyError(msg),
            None => Outcome::NoReply,
        };
        match effect.action {
            Action::Persist(events) if !events.is_empty() => {
                if let Err(e) = self.persist(comp, pid, entity, env.accepted_ms, events) {
                    return env.respond(&self.shared.metrics, Err(e));
                }
                entity.pending_batch = Some(self.open.id);
                self.open.completions.push(Completion { pid: pid.to_string(), envelope: env, result: Ok(outcome), effects: effect.then });
            }
            Action::Persist(_) | Action::None => self.complete(pid, entity, env, Ok(outcome), effect.then),
            Action::Unhandled => {
                let reason = match outcome {
                    Outcome::ReplyError(msg) => Some(msg),
                    _ => None,
                };
                let err = CommandError::Unhandled { entity_type: entity.entity_type.clone(), reason };
                self.complete(pid, entity, env, Err(err), Vec::new());
            }
            Action::Stash => {
                let cap = self.shared.config.stash_capacity;
                if entity.stash.len() >= cap {
                    env.respond(&self.shared.metrics, Err(CommandError::StashFull(pid.to_string(), cap)));
                } else {
                    entity.stash.push_back(env);
                }
                // Unstashing right after stashing would loop forever.
                if effect.stop {
                    entity.draining = Some(Drain::Stop);
                }
                return;
            }
        }
        if effect.unstash_all {
            while let Some(env) = entity.stash.pop_back() {
                queue.push_front(env);
            }
        }
        if effect.stop {
            entity.draining = Some(Drain::Stop);
        }
    }

    /// Validate the events, apply them to the newest state and add them (and a
    /// snapshot if the policy says so) to the open batch.
    fn persist(
        &mut self,
        comp: &Arc<LoadedComponent>,
        pid: &str,
        entity: &mut Entity,
        timestamp_ms: u64,
        mut events: Vec<handler::Event>,
    ) -> CommandResult<()> {
        let max = self.shared.config.max_event_bytes;
        for e in &events {
            if e.payload.len() > max {
                return Err(CommandError::Rejected(format!("event `{}` is {} bytes, the limit is {max}", e.manifest, e.payload.len())));
            }
            validate_label("manifest", &e.manifest, true).map_err(CommandError::Rejected)?;
            for t in &e.tags {
                validate_label("tag", t, false).map_err(CommandError::Rejected)?;
            }
        }
        // `apply-events` gets no tags, live as in recovery (see wit/entity.wit).
        let tags: Vec<Vec<String>> = events.iter_mut().map(|e| std::mem::take(&mut e.tags)).collect();
        let applied = self.sandbox(comp)?.apply_events(&entity.state, &events);
        let new_state = match applied {
            Ok(Ok(s)) => s,
            Ok(Err(msg)) => {
                return Err(CommandError::GuestFault { entity_type: comp.entity_type.clone(), reason: format!("apply-events failed: {msg}") })
            }
            Err(f) => return Err(self.fault(comp, f.0)),
        };
        let writer_id = &self.shared.writer_id;
        for (i, (e, tags)) in events.into_iter().zip(tags).enumerate() {
            self.open.write.events.push(NewEvent {
                persistence_id: pid.to_string(),
                seq_nr: entity.seq_nr + 1 + i as u64,
                timestamp_ms,
                writer_id: writer_id.clone(),
                manifest: e.manifest,
                tags,
                payload: e.payload,
            });
        }
        entity.seq_nr = self.open.write.events.last().map_or(entity.seq_nr, |e| e.seq_nr);
        entity.state = new_state.into();
        let every = if comp.info.snapshot_every > 0 { comp.info.snapshot_every } else { self.shared.config.snapshot_every };
        if every > 0 && entity.seq_nr - entity.last_snapshot_seq >= every {
            self.open.write.snapshots.retain(|s| s.persistence_id != pid);
            self.open.write.snapshots.push(Snapshot {
                persistence_id: pid.to_string(),
                seq_nr: entity.seq_nr,
                state_version: entity.state_version,
                timestamp_ms,
                state: entity.state.to_vec(),
            });
            entity.last_snapshot_seq = entity.seq_nr;
        }
        self.open.touched.insert(pid.to_string(), (entity.seq_nr, entity.state.clone()));
        Ok(())
    }
}
