//! Which component version serves each entity type.
//!
//! A new component is compiled, checked against the `entity` world (its imports
//! and exports, see `world`), linked, instantiated and asked to `describe()`
//! itself before it is stored and swapped in, so a broken or unfit upload is
//! refused with the reason and the old version keeps serving. Shards look up the active version
//! on every command: commands already running finish on the version they started
//! with, the next ones run on the new one.
//!
//! At start the stored active versions are *pending* until compiled (or loaded
//! from the precompiled cache): [`Registry::open_deferred`] lists them, and
//! [`Registry::load_stored`] loads them, so a server can listen meanwhile and
//! tell callers what it is still compiling ([`Registry::pending`]).
//!
//! Who decides the active version: HTTP deploys and rollbacks (`activate`) are
//! recorded in `ACTIVE` and win. The components directory only *adds* versions:
//! [`Registry::deploy_file`] deploys a file only when its bytes differ from every
//! stored version of its type, so a restart or an untouched file never undoes a
//! deploy or a rollback made over HTTP.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use wasmtime::component::Component;

use super::handler::{EntityHandler, NativeFactory};
use super::projection::ProjectionCode;
use super::projection::{ProjectionInfo, ProjectionSandbox};
use super::sandbox::{Runtime, WasmPre};
use super::store::{sha256_hex, write_atomically, ComponentStore};
use super::world;
use crate::clock::now_ms;
use crate::error::{CommandError, CommandResult};
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
    /// When this version was deployed (kept in the store: the same across restarts).
    pub deployed_at_ms: u64,
    /// When this process loaded it (compiled, or read the precompiled code).
    pub loaded_at_ms: u64,
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
    pre: ProjectionCode,
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
    /// Entity types not loaded yet, with what is being done for each.
    pending: RwLock<BTreeMap<String, String>>,
}

/// What deploying one file of a components directory did.
pub enum DirOutcome {
    /// Deployed as a new version and made active.
    Deployed(Arc<LoadedComponent>),
    /// A projection component, deployed as a new version of the projection its
    /// file names and made active (by the caller, which runs projections).
    Projection,
    /// Its bytes are those of a stored version: nothing changed.
    Known {
        version: u64,
    },
    Failed(String),
}

impl Registry {
    /// Open the store and load every stored active version (compiling what the
    /// cache does not hold).
    pub fn open(runtime: Arc<Runtime>, data_dir: &Path) -> anyhow::Result<Registry> {
        let registry = Registry::open_deferred(runtime, data_dir)?;
        registry.load_stored()?;
        Ok(registry)
    }

