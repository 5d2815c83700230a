//! What the engine needs from entity code, whatever runs it.
//!
//! [`EntityHandler`] mirrors the WIT `handler` interface. The usual implementation is
//! a Wasm [`Sandbox`](super::Sandbox); a native implementation lets a Rust entity run
//! in-process through the same engine (the benchmark uses one to measure what the
//! sandbox costs).

use super::bindings::exports::mneme::entity::handler::{Command, Effect, EntityInfo, Event, SideEffect};
use super::event_batch::EventBatch;

/// A call into entity code failed (trap, deadline, memory cap, panic). The handler
/// must not be called again; the engine makes a new one.
#[derive(Debug, Clone)]
pub struct Fault(pub String);

/// What a command handler decided, and, when it could say so in the same call
/// (`decide.decision` of `wit/entity.wit`, lifted as is), the state after the
/// events it persists.
#[derive(Debug, wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
pub struct Decision {
    #[component(name = "effect")]
    pub effect: Effect,
    /// The state after the effect's events, when the effect persists events and
    /// the handler computed it; else the engine calls `apply_events`.
    #[component(name = "state-after")]
    pub state_after: Option<Vec<u8>>,
}

impl From<Effect> for Decision {
    /// A decision whose events the engine applies itself.
    fn from(effect: Effect) -> Decision {
        Decision { effect, state_after: None }
    }
}

pub trait EntityHandler: Send {
    fn describe(&mut self) -> Result<EntityInfo, Fault>;
    fn empty_state(&mut self) -> Result<Vec<u8>, Fault>;
    fn handle_command(&mut self, state: &[u8], command: &Command) -> Result<Result<Effect, String>, Fault>;
    /// `handle_command`, and the state after the persisted events if the handler
    /// can fold them in the same call. A handler that cannot leaves it to
    /// `apply_events`.
    fn handle_command_and_apply(&mut self, state: &[u8], command: &Command) -> Result<Result<Decision, String>, Fault> {
        Ok(self.handle_command(state, command)?.map(Decision::from))
    }
    fn apply_events(&mut self, state: &[u8], events: &[Event]) -> Result<Result<Vec<u8>, String>, Fault>;
    /// The same fold over a packed batch (recovery). A handler that cannot take
    /// one packed gets the events as a list.
    fn apply_event_batch(&mut self, state: &[u8], batch: &EventBatch) -> Result<Result<Vec<u8>, String>, Fault> {
        self.apply_events(state, &batch.to_events())
    }
    fn on_recovery_completed(&mut self, state: &[u8]) -> Result<Vec<SideEffect>, Fault>;
}

/// Makes a fresh native handler.
pub type NativeFactory = std::sync::Arc<dyn Fn() -> Box<dyn EntityHandler> + Send + Sync>;
