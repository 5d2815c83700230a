//! Side effects: what entities ask the host to do once their events are durable
//! (Akka's `thenRun`): send a command to another entity, schedule one, publish a
//! message to a topic, log.
//!
//! A command's side effects are handled in two steps:
//!
//! 1. [`SideEffectRunner::plan`], while the shard carries the command out: `send`
//!    and `schedule` become outbox entries and `publish` a topic message, which
//!    the shard puts into the open batch with the command's events, so they are
//!    written in the same atomic frame. A command that persisted no events but
//!    has such side effects gets them written all the same (an outbox-only frame,
//!    or its entity's pending batch): every `send`, `schedule` and `publish` is
//!    durable before it is released.
//! 2. [`SideEffectRunner::release`], once that batch is durable (never during
//!    recovery's replay): entries go to the outbox, which delivers them (at least
//!    once, see `outbox.rs`), topic readers are woken, and `log` lines are
//!    written. Logs are not stored: at most once.
//!
//! Each entry's idempotency key is `{source}#{seq_nr}.{index}`: the sender's
//! sequence number after the command and the side effect's position in that
//! command's list, unique because each command that persists events has
//! sequence numbers of its own. A command that persisted nothing shares its
//! sequence number with others, so its keys add `~{writer id}-{n}`: this
//! process's writer id (fresh per process) and a counter, so they are unique
//! across restarts too. The key is stored in the entry, so every redelivery
//! carries the same one.
//!
//! Targets and topics that no URL could name are refused here: the side effect is
//! dropped with a warning (as before the outbox), the command is not failed.
//!
//! Architecture invariant: side effects reach other entities only through the
//! outbox; they never call into a shard or the engine.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::component::bindings::mneme::entity::types::{LogLevel, LogLine, SideEffect};
use crate::journal::{OutboxBatch, OutboxEntry, TopicMessage};
use crate::metrics::Metrics;
use crate::names::{validate_entity, validate_topic};
use crate::outbox::OutboxMsg;
use crate::topics::Topics;

pub struct SideEffectRunner {
    outbox: Sender<OutboxMsg>,
    topics: Arc<Topics>,
    metrics: Arc<Metrics>,
    /// This process's writer id, in the keys of commands without events.
    writer_id: String,
    /// Counts commands without events that sent something.
    nonce: AtomicU64,
}

/// What a command's side effects become: the records of its batch, and what to
/// release once that batch is durable.
#[derive(Default)]
pub struct Planned {
    /// Outbox entries and topic messages (no `done` or `applied` records).
    pub records: OutboxBatch,
    pub released: Released,
}

/// What is released when a batch is durable.
#[derive(Debug, Default)]
pub struct Released {
    entries: Vec<OutboxEntry>,
    published: u64,
    logs: Vec<LogLine>,
}

impl SideEffectRunner {
    pub fn new(outbox: Sender<OutboxMsg>, topics: Arc<Topics>, metrics: Arc<Metrics>, writer_id: String) -> Self {
        SideEffectRunner { outbox, topics, metrics, writer_id, nonce: AtomicU64::new(0) }
    }

    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// The records and releases of `side_effects` of the entity `source` (a
    /// persistence id) at `seq_nr`; `persisted` when the command persisted events
    /// (its keys need no counter, see the module docs).
    pub fn plan(
        &self,
        source: &str,
        seq_nr: u64,
        persisted: bool,
        accepted_ms: u64,
        side_effects: Vec<SideEffect>,
    ) -> Planned {
        let mut planned = Planned::default();
        let mut suffix = None;
        for (index, side_effect) in side_effects.into_iter().enumerate() {
            let (command, due_ms) = match side_effect {
                SideEffect::Send(c) => (c, 0),
                SideEffect::Schedule(t) => (t.command, accepted_ms.saturating_add(t.delay_ms).max(1)),
                SideEffect::Publish(m) => {
                    // A topic is read by URL: one that no URL can name is refused here.
                    if let Err(e) = validate_topic(&m.topic) {
                        tracing::warn!(entity = source, "publish side effect dropped: {e}");
                        continue;
                    }
                    planned.released.published += 1;
                    planned.records.published.push(TopicMessage {
                        topic: m.topic,
                        source: source.to_string(),
                        timestamp_ms: accepted_ms,
                        payload: m.payload,
                    });
                    continue;
                }
                SideEffect::Log(l) => {
                    planned.released.logs.push(l);
                    continue;
                }
            };
            if let Err(e) = validate_entity(&command.entity_type, &command.entity_id) {
                let what = if due_ms == 0 { "send" } else { "schedule" };
                tracing::warn!(entity = source, "{what} side effect dropped: {e}");
                continue;
            }
            let key = match (persisted, &mut suffix) {
                (true, _) => format!("{source}#{seq_nr}.{index}"),
                (false, Some(s)) => format!("{source}#{seq_nr}.{index}{s}"),
                (false, None) => {
                    let s = format!("~{}-{}", self.writer_id, self.nonce.fetch_add(1, Ordering::Relaxed));
                    let key = format!("{source}#{seq_nr}.{index}{s}");
                    suffix = Some(s);
                    key
                }
            };
            let entry = OutboxEntry {
                key,
                source: source.to_string(),
                source_seq_nr: seq_nr,
                due_ms,
                created_ms: accepted_ms,
                target_type: command.entity_type,
                target_id: command.entity_id,
                payload: command.payload,
            };
            planned.records.entries.push(entry.clone());
            planned.released.entries.push(entry);
        }
        planned
    }

