//! Components: how entity code gets in, and how it is run.
//!
//! * `handler`  — [`EntityHandler`], what the engine calls (Wasm or native).
//! * `sandbox`  — the wasmtime engine, the per-call deadline and memory cap, and
//!   [`sandbox::Sandbox`], one live instance with typed calls into the handler.
//! * `store`    — every deployed version on disk, and the precompiled-code cache.
//! * `registry` — which version of each entity type is active; validates a new
//!   component (compile, instantiate, `describe`) before it replaces the old one.

pub mod handler;
pub mod registry;
pub mod sandbox;
pub mod store;

pub use handler::{EntityHandler, Fault, NativeFactory};
pub use registry::{Code, LoadedComponent, Registry};
pub use sandbox::{Sandbox, SandboxLimits};

/// Host-side bindings generated from `wit/entity.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "entity",
    });
}
