//! Which component version serves each entity type.
//!
//! A new component is compiled, checked against the `entity` world (its imports
//! and exports, see `world`), linked, instantiated and asked to `describe()`
//! itself before it is stored and swapped in, so a broken or unfit upload is
//! refused with the reason and the old version keeps serving. Shards look up the active version
//! on every command: commands already running finish on the version they started
//! with, the next ones run on the new one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use wasmtime::component::Component;

use super::handler::{EntityHandler, NativeFactory};
use super::projection::bindings::ProjectionPre;
use super::projection::{ProjectionInfo, ProjectionSandbox};
use super::sandbox::{HostState, Runtime, WasmPre};
use super::store::{sha256_hex, write_atomically, ComponentStore};
use crate::clock::now_ms;
use crate::names::{validate_entity_type, validate_label, validate_projection_name};

/// What a component says about itself (`describe()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityInfo {
    pub type_name: String,
    pub state_version: u32,
    pub snapshot_every: u64,
}

/// An active, validated component version.
pub struct LoadedComponent {
    pub entity_type: String,
    pub version: u64,
    pub hash: String,
    pub size: usize,
    pub info: EntityInfo,
    pub deployed_at_ms: u64,
    pub code: Code,
}

/// How instances of a component are made.
pub enum Code {
    Wasm(WasmPre),
    Native(NativeFactory),
}

impl LoadedComponent {
    /// A fresh handler for this version.
    pub fn instantiate(&self, runtime: &Runtime) -> Result<Box<dyn EntityHandler>, String> {
        match &self.code {
            Code::Wasm(pre) => Ok(Box::new(runtime.instantiate(pre)?)),
            Code::Native(factory) => Ok(factory()),
        }
    }
}

/// A validated version of a projection component.
pub struct LoadedProjection {
    /// The name it is deployed under.
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub size: usize,
    pub info: ProjectionInfo,
    pub deployed_at_ms: u64,
    pre: ProjectionPre<HostState>,
}

impl LoadedProjection {
    /// A fresh instance of this version.
    pub fn instantiate(&self, runtime: &Runtime) -> Result<ProjectionSandbox, String> {
        runtime.instantiate_projection(&self.pre)
    }
}

pub struct Registry {
    runtime: Arc<Runtime>,
    store: ComponentStore,
    active: RwLock<HashMap<String, Arc<LoadedComponent>>>,
    /// Projection components: every version on disk, and the active one of each.
    projection_store: ComponentStore,
    projections: RwLock<HashMap<String, Arc<LoadedProjection>>>,
    /// Serialises deploys so version numbers are assigned in order.
    deploying: Mutex<()>,
    engine_fingerprint: String,
}

