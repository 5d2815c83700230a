//! Components: how entity code gets in, and how it is run.
//!
//! * `handler`  — [`EntityHandler`], what the engine calls (Wasm or native).
//! * `event_batch` — [`EventBatch`], events packed into one buffer for recovery's
//!   `apply-event-batch`.
//! * `sandbox`  — the wasmtime engine, the per-call deadline, memory, table and
//!   stack caps, and [`sandbox::Sandbox`], one live instance with typed calls into
//!   the handler.
//! * `limits`   — [`SandboxLimits`] and the check of what `handle-command` returns
//!   (reply size, events per command).
//! * `world`    — the deploy-time check of a component's imports and exports
//!   against the `entity` world (a WIT version mneme implements: 0.2.x, or 0.1.x
//!   through `legacy`, which converts the earlier world's types) or the
//!   `projection` world; no WASI.
//! * `projection` — [`ProjectionSandbox`]: one live instance of a projection
//!   component (`wit/projection.wit`), with its view reads served by the host.
//! * `view`     — [`ViewReader`], how the host answers a projection's `get`.
//! * `store`    — every deployed version on disk, and the precompiled-code cache.
//! * `registry` — which version of each entity type is active; validates a new
//!   component (compile, check its world, instantiate, `describe`) before it
//!   replaces the old one.

pub mod event_batch;
pub mod handler;
mod legacy;
pub mod limits;
pub mod projection;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod view;
pub mod world;

pub use event_batch::EventBatch;
pub use handler::{Decision, EntityHandler, Fault, NativeFactory};
pub use limits::SandboxLimits;
pub use projection::{ProjectionFault, ProjectionInfo, ProjectionSandbox};
pub use registry::{Code, LoadedComponent, LoadedProjection, Registry};
pub use sandbox::Sandbox;
pub use view::ViewReader;

/// Host-side bindings generated from `wit/entity.wit` (`mneme:entity@0.2.0`).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/entity.wit",
        world: "entity",
    });
}

/// Host-side bindings of the earlier world, `wit/v0.1/entity.wit`
/// (`mneme:entity@0.1.0`), for components built against it.
pub mod bindings_v01 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "entity",
    });
}
