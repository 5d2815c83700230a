//! Things the host does for an entity after its events are durable.

use serde::Serialize;

/// Severity of a [`SideEffect::Log`] line, mapped to the host's tracing levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A side effect, described rather than performed: handlers are pure, so the host
/// runs these in order after the command's events are durable, and never during
/// recovery (Akka's `thenRun`).
///
/// `Send`, `Schedule` and `Publish` are written to the journal in the same atomic
/// write as the command's events (also when it persists none), so they survive a
/// crash: a sent or scheduled command is delivered at least once and applied by
/// its target at most once (the target sees the sender and an idempotency key in
/// [`crate::Context::origin`]); a published message is kept in the topic's durable
/// stream. `Log` is not stored: at most once.
///
/// Payloads are JSON when built with the constructors; the variants are public so
/// an entity can hand over bytes it encoded itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideEffect {
    /// Send a command to another entity (its reply is dropped): delivered once the
    /// sender's events are durable, again after a crash until delivered.
    Send { entity_type: String, entity_id: String, payload: Vec<u8> },
    /// Deliver a command later (`delay_ms` after the command was accepted). Stored
    /// with the events, so it survives restarts.
    Schedule { delay_ms: u64, entity_type: String, entity_id: String, payload: Vec<u8> },
    /// Publish a message to a topic: stored at the topic's next position, read with
    /// `GET /v1/topics/{topic}` and `.../stream`.
    Publish { topic: String, payload: Vec<u8> },
    /// Write a line through the host's logging (guests have no stdout).
    Log { level: Level, message: String },
}

impl SideEffect {
    /// Send `command` (as JSON) to `entity_type`/`entity_id`.
    ///
    /// # Panics
    /// If `command` cannot be encoded as JSON.
    pub fn send(entity_type: impl Into<String>, entity_id: impl Into<String>, command: &impl Serialize) -> Self {
        SideEffect::Send {
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            payload: crate::codec::to_json(command, "command to send"),
        }
    }

    /// Deliver `command` (as JSON) to `entity_type`/`entity_id` after `delay_ms`.
    ///
    /// # Panics
    /// If `command` cannot be encoded as JSON.
    pub fn schedule(
        delay_ms: u64,
        entity_type: impl Into<String>,
        entity_id: impl Into<String>,
        command: &impl Serialize,
    ) -> Self {
        SideEffect::Schedule {
            delay_ms,
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            payload: crate::codec::to_json(command, "scheduled command"),
        }
    }

    /// Publish `message` (as JSON) to `topic`.
    ///
    /// # Panics
    /// If `message` cannot be encoded as JSON.
    pub fn publish(topic: impl Into<String>, message: &impl Serialize) -> Self {
        SideEffect::Publish { topic: topic.into(), payload: crate::codec::to_json(message, "published message") }
    }

    /// A log line at `level`.
    pub fn log(level: Level, message: impl Into<String>) -> Self {
        SideEffect::Log { level, message: message.into() }
    }

    /// A log line at [`Level::Info`].
    pub fn info(message: impl Into<String>) -> Self {
        Self::log(Level::Info, message)
    }

    /// A log line at [`Level::Warn`].
    pub fn warn(message: impl Into<String>) -> Self {
        Self::log(Level::Warn, message)
    }
}
