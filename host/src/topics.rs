//! Topics: where the `publish` side effect puts messages for readers outside the
//! engine (`GET /v1/topics/{topic}`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_ms;

/// A published message, as subscribers read it.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Position in the topic, from 1.
    pub seq_nr: u64,
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
        log.push_back(Published { seq_nr: *next, source: source.to_string(), timestamp_ms: now_ms(), payload });
        *next += 1;
        if log.len() > RETAIN {
            log.pop_front();
        }
    }

    /// Messages of `topic` with `seq_nr >= from`, oldest first.
    pub fn read(&self, topic: &str, from: u64, limit: usize) -> Vec<Published> {
        let map = self.inner.lock().unwrap();
        map.get(topic)
            .map(|(_, log)| log.iter().filter(|m| m.seq_nr >= from).take(limit).cloned().collect())
            .unwrap_or_default()
    }
}
