//! mneme: an event-sourced entity engine whose entities are WebAssembly components.
//!
//! See ARCHITECTURE.md at the repository root for the map. The command path:
//! `api` -> `engine` -> `shard` (entity state machine) -> `component` (pure call)
//! -> `journal` (group commit by `writer`) -> `effects` -> reply.

pub mod component;
pub mod error;
pub mod journal;
pub mod metrics;
pub mod effects;
pub mod engine;
mod shard;
mod timers;

pub use engine::{Engine, EngineConfig, EntityState, Outcome};
pub use error::CommandError;
pub mod api;
pub mod cli;
pub mod server;
