//! An entity's life on a shard: recovery (latest snapshot, then replay), durable
//! state queries, idle passivation, passivation of the least recently used beyond
//! the memory bound, and draining (stop or restart once nothing of the entity is
//! pending).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::clock::now_ms;
use crate::component::{EventBatch, LoadedComponent};
use crate::error::{CommandError, CommandResult};
use crate::journal::read_ahead::ReadAhead;
use crate::journal::{Journal, JournalError};
use crate::names::{partition_of, persistence_id};
use crate::router::{EntityState, Outcome};

use super::batch::PendingReply;
use super::entity::Entity;
use super::Shard;

/// What replaying the journal gave: the state, its sequence number, and the
/// snapshot it started from.
pub(super) struct Recovered {
    state: Vec<u8>,
    seq_nr: u64,
    snapshot_seq_nr: u64,
    /// When the recovery started (for `mneme_recovery_seconds`).
    started: std::time::Instant,
}

impl Shard {
    /// Recovery: latest snapshot of the current state version, then the events after
    /// it through `apply-events` in batches, then `on-recovery-completed`.
    pub(super) fn recover(
        &mut self,
        comp: &Arc<LoadedComponent>,
        entity_type: &str,
        entity_id: &str,
    ) -> CommandResult<Entity> {
        let pid = persistence_id(entity_type, entity_id);
        let recovered = self.recover_state(comp, &pid)?;
        self.complete_recovery(comp, entity_type, entity_id, &pid, recovered)
    }

    /// Snapshot and replay, under a recovery permit; no side effects.
    fn recover_state(&mut self, comp: &LoadedComponent, pid: &str) -> CommandResult<Recovered> {
        let shared = self.shared.clone();
        let _permit = shared.recoveries.acquire();
        let started = std::time::Instant::now();
        let (state, snapshot_seq_nr) = self.recovery_start(comp, pid)?;
        let (state, seq_nr) = self.replay(comp, pid, state, snapshot_seq_nr)?;
        let metrics = &self.shared.metrics;
        if snapshot_seq_nr > 0 {
            metrics.recoveries_from_snapshot_total.fetch_add(1, Relaxed);
        }
        metrics.recovery_events_replayed_total.fetch_add(seq_nr - snapshot_seq_nr, Relaxed);
        Ok(Recovered { state, seq_nr, snapshot_seq_nr, started })
    }

    /// `on-recovery-completed`, then the live entity.
    fn complete_recovery(
        &mut self,
        comp: &Arc<LoadedComponent>,
        entity_type: &str,
        entity_id: &str,
        pid: &str,
        recovered: Recovered,
    ) -> CommandResult<Entity> {
        let Recovered { state, seq_nr, snapshot_seq_nr, started } = recovered;
        let side_effects = self.handler(comp)?.on_recovery_completed(&state).map_err(|f| self.fault(comp, f.0))?;
        self.shared.metrics.recoveries_total.fetch_add(1, Relaxed);
        let took = started.elapsed();
        self.shared.metrics.recovery_seconds.observe(took);
        // The `recover` span, when a command's trace asked for one.
        let span = tracing::Span::current();
        span.record("events", seq_nr - snapshot_seq_nr);
        span.record("snapshot_seq_nr", snapshot_seq_nr);
        tracing::debug!(
            %pid,
            seq_nr,
            snapshot = if snapshot_seq_nr > 0 { "used" } else { "none" },
            snapshot_seq_nr,
            events_replayed = seq_nr - snapshot_seq_nr,
            component_version = comp.version,
            took_ms = took.as_millis() as u64,
            "recovered"
        );
        let (version, state_version) = (comp.version, comp.info.state_version);
        let mut entity =
            Entity::recovered(entity_type, entity_id, version, state_version, state.into(), seq_nr, snapshot_seq_nr);
        // Like those of a command without events: what must survive a crash is
        // written first, and the entity's next replies wait for it.
        let planned = self.shared.side_effects.plan(pid, seq_nr, false, now_ms(), side_effects);
        if planned.records.is_empty() {
            self.shared.side_effects.release(pid, planned.released);
        } else {
            self.batches.add_outbox(pid, planned.records, None, seq_nr, entity.state.clone());
            let release = PendingReply {
                pid: pid.to_string(),
                envelope: None,
                result: Ok(Outcome::NoReply),
                side_effects: planned.released,
            };
            entity.pending_batch = Some(self.batches.hold_reply(release));
        }
        Ok(entity)
    }