    /// Open the store without loading anything: every stored active version is
    /// pending until [`Registry::load_stored`] loads it.
    pub fn open_deferred(runtime: Arc<Runtime>, data_dir: &Path) -> anyhow::Result<Registry> {
        let store = ComponentStore::open(data_dir).context("opening the component store")?;
        let projection_store =
            ComponentStore::open_named(data_dir, "projections").context("opening the projection store")?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        runtime.engine().precompile_compatibility_hash().hash(&mut h);
        let engine_fingerprint = format!("{:016x}", h.finish());
        let pending = store
            .active()?
            .into_iter()
            .map(|v| (v.entity_type, format!("compiling stored version {}", v.version)))
            .collect();
        let registry = Registry {
            runtime,
            store,
            active: RwLock::default(),
            projection_store,
            projections: RwLock::default(),
            deploying: Mutex::new(()),
            engine_fingerprint,
            pending: RwLock::new(pending),
        };
        // Projections load here, before the engine starts their workers.
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

    /// Load every stored active version (each leaves the pending list when done,
    /// loaded or not).
    pub fn load_stored(&self) -> anyhow::Result<()> {
        for v in self.store.active()? {
            let loaded = std::fs::read(&v.path)
                .map_err(anyhow::Error::from)
                .and_then(|wasm| self.load(&v.entity_type, v.version, &wasm, v.meta()?.deployed_at_ms));
            match loaded {
                Ok(c) => {
                    tracing::info!(entity_type = %v.entity_type, version = v.version, "loaded component");
                    // A deploy or rollback made while this one compiled wins.
                    self.active.write().unwrap().entry(v.entity_type.clone()).or_insert(Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(entity_type = %v.entity_type, version = v.version, "cannot load stored component: {e}")
                }
            }
            self.pending.write().unwrap().remove(&v.entity_type);
        }
        Ok(())
    }

    /// Mark `entity_type` as pending (`what` says why), until [`Registry::done`].
    pub fn mark_pending(&self, entity_type: &str, what: String) {
        self.pending.write().unwrap().entry(entity_type.to_string()).or_insert(what);
    }

    /// `entity_type` is no longer pending.
    pub fn done(&self, entity_type: &str) {
        self.pending.write().unwrap().remove(entity_type);
    }

    /// What is still being loaded for `entity_type`, if anything.
    pub fn pending(&self, entity_type: &str) -> Option<String> {
        self.pending.read().unwrap().get(entity_type).cloned()
    }

    /// Every entity type still being loaded, with what is being done for it.
    pub fn pending_all(&self) -> Vec<(String, String)> {
        self.pending.read().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn get(&self, entity_type: &str) -> Option<Arc<LoadedComponent>> {
        self.active.read().unwrap().get(entity_type).cloned()
    }

    /// The active component of `entity_type`, or why a command for it cannot run:
    /// still loading (`NotReady`, the start-up or deploy says what), or unknown.
    pub fn require(&self, entity_type: &str) -> CommandResult<Arc<LoadedComponent>> {
        self.get(entity_type).ok_or_else(|| match self.pending(entity_type) {
            Some(what) => CommandError::NotReady { entity_type: entity_type.to_string(), what },
            None => CommandError::UnknownType(entity_type.to_string()),
        })
    }

    pub fn list(&self) -> Vec<Arc<LoadedComponent>> {
        let mut v: Vec<_> = self.active.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.entity_type.cmp(&b.entity_type));
        v
    }

    /// Per-component gauges for `/metrics`, labelled `entity_type`: which version
    /// is active (and its hash, an info gauge), how many are stored, its size.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let active = self.list();
        if active.is_empty() {
            return;
        }
        let stored: Vec<usize> = active.iter().map(|c| self.versions(&c.entity_type).len()).collect();
        let families = [
            ("component_active_version", "The version of the component serving this entity type."),
            ("component_versions", "Versions of this entity type's component stored (any can be activated)."),
            ("component_bytes", "Size of the active component's .wasm file."),
            ("component_info", "1 per entity type, labelled with its active version, hash and state version."),
        ];
        for (name, help) in families {
            let _ = writeln!(out, "# HELP mneme_{name} {help}\n# TYPE mneme_{name} gauge");
            for (c, stored) in active.iter().zip(&stored) {
                let t = &c.entity_type;
                let _ = match name {
                    "component_active_version" => writeln!(out, "mneme_{name}{{entity_type=\"{t}\"}} {}", c.version),
                    "component_versions" => writeln!(out, "mneme_{name}{{entity_type=\"{t}\"}} {stored}"),
                    "component_bytes" => writeln!(out, "mneme_{name}{{entity_type=\"{t}\"}} {}", c.size),
                    _ => writeln!(
                        out,
                        "mneme_{name}{{entity_type=\"{t}\",version=\"{}\",hash=\"{}\",state_version=\"{}\"}} 1",
                        c.version,
                        &c.hash[..c.hash.len().min(12)],
                        c.info.state_version
                    ),
                };
            }
        }
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
        self.deploy_locked(entity_type, wasm, &hash)
    }

    /// Deploy `wasm` only if its bytes differ from every stored version of
    /// `entity_type` (the components directory's rule). `Ok(Err(v))`: the bytes
    /// are those of stored version `v`; nothing is deployed and the active version
    /// stays what it is.
    pub fn deploy_new(&self, entity_type: &str, wasm: &[u8]) -> Result<Result<Arc<LoadedComponent>, u64>, String> {
        validate_entity_type(entity_type)?;
        let _guard = self.deploying.lock().unwrap();
        let hash = sha256_hex(wasm);
        if let Some(version) = self.store.version_with_hash(entity_type, &hash).map_err(|e| e.to_string())? {
            return Ok(Err(version));
        }
        self.deploy_locked(entity_type, wasm, &hash).map(Ok)
    }

    fn deploy_locked(&self, entity_type: &str, wasm: &[u8], hash: &str) -> Result<Arc<LoadedComponent>, String> {
        let next = self.versions(entity_type).last().map_or(1, |v| v + 1);
        let deployed_at_ms = now_ms();
        let loaded = self
            .load(entity_type, next, wasm, deployed_at_ms)
            .map_err(|e| format!("invalid component for `{entity_type}`: {e}"))?;
        let version = self
            .store
            .add_version(entity_type, wasm, deployed_at_ms)
            .map_err(|e| format!("cannot store component: {e}"))?;
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
            loaded_at_ms: now_ms(),
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
        let deployed_at_ms = stored.meta().map_err(|e| e.to_string())?.deployed_at_ms;
        let loaded = Arc::new(self.load(entity_type, version, &wasm, deployed_at_ms).map_err(|e| e.to_string())?);
        self.store.set_active(entity_type, version).map_err(|e| e.to_string())?;
        self.active.write().unwrap().insert(entity_type.to_string(), loaded.clone());
        tracing::info!(entity_type, version, "activated component version");
        Ok(loaded)
    }

    /// The bytes and the version of the stored version of `entity_type` (or of the
    /// projection `name`, `projection`) whose hash is `hash`, if one is stored.
    pub fn stored_by_hash(&self, projection: bool, name: &str, hash: &str) -> Result<Option<u64>, String> {
        let store = if projection { &self.projection_store } else { &self.store };
        for v in store.versions(name).map_err(|e| e.to_string())? {
            if v.meta().map_err(|e| e.to_string())?.sha256 == hash {
                return Ok(Some(v.version));
            }
        }
        Ok(None)
    }

    /// The bytes of a stored version of `entity_type` (or of the projection `name`).
    pub fn stored_wasm(&self, projection: bool, name: &str, version: u64) -> Result<Vec<u8>, String> {
        let store = if projection { &self.projection_store } else { &self.store };
        let stored = store
            .versions(name)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| format!("`{name}` has no version {version}"))?;
        std::fs::read(&stored.path).map_err(|e| e.to_string())
    }