impl Registry {
    pub fn open(runtime: Arc<Runtime>, data_dir: &Path) -> anyhow::Result<Registry> {
        let store = ComponentStore::open(data_dir).context("opening the component store")?;
        let projection_store =
            ComponentStore::open_named(data_dir, "projections").context("opening the projection store")?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        runtime.engine().precompile_compatibility_hash().hash(&mut h);
        let engine_fingerprint = format!("{:016x}", h.finish());
        let registry = Registry {
            runtime,
            store,
            active: RwLock::default(),
            projection_store,
            projections: RwLock::default(),
            deploying: Mutex::new(()),
            engine_fingerprint,
        };
        for v in registry.store.active()? {
            let wasm = std::fs::read(&v.path)?;
            match registry.load(&v.entity_type, v.version, &wasm) {
                Ok(c) => {
                    tracing::info!(entity_type = %v.entity_type, version = v.version, "loaded component");
                    registry.active.write().unwrap().insert(v.entity_type.clone(), Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(entity_type = %v.entity_type, version = v.version, "cannot load stored component: {e}")
                }
            }
        }
        for v in registry.projection_store.active()? {
            match registry.projection_version(&v.entity_type, v.version) {
                Ok(p) => {
                    tracing::info!(projection = %v.entity_type, version = v.version, "loaded projection");
                    registry.projections.write().unwrap().insert(v.entity_type.clone(), p);
                }
                Err(e) => {
                    tracing::error!(projection = %v.entity_type, version = v.version, "cannot load stored projection: {e}")
                }
            }
        }
        Ok(registry)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn get(&self, entity_type: &str) -> Option<Arc<LoadedComponent>> {
        self.active.read().unwrap().get(entity_type).cloned()
    }

    pub fn list(&self) -> Vec<Arc<LoadedComponent>> {
        let mut v: Vec<_> = self.active.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.entity_type.cmp(&b.entity_type));
        v
    }

    /// Every stored version number of `entity_type`.
    pub fn versions(&self, entity_type: &str) -> Vec<u64> {
        self.store.versions(entity_type).map(|v| v.into_iter().map(|v| v.version).collect()).unwrap_or_default()
    }

    /// Validate `wasm` and make it the active version of `entity_type`. Deploying
    /// the bytes that are already active changes nothing.
    pub fn deploy(&self, entity_type: &str, wasm: &[u8]) -> Result<Arc<LoadedComponent>, String> {
        validate_entity_type(entity_type)?;
        let _guard = self.deploying.lock().unwrap();
        let hash = sha256_hex(wasm);
        if let Some(current) = self.get(entity_type) {
            if current.hash == hash {
                return Ok(current);
            }
        }
        let next = self.versions(entity_type).last().map_or(1, |v| v + 1);
        let loaded =
            self.load(entity_type, next, wasm).map_err(|e| format!("invalid component for `{entity_type}`: {e}"))?;
        let version = self.store.add_version(entity_type, wasm).map_err(|e| format!("cannot store component: {e}"))?;
        debug_assert_eq!(version, next);
        let loaded = Arc::new(loaded);
        self.active.write().unwrap().insert(entity_type.to_string(), loaded.clone());
        tracing::info!(entity_type, version, hash = %&hash[..12], "deployed component");
        Ok(loaded)
    }

    /// Serve `entity_type` with natively compiled entity code (not stored; for
    /// embedding and for measuring what the sandbox costs).
    pub fn register_native(&self, entity_type: &str, factory: NativeFactory) -> Result<Arc<LoadedComponent>, String> {
        validate_entity_type(entity_type)?;
        let info = factory().describe().map_err(|f| f.0)?;
        let _guard = self.deploying.lock().unwrap();
        let version = self.get(entity_type).map_or(1, |c| c.version + 1);
        let loaded = Arc::new(LoadedComponent {
            entity_type: entity_type.to_string(),
            version,
            hash: "native".into(),
            size: 0,
            info: EntityInfo {
                type_name: info.type_name,
                state_version: info.state_version,
                snapshot_every: info.snapshot_every,
            },
            deployed_at_ms: now_ms(),
            code: Code::Native(factory),
        });
        self.active.write().unwrap().insert(entity_type.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Make an earlier stored version active again.
    pub fn activate(&self, entity_type: &str, version: u64) -> Result<Arc<LoadedComponent>, String> {
        validate_entity_type(entity_type)?;
        let _guard = self.deploying.lock().unwrap();
        let stored = self
            .store
            .versions(entity_type)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| format!("`{entity_type}` has no version {version}"))?;
        let wasm = std::fs::read(&stored.path).map_err(|e| e.to_string())?;
        let loaded = Arc::new(self.load(entity_type, version, &wasm).map_err(|e| e.to_string())?);
        self.store.set_active(entity_type, version).map_err(|e| e.to_string())?;
        self.active.write().unwrap().insert(entity_type.to_string(), loaded.clone());
        tracing::info!(entity_type, version, "activated component version");
        Ok(loaded)
    }

    /// Deploy every `*.wasm` of `dir` whose bytes differ from the active version of
    /// the type named by its file stem. Returns the failures.
    pub fn deploy_dir(&self, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
        let mut failures = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading components directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let result = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|wasm| self.deploy(&name, &wasm));
            if let Err(e) = result {
                tracing::error!(file = %path.display(), "{e}");
                failures.push((name, e));
            }
        }
        Ok(failures)
    }

    /// The active version of a projection.
    pub fn projection(&self, name: &str) -> Option<Arc<LoadedProjection>> {
        self.projections.read().unwrap().get(name).cloned()
    }

    /// The active version of every projection, by name.
    pub fn projections(&self) -> Vec<Arc<LoadedProjection>> {
        let mut v: Vec<_> = self.projections.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every stored version number of a projection.
    pub fn projection_versions(&self, name: &str) -> Vec<u64> {
        self.projection_store.versions(name).map(|v| v.into_iter().map(|v| v.version).collect()).unwrap_or_default()
    }

    /// A stored version of a projection, loaded (whether active or not).
    pub fn projection_version(&self, name: &str, version: u64) -> Result<Arc<LoadedProjection>, String> {
        if let Some(p) = self.projection(name).filter(|p| p.version == version) {
            return Ok(p);
        }
        let stored = self
            .projection_store
            .versions(name)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| format!("projection `{name}` has no version {version}"))?;
        let wasm = std::fs::read(&stored.path).map_err(|e| e.to_string())?;
        self.load_projection(name, version, &wasm).map(Arc::new).map_err(|e| format!("{e:#}"))
    }

