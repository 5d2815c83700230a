//! Running a command: route it to its entity (recovering it first if needed), call
//! the pure handler, carry out the effect it describes (persist into the open
//! batch, reply, stash, unstash, stop), and release the reply and side effects
//! only when everything they depend on is durable.
//!
//! Side effects that must survive a crash (`send`, `schedule`, `publish`) go into
//! the open batch with the command's events; a command that persisted no events
//! but has such side effects puts them there alone (an outbox-only write, or its
//! entity's pending batch). A command another entity sent carries an idempotency
//! key: it is checked before the handler runs (a key the entity applied before is
//! acknowledged without running it again), and recorded in the batch with the
//! events and side effects it produced.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::component::bindings::exports::mneme::entity::handler;
use crate::component::bindings::mneme::entity::types::{self as wit, Action, CommandMetadata, Reply};
use crate::component::{Decision, LoadedComponent};
use crate::error::{CommandError, CommandResult};
use crate::journal::{AppliedKey, JournalError, NewEvent, Snapshot};
use crate::names::{persistence_id, validate_label};
use crate::router::{Envelope, Origin, Outcome};
use crate::side_effects::Released;
use crate::telemetry;

use super::batch::PendingReply;
use super::entity::{Drain, Entity};
use super::Shard;

impl Shard {
    /// Route a command to its entity, recovering the entity first if needed.
    pub(super) fn deliver(&mut self, env: Envelope) {
        self.shared.metrics.command_queue_seconds.observe(env.accepted.elapsed());
        let pid = persistence_id(&env.entity_type, &env.entity_id);
        let comp = match self.component(&env.entity_type) {
            Ok(c) => c,
            Err(e) => return self.respond(env, Err(e)),
        };
        let lease = match self.lease(&pid) {
            Ok(lease) => lease,
            Err(e) => return self.respond(env, Err(e)),
        };
        let mut entity = match self.entities.remove(&pid) {
            // One with work pending keeps it: if its lease is gone, its write is
            // fenced and it recovers after that.
            Some(e) if e.epoch == lease || !e.is_quiet() => e,
            _ => match telemetry::recover_span(&env.span)
                .in_scope(|| self.recover(&comp, &env.entity_type, &env.entity_id))
            {
                Ok(mut e) => {
                    e.epoch = lease;
                    e
                }
                Err(e) => return self.respond(env, Err(e)),
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

    /// Count the outcome and hand it to whoever waits for it.
    pub(super) fn respond(&self, env: Envelope, result: CommandResult<Outcome>) {
        self.shared.metrics.count_outcome(&result);
        if !env.span.is_disabled() {
            match &result {
                Ok(Outcome::ReplyError(_)) => env.span.record("outcome", "reply-error"),
                Ok(_) => env.span.record("outcome", "ok"),
                Err(e) => env.span.record("outcome", tracing::field::display(e)),
            };
        }
        // An unknown type gets no metrics of its own (see `TypeMetrics`).
        if !matches!(result, Err(CommandError::UnknownType(_))) {
            self.with_type(&env.entity_type, |m| {
                m.commands_total.fetch_add(1, Relaxed);
                if result.is_err() {
                    m.commands_failed_total.fetch_add(1, Relaxed);
                }
                m.command_seconds.observe(env.accepted.elapsed());
            });
        }
        env.reply_to.send(result);
    }

    fn run_command(
        &mut self,
        comp: &Arc<LoadedComponent>,
        pid: &str,
        entity: &mut Entity,
        mut env: Envelope,
        queue: &mut VecDeque<Envelope>,
    ) {
        if let Some(origin) = &env.origin {
            match self.already_applied(pid, origin) {
                Ok(false) => {}
                Ok(true) => {
                    // Delivered again (after a crash, before its delivery was
                    // recorded as done): acknowledged, not applied twice.
                    self.shared.metrics.outbox_duplicates_total.fetch_add(1, Relaxed);
                    tracing::debug!(pid, key = %origin.key, "command applied before: acknowledged again");
                    return self.reply_when_durable(pid, entity, env, Ok(Outcome::NoReply), Released::default());
                }
                Err(e) => return self.respond(env, Err(e)),
            }
        }
        let decision = match self.decide(comp, entity, &mut env) {
            Ok(decision) => decision,
            Err(e) => return self.respond(env, Err(e)),
        };
        if matches!(decision.effect.action, Action::Stash) {
            // Unstashing right after stashing would loop forever: no unstash here.
            return self.stash(pid, entity, env, decision.effect.stop);
        }
        let (unstash_all, stop) = (decision.effect.unstash_all, decision.effect.stop);
        self.carry_out(comp, pid, entity, env, decision);
        if unstash_all {
            while let Some(env) = entity.stash.pop_back() {
                queue.push_front(env);
            }
        }
        if stop {
            entity.draining = Some(Drain::Stop);
        }
    }

    /// Whether the entity applied the command of `origin` before: in a batch not
    /// yet durable, or in the journal.
    fn already_applied(&self, pid: &str, origin: &Origin) -> CommandResult<bool> {
        if self.batches.has_applied(pid, &origin.key) {
            return Ok(true);
        }
        self.shared.journal.is_applied(pid, &origin.key).map_err(|e| match e {
            JournalError::Corrupt(m) => CommandError::JournalCorrupt(format!("journal corrupt: {m}")),
            e => CommandError::JournalUnavailable(format!("checking idempotency key `{}`: {e}", origin.key)),
        })
    }

    /// Persist / none / unhandled, and the reply and side effects that go with it.
    fn carry_out(&mut self, comp: &LoadedComponent, pid: &str, entity: &mut Entity, env: Envelope, decision: Decision) {
        let Decision { effect, state_after } = decision;
        let outcome = match effect.reply {
            Some(Reply::Ok(bytes)) => Outcome::Reply(bytes),
            Some(Reply::Error(msg)) => Outcome::ReplyError(msg),
            None => Outcome::NoReply,
        };
        let shared = self.shared.clone();
        let runner = &shared.side_effects;
        match effect.action {
            Action::Persist(events) if !events.is_empty() => {
                env.span.record("events", events.len());
                if let Err(e) = self.persist(comp, pid, entity, env.accepted_ms, events, state_after) {
                    return self.respond(env, Err(e));
                }
                env.span.record("seq_nr", entity.seq_nr);
                let planned = runner.plan(pid, entity.seq_nr, true, env.accepted_ms, effect.then);
                let applied = applied_key(pid, entity.seq_nr, &env.origin);
                self.batches.add_outbox(pid, planned.records, applied, entity.seq_nr, entity.state.clone());
                let reply = PendingReply {
                    pid: pid.to_string(),
                    envelope: Some(env),
                    result: Ok(outcome),
                    side_effects: planned.released,
                };
                entity.pending_batch = Some(self.batches.hold_reply(reply));
            }
            // (`Stash` is handled before `carry_out` is called.)
            Action::Persist(_) | Action::None | Action::Stash => {
                env.span.record("seq_nr", entity.seq_nr);
                let planned = runner.plan(pid, entity.seq_nr, false, env.accepted_ms, effect.then);
                if planned.records.is_empty() {
                    return self.reply_when_durable(pid, entity, env, Ok(outcome), planned.released);
                }
                // No events, but side effects to store: written before they are
                // released, with the key of the command that sent this one.
                let applied = applied_key(pid, entity.seq_nr, &env.origin);
                self.batches.add_outbox(pid, planned.records, applied, entity.seq_nr, entity.state.clone());
                let reply = PendingReply {
                    pid: pid.to_string(),
                    envelope: Some(env),
                    result: Ok(outcome),
                    side_effects: planned.released,
                };
                entity.pending_batch = Some(self.batches.hold_reply(reply));
            }
            Action::Unhandled => {
                let reason = match outcome {
                    Outcome::ReplyError(msg) => Some(msg),
                    _ => None,
                };
                let err = CommandError::Unhandled { entity_type: entity.entity_type.clone(), reason };
                self.reply_when_durable(pid, entity, env, Err(err), Released::default());
            }
        }
    }

    /// Call the command handler on the entity's newest state (and have it apply
    /// the events it persists in the same call, if it can).
    fn decide(&mut self, comp: &LoadedComponent, entity: &Entity, env: &mut Envelope) -> CommandResult<Decision> {
        let command = handler::Command {
            manifest: std::mem::take(&mut env.manifest),
            payload: std::mem::take(&mut env.payload),
            metadata: CommandMetadata {
                entity_type: entity.entity_type.clone(),
                entity_id: entity.entity_id.clone(),
                sequence_nr: entity.seq_nr,
                timestamp_ms: env.accepted_ms,
                origin: env
                    .origin
                    .as_ref()
                    .map(|o| wit::Origin { source: o.source.clone(), idempotency_key: o.key.clone() }),
            },
        };
        env.span.record("component.version", comp.version);
        let started = Instant::now();
        let decided = telemetry::handle_command_span(&env.span)
            .in_scope(|| self.handler(comp).map(|h| h.handle_command_and_apply(&entity.state, &command)));
        self.with_type(&comp.entity_type, |m| m.guest_call_seconds.observe(started.elapsed()));
        // The envelope may be stashed and handed in again: give the command back.
        env.manifest = command.manifest;
        env.payload = command.payload;
        match decided? {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(msg)) => Err(CommandError::Malformed(msg)),
            Err(f) => Err(self.fault(comp, f.0)),
        }
    }

    fn stash(&self, pid: &str, entity: &mut Entity, env: Envelope, stop: bool) {
        let cap = self.shared.config.stash_capacity;
        if entity.stash.len() >= cap {
            self.respond(env, Err(CommandError::StashFull(pid.to_string(), cap)));
        } else {
            entity.stash.push_back(env);
        }
        if stop {
            entity.draining = Some(Drain::Stop);
        }
    }

    /// Release now if nothing of the entity is pending, else with its newest batch.
    fn reply_when_durable(
        &mut self,
        pid: &str,
        entity: &mut Entity,
        envelope: Envelope,
        result: CommandResult<Outcome>,
        side_effects: Released,
    ) {
        if entity.pending_batch.is_some() {
            let reply = PendingReply { pid: pid.to_string(), envelope: Some(envelope), result, side_effects };
            entity.pending_batch = Some(self.batches.hold_reply(reply));
        } else {
            self.shared.side_effects.release(pid, side_effects);
            self.respond(envelope, result);
        }
    }

    /// Validate the events, apply them to the newest state (unless the handler
    /// did, `state_after`) and add them (and a snapshot if the policy says so) to
    /// the open batch.
    fn persist(
        &mut self,
        comp: &LoadedComponent,
        pid: &str,
        entity: &mut Entity,
        timestamp_ms: u64,
        mut events: Vec<handler::Event>,
        state_after: Option<Vec<u8>>,
    ) -> CommandResult<()> {
        self.check_events(&events)?;
        // `apply-events` gets no tags, live as in recovery (see wit/entity.wit).
        let tags: Vec<Vec<String>> = events.iter_mut().map(|e| std::mem::take(&mut e.tags)).collect();
        let new_state = match state_after {
            Some(state) => state,
            None => self.apply(comp, &entity.state, &events)?,
        };
        let first = entity.seq_nr + 1;
        entity.seq_nr += events.len() as u64;
        entity.state = new_state.into();
        let snapshot = self.snapshot_due(comp, pid, entity, timestamp_ms);
        let shared = self.shared.clone();
        let new_events = (events.into_iter().zip(tags).enumerate()).map(|(i, (e, tags))| NewEvent {
            persistence_id: pid.to_string(),
            seq_nr: first + i as u64,
            timestamp_ms,
            writer_id: shared.writer_id.clone(),
            manifest: e.manifest,
            tags,
            payload: e.payload,
        });
        self.batches.add_events(pid, new_events, entity.seq_nr, entity.state.clone(), snapshot);
        Ok(())
    }

    /// The journal's rules for events: size, manifest and tag names.
    fn check_events(&self, events: &[handler::Event]) -> CommandResult<()> {
        let max = self.shared.config.max_event_bytes;
        for e in events {
            if e.payload.len() > max {
                let size = e.payload.len();
                return Err(CommandError::Rejected(format!(
                    "event `{}` is {size} bytes, the limit is {max}",
                    e.manifest
                )));
            }
            validate_label("manifest", &e.manifest, true).map_err(CommandError::Rejected)?;
            for t in &e.tags {
                validate_label("tag", t, false).map_err(CommandError::Rejected)?;
            }
        }
        Ok(())
    }

    /// The state after `events`, by the entity's own event handler.
    fn apply(&mut self, comp: &LoadedComponent, state: &[u8], events: &[handler::Event]) -> CommandResult<Vec<u8>> {
        let started = Instant::now();
        let applied = self.handler(comp)?.apply_events(state, events);
        self.with_type(&comp.entity_type, |m| m.guest_call_seconds.observe(started.elapsed()));
        match applied {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(msg)) => Err(CommandError::GuestFault {
                entity_type: comp.entity_type.clone(),
                reason: format!("apply-events failed: {msg}"),
            }),
            Err(f) => Err(self.fault(comp, f.0)),
        }
    }

    /// A snapshot of the entity's newest state, when the snapshot policy says so.
    fn snapshot_due(
        &self,
        comp: &LoadedComponent,
        pid: &str,
        entity: &mut Entity,
        timestamp_ms: u64,
    ) -> Option<Snapshot> {
        let every =
            if comp.info.snapshot_every > 0 { comp.info.snapshot_every } else { self.shared.config.snapshot_every };
        if every == 0 || entity.seq_nr - entity.last_snapshot_seq_nr < every {
            return None;
        }
        entity.last_snapshot_seq_nr = entity.seq_nr;
        Some(Snapshot {
            persistence_id: pid.to_string(),
            seq_nr: entity.seq_nr,
            state_version: entity.state_version,
            timestamp_ms,
            state: entity.state.to_vec(),
        })
    }
}

/// The record that `pid`, now at `seq_nr`, applied the command of `origin`.
fn applied_key(pid: &str, seq_nr: u64, origin: &Option<Origin>) -> Option<AppliedKey> {
    origin.as_ref().map(|o| AppliedKey {
        persistence_id: pid.to_string(),
        key: o.key.clone(),
        source: o.source.clone(),
        seq_nr,
    })
}
