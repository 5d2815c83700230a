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

pub trait EntityHandler: Send {
    fn describe(&mut self) -> Result<EntityInfo, Fault>;
    fn empty_state(&mut self) -> Result<Vec<u8>, Fault>;
    fn handle_command(&mut self, state: &[u8], command: &Command) -> Result<Result<Effect, String>, Fault>;
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
