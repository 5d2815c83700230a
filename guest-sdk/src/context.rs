//! What the host tells a handler about the command it is deciding on.

/// Identity and time for one command.
///
/// Guests have no clock and no randomness (replays must rebuild the same state),
/// so everything time- or identity-dependent comes from here. Put what you need
/// into your events: `apply` never sees a `Context`, because during recovery the
/// time is the time of the replay, not of the original command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The entity type (the component's name), e.g. `bank-account`.
    pub entity_type: String,
    /// The entity id within its type, e.g. `acc-42`.
    pub entity_id: String,
    /// Sequence number of the last event applied to the state handed in (0 = no events).
    pub sequence_nr: u64,
    /// When the host accepted the command, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Who sent the command, when an entity did ([`crate::SideEffect::send`] or
    /// [`crate::SideEffect::schedule`]); `None` for commands from outside (HTTP).
    pub origin: Option<Origin>,
}

/// The sender of a command and the command's idempotency key.
///
/// The host delivers an entity's commands at least once and drops a command
/// whose key the target has already applied, so a handler sees each key at most
/// once in a command that persisted something. Check [`Origin::source`] before
/// trusting a command meant to come only from another entity (an HTTP caller has
/// no origin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Persistence id (`{entity-type}|{entity-id}`) of the sending entity.
    pub source: String,
    /// Unique per sent command, the same on every redelivery.
    pub idempotency_key: String,
}

impl Context {
    /// Builds a context, e.g. for native unit tests of a command handler.
    pub fn new(
        entity_type: impl Into<String>,
        entity_id: impl Into<String>,
        sequence_nr: u64,
        timestamp_ms: u64,
    ) -> Self {
        Context {
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            sequence_nr,
            timestamp_ms,
            origin: None,
        }
    }

    /// The same context for a command sent by the entity `source` (a persistence
    /// id) with idempotency key `key`, e.g. for native unit tests.
    pub fn sent_by(mut self, source: impl Into<String>, key: impl Into<String>) -> Self {
        self.origin = Some(Origin { source: source.into(), idempotency_key: key.into() });
        self
    }

    /// Persistence id of the entity that sent the command (`None`: it came from outside).
    pub fn source(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| o.source.as_str())
    }

    /// The command's idempotency key, when an entity sent it.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| o.idempotency_key.as_str())
    }

    /// The persistence id of an entity of this context's type: `{entity_type}|{id}`.
    pub fn persistence_id_of(&self, entity_id: &str) -> String {
        format!("{}|{entity_id}", self.entity_type)
    }
}
