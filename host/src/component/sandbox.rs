//! Running guest code: the wasmtime engine and one live instance per entity type
//! per shard.
//!
//! Guests get no WASI: every import other than `mneme:entity/host` is defined as a
//! trap, so a guest that touches files, clocks or sockets faults instead of doing it.
//! Every call runs under an epoch deadline and a memory cap. A call that traps
//! leaves the instance unusable (wasmtime forbids re-entering it), so the caller
//! drops the [`Sandbox`] and instantiates a fresh one; the entity's state bytes live
//! in the host and are untouched by the fault.

use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

use super::bindings::exports::mneme::entity::handler;
use super::bindings::mneme::entity::host;
use super::bindings::{Entity, EntityPre};
use super::handler::{EntityHandler, Fault};

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call into the guest.
    pub call_timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { memory_bytes: 128 << 20, call_timeout: Duration::from_secs(2) }
    }
}

/// Per-instance host data: the memory limiter and what the guest told us before a trap.
pub struct HostState {
    memory_cap: usize,
    memory_denied: bool,
    fault: Option<String>,
}

impl host::Host for HostState {
    fn report_fault(&mut self, message: String) {
        // Keep it bounded: this string ends up in an HTTP error body.
        let mut m = message;
        m.truncate(2000);
        self.fault = Some(m);
    }
}

impl super::bindings::mneme::entity::types::Host for HostState {}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The shared engine and linker. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: SandboxLimits,
}

impl Runtime {
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Async component-model support doubles the cost of a call; mneme's calls are synchronous.
        config.concurrency_support(false);
        // `MNEME_WASM_PROFILER=perfmap` writes /tmp/perf-PID.map so `perf report`
        // names guest functions (BENCHMARKS.md, "Profiles").
        if std::env::var("MNEME_WASM_PROFILER").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        Entity::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let runtime = Arc::new(Runtime { engine, linker, limits });
        spawn_epoch_ticker(Arc::downgrade(&runtime));
        Ok(runtime)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// Link a compiled component: imports it has beyond `mneme:entity/host` (WASI
    /// pulled in by a language's standard library) become traps.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<EntityPre<HostState>> {
        let mut linker = self.linker.clone();
        linker.define_unknown_imports_as_traps(component)?;
        let pre = linker.instantiate_pre(component)?;
        Ok(EntityPre::new(pre)?)
    }

    /// A fresh, empty instance.
    pub fn instantiate(&self, pre: &EntityPre<HostState>) -> Result<Sandbox, String> {
        let state = HostState { memory_cap: self.limits.memory_bytes, memory_denied: false, fault: None };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(deadline_ticks(self.limits));
        let entity = pre.instantiate(&mut store).map_err(|e| fault_reason(&e, store.data(), self.limits))?;
        Ok(Sandbox { store, entity, limits: self.limits })
    }
}

/// The call timeout in epoch ticks (+1: the current tick may be nearly over).
fn deadline_ticks(limits: SandboxLimits) -> u64 {
    (limits.call_timeout.as_millis() as u64 / EPOCH_TICK.as_millis() as u64).max(1) + 1
}

fn spawn_epoch_ticker(runtime: Weak<Runtime>) {
    std::thread::Builder::new()
        .name("mneme-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match runtime.upgrade() {
                Some(r) => r.engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn epoch thread");
}

/// Explain a failed call in words a caller can act on.
fn fault_reason(err: &wasmtime::Error, state: &HostState, limits: SandboxLimits) -> String {
    if state.memory_denied {
        let detail = state.fault.as_deref().map(|m| format!(" (guest reported: {m})")).unwrap_or_default();
        return format!("memory limit of {} MiB exceeded{detail}", limits.memory_bytes >> 20);
    }
    if let Some(msg) = &state.fault {
        return format!("guest panicked: {msg}");
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("deadline of {} ms exceeded", limits.call_timeout.as_millis()),
        Some(trap) => format!("trap: {trap}"),
        None => format!("{err:#}"),
    }
}

/// One live instance of an entity component.
pub struct Sandbox {
    store: Store<HostState>,
    entity: Entity,
    limits: SandboxLimits,
}

impl Sandbox {
    fn call<R>(
        &mut self,
        f: impl FnOnce(&handler::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        self.store.set_epoch_deadline(deadline_ticks(self.limits));
        let data = self.store.data_mut();
        data.fault = None;
        data.memory_denied = false;
        let guest = self.entity.mneme_entity_handler();
        f(guest, &mut self.store).map_err(|e| Fault(fault_reason(&e, self.store.data(), self.limits)))
    }
}

impl EntityHandler for Sandbox {
    fn describe(&mut self) -> Result<handler::EntityInfo, Fault> {
        self.call(|g, s| g.call_describe(s))
    }

    fn empty_state(&mut self) -> Result<Vec<u8>, Fault> {
        self.call(|g, s| g.call_empty_state(s))
    }

    fn handle_command(
        &mut self,
        state: &[u8],
        command: &handler::Command,
    ) -> Result<Result<handler::Effect, String>, Fault> {
        self.call(|g, s| g.call_handle_command(s, state, command))
    }

    fn apply_events(&mut self, state: &[u8], events: &[handler::Event]) -> Result<Result<Vec<u8>, String>, Fault> {
        self.call(|g, s| g.call_apply_events(s, state, events))
    }

    fn on_recovery_completed(&mut self, state: &[u8]) -> Result<Vec<handler::SideEffect>, Fault> {
        self.call(|g, s| g.call_on_recovery_completed(s, state))
    }
}