    /// The `*.wasm` files of a components directory, in name order.
    pub fn dir_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading components directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Deploy one file of a components directory (its stem names the entity type)
    /// if its bytes differ from every stored version of that type.
    pub fn deploy_file(&self, path: &Path) -> (String, DirOutcome) {
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let outcome = match std::fs::read(path).map_err(|e| e.to_string()).and_then(|w| self.deploy_new(&name, &w)) {
            Ok(Ok(c)) => {
                tracing::info!(entity_type = %name, version = c.version, file = %path.display(), "deployed from the components directory");
                DirOutcome::Deployed(c)
            }
            Ok(Err(version)) => {
                tracing::debug!(entity_type = %name, version, file = %path.display(), "components directory: bytes of a stored version, nothing to deploy");
                DirOutcome::Known { version }
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "{e}");
                DirOutcome::Failed(e)
            }
        };
        (name, outcome)
    }

    /// Whether `wasm` is a projection component (anything else in a components
    /// directory is taken for an entity). Compiles it, into the cache a deploy
    /// then reads.
    pub fn is_projection(&self, wasm: &[u8]) -> bool {
        self.compile(wasm, &sha256_hex(wasm)).is_ok_and(|c| world::exports_projection(self.runtime.engine(), &c))
    }

    /// The stored version of projection `name` whose bytes are `wasm`, if any (the
    /// components directory's rule: such bytes are not deployed again).
    pub fn projection_version_of(&self, name: &str, wasm: &[u8]) -> Result<Option<u64>, String> {
        self.projection_store.version_with_hash(name, &sha256_hex(wasm)).map_err(|e| e.to_string())
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
        let deployed_at_ms = stored.meta().map_err(|e| e.to_string())?.deployed_at_ms;
        self.load_projection(name, version, &wasm, deployed_at_ms).map(Arc::new).map_err(|e| format!("{e:#}"))
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
        let deployed_at_ms = now_ms();
        let loaded = self
            .load_projection(name, next, wasm, deployed_at_ms)
            .map_err(|e| format!("invalid projection `{name}`: {e:#}"))?;
        let version = self
            .projection_store
            .add_version(name, wasm, deployed_at_ms)
            .map_err(|e| format!("cannot store projection: {e}"))?;
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

    fn load_projection(
        &self,
        name: &str,
        version: u64,
        wasm: &[u8],
        deployed_at_ms: u64,
    ) -> anyhow::Result<LoadedProjection> {
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
        Ok(LoadedProjection { name: name.to_string(), version, hash, size: wasm.len(), info, deployed_at_ms, pre })
    }

    /// Compile (or load precompiled), link, instantiate and describe.
    fn load(
        &self,
        entity_type: &str,
        version: u64,
        wasm: &[u8],
        deployed_at_ms: u64,
    ) -> anyhow::Result<LoadedComponent> {
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
            deployed_at_ms,
            loaded_at_ms: now_ms(),
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
