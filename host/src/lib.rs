//! mneme: an event-sourced entity engine whose entities are WebAssembly components.
//!
//! See ARCHITECTURE.md at the repository root for the map. The command path:
//! `api` -> `engine` -> `router` -> `shard` (entity state machine) -> `component`
//! (pure call) -> `writer` (group commit) -> `journal` -> `side_effects` -> reply,
//! and `outbox` delivering what entities send.
//! Modules are listed here from the top layer down; a module imports only from
//! modules below it (checked by `tests/architecture.rs`).

pub mod cli;
pub mod server;
pub mod scaffold;
pub mod net;
pub mod api;
pub mod forward;
pub mod subscribe;
pub mod deploys;
pub mod engine;
mod shard;
pub mod projection;
mod side_effects;
mod outbox;
mod writer;
pub mod topics;
mod router;
pub mod component;
pub mod cluster;
pub mod journal;
pub mod config;
pub mod metrics;
pub mod error;
pub mod names;
pub mod clock;
pub mod telemetry;

pub use config::EngineConfig;
pub use engine::Engine;
pub use error::CommandError;
pub use router::{EntityState, Outcome};
