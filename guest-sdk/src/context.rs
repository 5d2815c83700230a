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
}

impl Context {
    /// Builds a context, e.g. for native unit tests of a command handler.
    pub fn new(
        entity_type: impl Into<String>,
        entity_id: impl Into<String>,
        sequence_nr: u64,
        timestamp_ms: u64,
    ) -> Self {
        Context { entity_type: entity_type.into(), entity_id: entity_id.into(), sequence_nr, timestamp_ms }
    }
}
