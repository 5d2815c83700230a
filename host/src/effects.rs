//! Side effects: what entities ask the host to do once their events are durable.
//!
//! The shard calls [`Effects::run`] only after the write that produced the effects
//! returned from fsync (or right away for a command that persisted nothing and had
//! nothing pending), and never while replaying events during recovery.
//! Sends and timers are at-most-once and at-least-once respectively: a send is
//! lost if the host dies before the target entity persists it; a timer is stored
//! durably and removed after delivery, so a crash in between delivers it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::component::bindings::mneme::entity::types::{LogLevel, SideEffect};
use crate::engine::Router;
use crate::journal::{validate_entity_id, validate_entity_type};
use crate::timers::{TimerMsg, TimerRequest};

pub struct Effects {
    pub(crate) router: Router,
    pub(crate) topics: Topics,
    pub(crate) timers: Sender<TimerMsg>,
}

impl Effects {
    pub fn run(&self, source: &str, effects: Vec<SideEffect>) {
        for effect in effects {
            match effect {
                SideEffect::Send(c) => {
                    if let Err(e) = validate_entity_type(&c.entity_type).and_then(|_| validate_entity_id(&c.entity_id)) {
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
                SideEffect::Publish(m) => self.topics.publish(&m.topic, source, m.payload),
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

/// A published message, as subscribers read it.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Position in the topic, from 1.
    pub seq: u64,
    /// Persistence id of the entity that published it.
    pub source: String,
    pub timestamp_ms: u64,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Recent messages per topic, in memory: the newest `RETAIN` of each topic can be
/// read from a position. Not durable: a subscriber that needs every message builds
/// on events by tag instead.
#[derive(Default)]
pub struct Topics {
    inner: Mutex<HashMap<String, (u64, VecDeque<Published>)>>,
}

const RETAIN: usize = 1000;

impl Topics {
    pub fn publish(&self, topic: &str, source: &str, payload: Vec<u8>) {
        let mut map = self.inner.lock().unwrap();
        let (next, log) = map.entry(topic.to_string()).or_insert((1, VecDeque::new()));
        log.push_back(Published { seq: *next, source: source.to_string(), timestamp_ms: crate::engine::now_ms(), payload });
        *next += 1;
        if log.len() > RETAIN {
            log.pop_front();
        }
    }

    /// Messages of `topic` with `seq >= from`, oldest first.
    pub fn read(&self, topic: &str, from: u64, limit: usize) -> Vec<Published> {
        let map = self.inner.lock().unwrap();
        map.get(topic).map(|(_, log)| log.iter().filter(|m| m.seq >= from).take(limit).cloned().collect()).unwrap_or_default()
    }
}