    /// Validate `wasm` as a projection component (compile, check it against the
    /// `projection` world, instantiate, `describe`), store it as the next version
    /// of `name` and make it active. Deploying the bytes that are already active
    /// changes nothing. An invalid component is refused and nothing is stored.
    pub fn deploy_projection(&self, name: &str, wasm: &[u8]) -> Result<Arc<LoadedProjection>, String> {
        validate_projection_name(name)?;
        let _guard = self.deploying.lock().unwrap();
        let hash = sha256_hex(wasm);
        if let Some(current) = self.projection(name) {
            if current.hash == hash {
                return Ok(current);
            }
        }
        let next = self.projection_versions(name).last().map_or(1, |v| v + 1);
        let loaded =
            self.load_projection(name, next, wasm).map_err(|e| format!("invalid projection `{name}`: {e:#}"))?;
        let version =
            self.projection_store.add_version(name, wasm).map_err(|e| format!("cannot store projection: {e}"))?;
        debug_assert_eq!(version, next);
        let loaded = Arc::new(loaded);
        self.projections.write().unwrap().insert(name.to_string(), loaded.clone());
        tracing::info!(projection = name, version, hash = %&hash[..12], "deployed projection");
        Ok(loaded)
    }

    /// Make a stored version of a projection active again.
    pub fn activate_projection(&self, name: &str, version: u64) -> Result<Arc<LoadedProjection>, String> {
        validate_projection_name(name)?;
        let _guard = self.deploying.lock().unwrap();
        let loaded = self.projection_version(name, version)?;
        self.projection_store.set_active(name, version).map_err(|e| e.to_string())?;
        self.projections.write().unwrap().insert(name.to_string(), loaded.clone());
        tracing::info!(projection = name, version, "activated projection version");
        Ok(loaded)
    }

    fn load_projection(&self, name: &str, version: u64, wasm: &[u8]) -> anyhow::Result<LoadedProjection> {
        let hash = sha256_hex(wasm);
        let component = self.compile(wasm, &hash)?;
        let pre = self.runtime.prepare_projection(&component)?;
        let mut sandbox =
            self.runtime.instantiate_projection(&pre).map_err(|e| anyhow::anyhow!("instantiation failed: {e}"))?;
        let info = sandbox.describe().map_err(|e| anyhow::anyhow!("describe() failed: {e}"))?;
        anyhow::ensure!(!info.tags.is_empty(), "describe() names no tags: a projection reads the events of its tags");
        for tag in &info.tags {
            validate_label("tag", tag, false).map_err(|e| anyhow::anyhow!("describe(): {e}"))?;
        }
        Ok(LoadedProjection {
            name: name.to_string(),
            version,
            hash,
            size: wasm.len(),
            info,
            deployed_at_ms: now_ms(),
            pre,
        })
    }

    /// Compile (or load precompiled), link, instantiate and describe.
    fn load(&self, entity_type: &str, version: u64, wasm: &[u8]) -> anyhow::Result<LoadedComponent> {
        let hash = sha256_hex(wasm);
        let component = self.compile(wasm, &hash)?;
        let pre = self.runtime.prepare(&component)?;
        let mut sandbox = self.runtime.instantiate(&pre).map_err(|e| anyhow::anyhow!("instantiation failed: {e}"))?;
        let info = sandbox.describe().map_err(|e| anyhow::anyhow!("describe() failed: {}", e.0))?;
        sandbox.empty_state().map_err(|e| anyhow::anyhow!("empty-state() failed: {}", e.0))?;
        Ok(LoadedComponent {
            entity_type: entity_type.to_string(),
            version,
            hash,
            size: wasm.len(),
            info: EntityInfo {
                type_name: info.type_name,
                state_version: info.state_version,
                snapshot_every: info.snapshot_every,
            },
            deployed_at_ms: now_ms(),
            code: Code::Wasm(pre),
        })
    }

    /// Compiling a Python or JavaScript component takes seconds: keep the machine
    /// code on disk, keyed by the wasm hash and the engine's compatibility hash.
    fn compile(&self, wasm: &[u8], hash: &str) -> anyhow::Result<Component> {
        let engine = self.runtime.engine();
        let cached = self.store.cache_path(hash, &self.engine_fingerprint);
        if cached.exists() {
            // SAFETY: the cache directory is written only by `compile` below, atomically,
            // from `Component::serialize` of an engine with the same compatibility hash.
            match unsafe { Component::deserialize_file(engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(path = %cached.display(), "ignoring unusable precompiled component: {e}"),
            }
        }
        let component = Component::new(engine, wasm)?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = write_atomically(&cached, &bytes) {
                    tracing::warn!("cannot cache precompiled component: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialize component: {e}"),
        }
        Ok(component)
    }
}
