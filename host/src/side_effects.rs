//! Side effects: what entities ask the host to do once their events are durable
//! (Akka's `thenRun`): send a command to another entity, schedule one, publish a
//! message to a topic, log.
//!
//! The shard calls [`SideEffectRunner::run`] only after the write that produced the
//! side effects returned from fsync (or right away for a command that persisted
//! nothing and had nothing pending), and never while replaying events during
//! recovery. Sends are at-most-once: a send is lost if the host dies before the
//! target entity persists it. Timers are at-least-once: stored durably and removed
//! after delivery, so a crash in between delivers again.
//!
//! Architecture invariant: side effects reach other entities only through the
//! [`Router`]; they never call into a shard or the engine.

use crossbeam_channel::Sender;

use crate::component::bindings::mneme::entity::types::{LogLevel, SideEffect};
use crate::names::{validate_entity, validate_topic};
use crate::router::Router;
use crate::timers::{TimerMsg, TimerRequest};
use crate::topics::Topics;

pub struct SideEffectRunner {
    pub router: Router,
    pub topics: Topics,
    pub timers: Sender<TimerMsg>,
}

impl SideEffectRunner {
    /// Run `side_effects` of the entity `source` (a persistence id), in order.
    pub fn run(&self, source: &str, side_effects: Vec<SideEffect>) {
        for side_effect in side_effects {
            match side_effect {
                SideEffect::Send(c) => {
                    if let Err(e) = validate_entity(&c.entity_type, &c.entity_id) {
                        tracing::warn!(entity = source, "send side effect dropped: {e}");
                        continue;
                    }
                    self.router.tell(c.entity_type, c.entity_id, c.payload);
                }
                SideEffect::Schedule(t) => {
                    let _ = self.timers.send(TimerMsg::Schedule(TimerRequest {
                        delay_ms: t.delay_ms,
                        entity_type: t.command.entity_type,
                        entity_id: t.command.entity_id,
                        payload: t.command.payload,
                    }));
                }
                SideEffect::Publish(m) => {
                    // A topic is read by URL: one that no URL can name is refused here.
                    if let Err(e) = validate_topic(&m.topic) {
                        tracing::warn!(entity = source, "publish side effect dropped: {e}");
                        continue;
                    }
                    self.topics.publish(&m.topic, source, m.payload)
                }
                SideEffect::Log(l) => {
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
    }
}