    /// The batch holding the records of `released` is durable: hand the entries
    /// to the outbox, wake topic readers, write the logs.
    pub fn release(&self, source: &str, released: Released) {
        if !released.entries.is_empty() {
            self.metrics.outbox_entries_total.fetch_add(released.entries.len() as u64, Relaxed);
            // A stopped outbox (shutting down): the entries stay pending in the
            // journal and are delivered after the next start.
            let _ = self.outbox.send(OutboxMsg::Deliver(released.entries));
        }
        if released.published > 0 {
            self.metrics.topic_messages_total.fetch_add(released.published, Relaxed);
            self.topics.published(released.published);
        }
        for l in released.logs {
            let m = l.message;
            match l.level {
                LogLevel::Trace => tracing::trace!(entity = source, "{m}"),
                LogLevel::Debug => tracing::debug!(entity = source, "{m}"),
                LogLevel::Info => tracing::info!(entity = source, "{m}"),
                LogLevel::Warn => tracing::warn!(entity = source, "{m}"),
                LogLevel::Error => tracing::error!(entity = source, "{m}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::bindings::mneme::entity::types::{CommandTo, Message, Timer};

    fn runner() -> (SideEffectRunner, crossbeam_channel::Receiver<OutboxMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (SideEffectRunner::new(tx, Arc::default(), Arc::default(), "w1".into()), rx)
    }

    fn send(to: &str) -> SideEffect {
        SideEffect::Send(CommandTo { entity_type: "t".into(), entity_id: to.into(), payload: b"{}".to_vec() })
    }

    fn keys(p: &Planned) -> Vec<&str> {
        p.records.entries.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn keys_name_the_sender_its_sequence_number_and_the_side_effect() {
        let (r, _rx) = runner();
        let log = SideEffect::Log(LogLine { level: LogLevel::Info, message: "m".into() });
        let schedule = SideEffect::Schedule(Timer {
            delay_ms: 50,
            command: CommandTo { entity_type: "t".into(), entity_id: "b".into(), payload: vec![] },
        });
        let p = r.plan("a|1", 7, true, 1000, vec![send("b"), log, schedule, send("c")]);
        assert_eq!(keys(&p), ["a|1#7.0", "a|1#7.2", "a|1#7.3"]);
        assert_eq!(p.records.entries.iter().map(|e| e.due_ms).collect::<Vec<_>>(), [0, 1050, 0]);
        assert_eq!(p.released.logs.len(), 1);
        // Without events: a counter makes each command's keys unique.
        let p1 = r.plan("a|1", 7, false, 1000, vec![send("b"), send("c")]);
        let p2 = r.plan("a|1", 7, false, 1000, vec![send("b")]);
        assert_eq!(keys(&p1), ["a|1#7.0~w1-0", "a|1#7.1~w1-0"]);
        assert_eq!(keys(&p2), ["a|1#7.0~w1-1"]);
    }

    #[test]
    fn unnameable_targets_and_topics_are_dropped() {
        let (r, _rx) = runner();
        let bad_topic = SideEffect::Publish(Message { topic: "a/b".into(), payload: vec![] });
        let good_topic = SideEffect::Publish(Message { topic: "news".into(), payload: vec![] });
        let p = r.plan("a|1", 1, true, 0, vec![send("x/y"), bad_topic, good_topic, send("ok")]);
        assert_eq!(keys(&p), ["a|1#1.3"]);
        assert_eq!(p.records.published.len(), 1);
        assert_eq!(p.released.published, 1);
    }

    #[test]
    fn release_hands_the_entries_to_the_outbox() {
        let (r, rx) = runner();
        let p = r.plan("a|1", 1, true, 0, vec![send("b")]);
        r.release("a|1", p.released);
        match rx.try_recv() {
            Ok(OutboxMsg::Deliver(entries)) => assert_eq!(entries[0].key, "a|1#1.0"),
            _ => panic!("expected the entry at the outbox"),
        }
    }
}
