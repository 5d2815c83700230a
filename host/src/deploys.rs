//! Deploys and activations of components and projections, the same on every host.
//!
//! Alone, a deploy changes this host's registry and nothing else. With several
//! hosts (`--advertise`) the database also holds every version deployed to any of
//! them and the hosts' active version of each entity type and projection
//! (`mneme.components`, `mneme.active_components`):
//!
//! * a deploy or an activation over HTTP, or a file of the components directory
//!   changed while serving, is made here first (so it is validated and compiled),
//!   then becomes the hosts' active version;
//! * at start, the components directory only seeds: a version becomes the hosts'
//!   one only if they have none of that name yet;
//! * every host follows the database ([`follow`], every [`FOLLOW_EVERY`]): a
//!   version it has stored is activated, one it has not is fetched and deployed.
//!
//! So the last deploy or activation on any host wins, on every host, within about a
//! second (plus the compile on hosts that have not seen the bytes); a restarted
//! host, whatever its components directory holds, serves what the others serve.
//!
//! Architecture invariant: reaches components through the registry and the
//! projections, the database only through `journal::postgres::leases`.

use std::sync::Arc;
use std::time::Duration;

use crate::component::LoadedComponent;
use crate::engine::Engine;
use crate::journal::postgres::leases::SharedComponent;
use crate::projection::{ProjectionError, ProjectionStatus};

/// How often a host compares what it serves with the hosts' active versions.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Share a version this host has just made active (`only_if_none`: seed).
fn share(
    engine: &Engine,
    projection: bool,
    name: &str,
    hash: &str,
    wasm: &[u8],
    only_if_none: bool,
) -> Result<(), String> {
    let Some(ownership) = engine.ownership() else { return Ok(()) };
    let Some(leases) = ownership.leases() else { return Ok(()) };
    let component = SharedComponent { projection, name: name.to_string(), hash: hash.to_string() };
    leases.share_component(&component, wasm, ownership.node(), only_if_none).map(drop).map_err(|e| {
        format!("deployed on this host, but not shared with the other hosts (it will be undone here): {e}")
    })
}

/// Deploy `wasm` as the active version of `entity_type` (on every host).
pub fn deploy_component(engine: &Engine, entity_type: &str, wasm: &[u8]) -> Result<Arc<LoadedComponent>, String> {
    let loaded = engine.registry().deploy(entity_type, wasm)?;
    share(engine, false, entity_type, &loaded.hash, wasm, false)?;
    Ok(loaded)
}

/// Make a stored version of `entity_type` active again (on every host).
pub fn activate_component(engine: &Engine, entity_type: &str, version: u64) -> Result<Arc<LoadedComponent>, String> {
    let loaded = engine.registry().activate(entity_type, version)?;
    if engine.ownership().is_some() {
        let wasm = engine.registry().stored_wasm(false, entity_type, version)?;
        share(engine, false, entity_type, &loaded.hash, &wasm, false)?;
    }
    Ok(loaded)
}

/// A file of the components directory changed while serving: share what it made active.
pub fn hot_loaded(engine: &Engine, loaded: &LoadedComponent) -> Result<(), String> {
    if engine.ownership().is_none() {
        return Ok(());
    }
    let wasm = engine.registry().stored_wasm(false, &loaded.entity_type, loaded.version)?;
    share(engine, false, &loaded.entity_type, &loaded.hash, &wasm, false)
}

/// Deploy a projection (on every host).
pub fn deploy_projection(engine: &Engine, name: &str, wasm: &[u8]) -> Result<ProjectionStatus, ProjectionError> {
    let status = engine.projections().deploy(name, wasm)?;
    if let Some(p) = engine.registry().projection(name) {
        share(engine, true, name, &p.hash, wasm, false).map_err(ProjectionError::Invalid)?;
    }
    Ok(status)
}

/// Make a stored version of a projection active again (on every host).
pub fn activate_projection(engine: &Engine, name: &str, version: u64) -> Result<ProjectionStatus, ProjectionError> {
    let status = engine.projections().activate(name, version)?;
    if let (Some(_), Some(p)) = (engine.ownership(), engine.registry().projection(name)) {
        let wasm = engine.registry().stored_wasm(true, name, version).map_err(ProjectionError::Invalid)?;
        share(engine, true, name, &p.hash, &wasm, false).map_err(ProjectionError::Invalid)?;
    }
    Ok(status)
}

/// After the start: what this host serves becomes the hosts' version of every
/// name they have none of (the first host's components directory seeds them).
pub fn seed(engine: &Engine) {
    if engine.ownership().is_none() {
        return;
    }
    let registry = engine.registry();
    for c in registry.list() {
        match registry.stored_wasm(false, &c.entity_type, c.version) {
            Ok(wasm) => {
                if let Err(e) = share(engine, false, &c.entity_type, &c.hash, &wasm, true) {
                    tracing::warn!(entity_type = %c.entity_type, "{e}");
                }
            }
            Err(e) => tracing::warn!(entity_type = %c.entity_type, "not shared: {e}"),
        }
    }
    for p in registry.projections() {
        match registry.stored_wasm(true, &p.name, p.version) {
            Ok(wasm) => {
                if let Err(e) = share(engine, true, &p.name, &p.hash, &wasm, true) {
                    tracing::warn!(projection = %p.name, "{e}");
                }
            }
            Err(e) => tracing::warn!(projection = %p.name, "not shared: {e}"),
        }
    }
}

/// Serve the hosts' active version of every entity type and projection: activate
/// it if stored here, else fetch, validate and deploy it. Blocking (a compile).
pub fn follow(engine: &Engine) {
    let Some(leases) = engine.ownership().and_then(|o| o.leases()) else { return };
    let shared = match leases.active_components() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("reading the hosts' components: {e}"),
    };
    let registry = engine.registry();
    for c in shared {
        let here = if c.projection {
            registry.projection(&c.name).map(|p| p.hash.clone())
        } else {
            registry.get(&c.name).map(|l| l.hash.clone())
        };
        if here.as_deref() == Some(c.hash.as_str()) {
            continue;
        }
        let result = match registry.stored_by_hash(c.projection, &c.name, &c.hash) {
            Ok(Some(version)) if c.projection => {
                engine.projections().activate(&c.name, version).map(drop).map_err(|e| e.to_string())
            }
            Ok(Some(version)) => registry.activate(&c.name, version).map(drop),
            Ok(None) => match leases.component_wasm(&c) {
                Ok(wasm) if c.projection => {
                    engine.projections().deploy(&c.name, &wasm).map(drop).map_err(|e| e.to_string())
                }
                Ok(wasm) => registry.deploy(&c.name, &wasm).map(drop),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        let what = if c.projection { "projection" } else { "component" };
        match result {
            Ok(()) => {
                tracing::info!(name = %c.name, hash = %&c.hash[..12.min(c.hash.len())], "{what} of the other hosts now served here")
            }
            Err(e) => tracing::error!(name = %c.name, "{what} of the other hosts not loaded here: {e}"),
        }
    }
}
