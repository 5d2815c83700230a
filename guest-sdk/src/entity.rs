//! The trait an entity implements (Akka's `EventSourcedBehavior`).

use serde::{de::DeserializeOwned, Serialize};

use crate::{Context, Effect, SideEffect};

/// An event-sourced entity: a command handler that decides and an event handler
/// that folds events into state.
///
/// Both handlers are pure. `handle` must not mutate anything: it looks at the state
/// and the command and *describes* what should happen; the host persists the events
/// and then calls `apply` for each of them. `apply` is also what recovery replays, so
/// it must be deterministic and must accept every event ever persisted.
///
/// Commands, events and state travel as JSON (serde), so `#[serde(tag = "type")]`
/// enums give callers `{"type":"Deposit","amount":100}`.
pub trait Entity {
    /// What callers send.
    type Command: DeserializeOwned;
    /// What is stored in the journal. Keep old variants decodable forever.
    type Event: Serialize + DeserializeOwned;
    /// The current state; also the snapshot form. `Default` is the state of an
    /// entity with no events.
    type State: Serialize + DeserializeOwned + Default + 'static;

    /// The entity type name, e.g. `"bank-account"`.
    const TYPE_NAME: &'static str;
    /// Version of the state's JSON shape. Bump it when `State` changes
    /// incompatibly: old snapshots are then ignored and state is rebuilt from events.
    const STATE_VERSION: u32 = 1;
    /// Take a snapshot every N events; 0 leaves it to the host's configuration.
    const SNAPSHOT_EVERY: u64 = 0;

    /// Decides what to do with `command` in `state`.
    fn handle(state: &Self::State, command: Self::Command, ctx: &Context) -> Effect<Self::Event>;

    /// Folds one event into the state. Must not fail for any persisted event.
    fn apply(state: Self::State, event: &Self::Event) -> Self::State;

    /// Tags stored with the event, for events-by-tag queries (projections).
    fn tags(_event: &Self::Event) -> Vec<String> {
        Vec::new()
    }

    /// Names the event's schema in the journal (e.g. `Deposited`), so a later
    /// version of the entity can recognise and upcast old events.
    ///
    /// The default reads the serialized event: the string `"type"` field of an
    /// object (`#[serde(tag = "type")]`); else the single key of an externally
    /// tagged enum (`{"Deposited":{..}}`); else a plain string (a unit variant);
    /// else `"event"`.
    fn manifest(event: &Self::Event) -> String {
        crate::codec::default_manifest(event)
    }

    /// Reads a stored event into the current `Event` type: the upcaster. The
    /// manifest names the schema the event was written with, so an older shape
    /// (say `Deposited` before `Deposited.v2` added a currency) is translated here,
    /// before `apply` sees it. The default decodes the payload as the current
    /// `Event` (JSON), whatever the manifest.
    ///
    /// Recovery calls this for every stored event, so it sets how fast a long
    /// history replays. serde decodes an internally tagged enum
    /// (`#[serde(tag = "type")]`) by buffering all of an object's fields before it
    /// picks the variant; an entity whose history is mostly a few kinds of event
    /// can decode those by manifest, straight into the variant's fields (the bank
    /// account example does so for `Deposited` and `Withdrawn`, and its guest
    /// folds deposits 1.6x-1.8x faster for it: BENCHMARKS.md).
    fn upcast(manifest: &str, payload: &[u8]) -> Result<Self::Event, String> {
        let _ = manifest;
        serde_json::from_slice(payload).map_err(|err| err.to_string())
    }

    /// Called once after recovery with the recovered state (Akka's
    /// `RecoveryCompleted` signal); the side effects run right away.
    fn on_recovery_completed(_state: &Self::State) -> Vec<SideEffect> {
        Vec::new()
    }
}