    /// The state recovery starts from: the latest snapshot taken with the current
    /// state version, else the component's empty state.
    fn recovery_start(&mut self, comp: &LoadedComponent, pid: &str) -> CommandResult<(Vec<u8>, u64)> {
        let snapshot = self.shared.journal.load_snapshot(pid).map_err(|e| journal_failed(pid, e))?;
        match snapshot {
            Some(s) if s.state_version == comp.info.state_version => return Ok((s.state, s.seq_nr)),
            Some(s) => {
                self.shared.metrics.recovery_snapshots_ignored_total.fetch_add(1, Relaxed);
                tracing::debug!(
                    %pid,
                    snapshot_seq_nr = s.seq_nr,
                    snapshot_state_version = s.state_version,
                    state_version = comp.info.state_version,
                    "snapshot ignored: taken with another state version; rebuilding from the events"
                );
            }
            None => {}
        }
        let empty = self.handler(comp)?.empty_state();
        Ok((empty.map_err(|f| self.fault(comp, f.0))?, 0))
    }

    /// Apply every event after `seq_nr` to `state`, `recovery_batch` events per call.
    /// A history longer than one batch is read a batch ahead on a thread of its own
    /// (`mneme-replay-N`, for this recovery only, `journal/read_ahead.rs`), so the
    /// journal read of the next batch overlaps the guest's fold of this one; a
    /// history of one batch (most entities, and every one recovered from a recent
    /// snapshot) starts no thread.
    fn replay(
        &mut self,
        comp: &LoadedComponent,
        pid: &str,
        mut state: Vec<u8>,
        mut seq_nr: u64,
    ) -> CommandResult<(Vec<u8>, u64)> {
        let limit = self.shared.config.recovery_batch;
        let mut batch = read_batch(&*self.shared.journal, pid, seq_nr + 1, limit, EventBatch::default())?;
        if batch.len() < limit {
            return self.fold(comp, pid, state, seq_nr, &batch);
        }
        // The batch last folded goes back to the reader to be filled again: a batch
        // is tens of KiB, allocated once per recovery, not once per batch.
        let spare = Arc::new(Mutex::new(None::<EventBatch>));
        let (journal, owned_pid, reused) = (self.shared.journal.clone(), pid.to_owned(), spare.clone());
        let read = move |from| {
            let batch = reused.lock().unwrap().take().unwrap_or_default();
            read_batch(&*journal, &owned_pid, from, limit, batch)
        };
        let mut reader = ReadAhead::spawn(format!("mneme-replay-{}", self.index), Box::new(read)).map_err(|e| {
            CommandError::JournalUnavailable(format!("recovery of `{pid}`: could not start its reader: {e}"))
        })?;
        loop {
            let (full, next) = (batch.len() == limit, seq_nr + 1 + batch.len() as u64);
            if full {
                reader.ask(next);
            }
            (state, seq_nr) = self.fold(comp, pid, state, seq_nr, &batch)?;
            if !full {
                return Ok((state, seq_nr));
            }
            let folded = std::mem::replace(&mut batch, reader.take(next).map_err(|e| journal_failed(pid, e))??);
            *spare.lock().unwrap() = Some(folded);
        }
    }

    /// One batch through the guest's `apply-event-batch`.
    fn fold(
        &mut self,
        comp: &LoadedComponent,
        pid: &str,
        state: Vec<u8>,
        seq_nr: u64,
        batch: &EventBatch,
    ) -> CommandResult<(Vec<u8>, u64)> {
        if batch.is_empty() {
            return Ok((state, seq_nr));
        }
        let state = match self.handler(comp)?.apply_event_batch(&state, batch) {
            Ok(Ok(s)) => s,
            Ok(Err(msg)) => return Err(recovery_failed(pid, format!("apply-events refused a stored event: {msg}"))),
            Err(f) => return Err(self.fault(comp, f.0)),
        };
        Ok((state, seq_nr + batch.len() as u64))
    }

    /// The entity's durable state, recovering it if it is not in memory. An entity
    /// without events (never created) is answered from a recovery that is dropped:
    /// asking about any number of ids keeps nothing in memory.
    pub(super) fn durable_state(&mut self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let pid = persistence_id(entity_type, entity_id);
        let lease = self.lease(&pid)?;
        if let Some(e) = self.entities.get(&pid) {
            if e.epoch == lease || !e.is_quiet() {
                return Ok(durable(e));
            }
            self.entities.remove(&pid);
        }
        let comp = self.component(entity_type)?;
        let recovered = self.recover_state(&comp, &pid)?;
        if recovered.seq_nr == 0 {
            return Ok(EntityState { seq_nr: 0, state: recovered.state.into(), component_version: comp.version });
        }
        let mut entity = self.complete_recovery(&comp, entity_type, entity_id, &pid, recovered)?;
        entity.epoch = lease;
        let state = durable(&entity);
        self.entities.insert(pid, entity);
        Ok(state)
    }

    /// With several hosts, the epoch of the lease under which this host owns the
    /// partition of `pid` (0 when it is alone); `NotOwner` when it does not own it.
    /// An entity in memory whose epoch differs was recovered under an earlier
    /// lease: another host may have written since, so it is recovered again.
    pub(super) fn lease(&self, pid: &str) -> CommandResult<u64> {
        let Some(ownership) = &self.shared.ownership else { return Ok(0) };
        let partition = partition_of(pid);
        ownership.epoch(partition).ok_or_else(|| CommandError::NotOwner {
            pid: pid.to_string(),
            partition,
            holder: ownership.holder(partition).map(|h| h.node).filter(|n| n != ownership.node()),
        })
    }

    /// Drop entities idle longer than the idle timeout with nothing pending.
    pub(super) fn passivate_idle(&mut self) {
        let timeout = self.shared.config.idle_timeout;
        let passivated = self.entities.take_idle(Instant::now(), timeout, Entity::is_quiet).len() as u64;
        self.shared.metrics.passivations_total.fetch_add(passivated, Relaxed);
    }

    /// Over the memory bound: passivate quiet entities, least recently used first,
    /// until the shard is within it. An entity with work pending cannot leave and
    /// goes to the back; each entity is looked at once at most, so this is O(1) per
    /// entity passivated, without allocation.
    pub(super) fn passivate_least_recently_used(&mut self) {
        let mut passivated = 0;
        let mut looked_at = 0;
        let len = self.entities.len();
        while self.entities.len() > self.max_entities && looked_at < len {
            looked_at += 1;
            let Some((pid, entity)) = self.entities.pop_front() else { break };
            if entity.is_quiet() {
                passivated += 1;
            } else {
                // Work pending: it is active (and goes back in `last_active` order).
                let mut entity = entity;
                entity.last_active = Instant::now();
                self.entities.insert(pid, entity);
            }
        }
        if passivated > 0 {
            self.shared.metrics.passivations_total.fetch_add(passivated, Relaxed);
            tracing::debug!(shard = self.index, passivated, "passivated least recently used entities");
        }
    }

    /// Passivate or restart a draining entity once nothing of it is pending.
    pub(super) fn finish_drain(&mut self, pid: &str) {
        let ready = matches!(self.entities.get(pid), Some(e) if e.draining.is_some() && e.pending_batch.is_none());
        if !ready {
            return;
        }
        let e = self.entities.remove(pid).unwrap();
        for env in e.stash {
            let dropped = CommandError::Dropped("entity stopped: stashed command dropped".into());
            self.respond(env, Err(dropped));
        }
        self.shared.metrics.passivations_total.fetch_add(1, Relaxed);
        tracing::debug!(pid, reason = ?e.draining, "entity passivated");
        for env in e.waiting {
            self.deliver(env);
        }
    }
}

/// A journal read failed during recovery: storage trouble is temporary (503),
/// damage is reported as such.
fn journal_failed(pid: &str, e: JournalError) -> CommandError {
    match e {
        JournalError::Storage(m) | JournalError::Locked(m) | JournalError::Fenced(m) => {
            CommandError::JournalUnavailable(format!("recovery of `{pid}`: {m}"))
        }
        JournalError::Corrupt(m) => CommandError::JournalCorrupt(format!("recovery of `{pid}`: journal corrupt: {m}")),
        JournalError::Invalid(m) => recovery_failed(pid, m),
    }
}

/// Up to `limit` events of `pid` from `from`, packed into `batch` (emptied first);
/// a sequence number out of order is a gap in the journal.
fn read_batch(
    journal: &dyn Journal,
    pid: &str,
    from: u64,
    limit: usize,
    mut batch: EventBatch,
) -> CommandResult<EventBatch> {
    batch.clear();
    let mut gap = None;
    journal
        .for_each_event(pid, from, limit, &mut |e| {
            if gap.is_none() && e.seq_nr != from + batch.len() as u64 {
                gap = Some((e.seq_nr, from - 1 + batch.len() as u64));
            }
            batch.push(e.manifest, e.payload);
        })
        .map_err(|e| journal_failed(pid, e))?;
    match gap {
        Some((found, after)) => Err(recovery_failed(pid, format!("journal has a gap: event {found} follows {after}"))),
        None => Ok(batch),
    }
}

fn durable(e: &Entity) -> EntityState {
    EntityState { seq_nr: e.durable_seq_nr, state: e.durable_state.clone(), component_version: e.component_version }
}

fn recovery_failed(pid: &str, reason: String) -> CommandError {
    CommandError::RecoveryFailed { pid: pid.to_string(), reason }
}
