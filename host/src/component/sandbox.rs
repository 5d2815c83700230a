//! Running guest code: the wasmtime engine and one live instance per entity type
//! per shard.
//!
//! Guests get no WASI: a component importing anything but `mneme:entity/host` is
//! refused when it is deployed (`world`), except the stdio/environment interfaces
//! Rust's standard library always links, which are defined as traps. A component
//! built against `mneme:entity@0.1.x` is bound with that world's bindings and its
//! values converted (`legacy`), so every [`Sandbox`] speaks the current world. Every call
//! runs under an epoch deadline, a memory and table cap and a bounded Wasm stack,
//! and what `handle-command` returns is checked against the limits of `limits`.
//! A call that traps leaves the instance unusable (wasmtime forbids re-entering
//! it), so the caller drops the [`Sandbox`] and instantiates a fresh one; the
//! entity's state bytes live in the host and are untouched by the fault.

use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::component::{Component, ComponentExportIndex, Func, HasSelf, Linker, TypedFunc};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

use super::bindings::exports::mneme::entity::handler;
use super::bindings::mneme::entity::host;
use super::bindings::{Entity, EntityPre};
use super::bindings_v01 as v01;
use super::event_batch::EventBatch;
use super::handler::{Decision, EntityHandler, Fault};
use super::legacy;
use super::limits::{self, SandboxLimits};
use super::view::ViewReader;
use super::world::{self, WitVersion};

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-instance host data: the limiters and what the guest did before a trap.
pub struct HostState {
    memory_cap: usize,
    memory_denied: bool,
    table_cap: usize,
    table_denied: bool,
    pub(super) fault: Option<String>,
    /// The WASI function the guest called (they are all traps).
    pub(super) wasi_called: Option<String>,
    /// A projection's view, for its `get` import, during a `handle-events` call.
    pub(super) view: Option<Arc<dyn ViewReader>>,
    /// Why the host could not answer a projection's `get` (a storage error, not the guest's fault).
    pub(super) view_error: Option<String>,
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

impl v01::mneme::entity::host::Host for HostState {
    fn report_fault(&mut self, message: String) {
        host::Host::report_fault(self, message)
    }
}

impl v01::mneme::entity::types::Host for HostState {}

/// A component linked and ready to instantiate, in the world it was built for
/// (with 0.2.x, the optional exports it has).
pub enum WasmPre {
    V0_1(v01::EntityPre<HostState>),
    V0_2(EntityPre<HostState>, FastPaths<ComponentExportIndex>),
}

/// The optional exports of a 0.2.x component (`wit/entity.wit`), where it has them.
#[derive(Clone, Copy, Default)]
pub struct FastPaths<T> {
    /// `replay#apply-event-batch`: recovery's packed batches.
    replay: Option<T>,
    /// `decide#handle-command-and-apply`: a command decided and applied in one call.
    decide: Option<T>,
}

/// A live instance, in the world it was built for.
enum Instance {
    V0_1(v01::Entity),
    V0_2(Entity, FastPaths<Func>),
}

/// `apply-event-batch: func(state: list<u8>, batch: list<u8>) -> result<list<u8>, string>`.
type ApplyEventBatch<'a> = TypedFunc<(&'a [u8], &'a [u8]), (Result<Vec<u8>, String>,)>;

/// `handle-command-and-apply: func(state: list<u8>, command: command) -> result<decision, string>`.
type HandleCommandAndApply<'a> = TypedFunc<(&'a [u8], &'a handler::Command), (Result<Decision, String>,)>;

impl world::NotesWasiCalls for HostState {
    fn wasi_called(&mut self, function: String) {
        self.wasi_called = Some(function);
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_cap {
            self.table_denied = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// The shared engine and the entities' linker. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: SandboxLimits,
}

impl Runtime {
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Arc<Runtime>> {
        if limits.wasm_stack_bytes == 0 || limits.wasm_stack_bytes > limits::MAX_WASM_STACK_BYTES {
            anyhow::bail!(
                "the Wasm stack limit must be between 1 byte and {} KiB, not {} bytes",
                limits::MAX_WASM_STACK_BYTES >> 10,
                limits.wasm_stack_bytes
            );
        }
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Bounds recursion: a guest past it traps with `Trap::StackOverflow`.
        config.max_wasm_stack(limits.wasm_stack_bytes);
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
        v01::Entity::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
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

    /// Check that a compiled component fits the `entity` world (refusing it with
    /// every reason if not), then link it: the WASI interfaces Rust's standard
    /// library always imports become traps.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<WasmPre> {
        let version = world::check_entity(&self.engine, component)?;
        let mut linker = self.linker.clone();
        world::link_inert_imports(&world::ENTITY, &self.engine, component, &mut linker)?;
        let pre = linker.instantiate_pre(component)?;
        let mismatch = |e: wasmtime::Error| anyhow::anyhow!("its exports do not match the `entity` world: {e:#}");
        Ok(match version {
            WitVersion::V0_1 => WasmPre::V0_1(v01::EntityPre::new(pre).map_err(mismatch)?),
            WitVersion::V0_2 => {
                let exports = FastPaths {
                    replay: world::optional_export(
                        &world::ENTITY,
                        &self.engine,
                        component,
                        "replay",
                        "apply-event-batch",
                    ),
                    decide: world::optional_export(
                        &world::ENTITY,
                        &self.engine,
                        component,
                        "decide",
                        "handle-command-and-apply",
                    ),
                };
                WasmPre::V0_2(EntityPre::new(pre).map_err(mismatch)?, exports)
            }
        })
    }

    /// A fresh, empty instance.
    pub fn instantiate(&self, pre: &WasmPre) -> Result<Sandbox, String> {
        let mut store = self.store();
        let instance = match pre {
            WasmPre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
            WasmPre::V0_2(pre, exports) => instantiate_v02(&mut store, pre, exports),
        };
        let entity = instance.map_err(|e| fault_reason(&e, store.data(), self.limits))?;
        Ok(Sandbox { store, entity, limits: self.limits })
    }

    /// A store with the limits of every instance: memory and table caps, deadline.
    pub(super) fn store(&self) -> Store<HostState> {
        let state = HostState {
            memory_cap: self.limits.memory_bytes,
            memory_denied: false,
            table_cap: self.limits.table_elements,
            table_denied: false,
            fault: None,
            wasi_called: None,
            view: None,
            view_error: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(deadline_ticks(self.limits));
        store
    }
}

/// A 0.2.x instance and its optional exports, whose types are checked here: a
/// component exporting one with another type is refused when it is deployed.
fn instantiate_v02(
    store: &mut Store<HostState>,
    pre: &EntityPre<HostState>,
    exports: &FastPaths<ComponentExportIndex>,
) -> wasmtime::Result<Instance> {
    let instance = pre.instance_pre().instantiate(&mut *store)?;
    let entity = Entity::new(&mut *store, &instance)?;
    let mismatch = |interface: &str, signature: &str| {
        let message = format!("its `mneme:entity/{interface}` export does not match `wit/entity.wit` (`{signature}`)");
        move |e: wasmtime::Error| e.context(message)
    };
    let replay = match &exports.replay {
        Some(index) => {
            let func: ApplyEventBatch = instance.get_typed_func(&mut *store, index).map_err(mismatch(
                "replay",
                "apply-event-batch: func(state: list<u8>, batch: list<u8>) -> result<list<u8>, string>",
            ))?;
            Some(*func.func())
        }
        None => None,
    };
    let decide = match &exports.decide {
        Some(index) => {
            let func: HandleCommandAndApply = instance.get_typed_func(&mut *store, index).map_err(mismatch(
                "decide",
                "handle-command-and-apply: func(state: list<u8>, command: command) -> result<decision, string>",
            ))?;
            Some(*func.func())
        }
        None => None,
    };
    Ok(Instance::V0_2(entity, FastPaths { replay, decide }))
}

impl HostState {
    /// Forget what the previous call left behind.
    pub(super) fn reset(&mut self) {
        self.fault = None;
        self.memory_denied = false;
        self.table_denied = false;
        self.wasi_called = None;
        self.view_error = None;
    }
}

/// The call timeout in epoch ticks (+1: the current tick may be nearly over).
pub(super) fn deadline_ticks(limits: SandboxLimits) -> u64 {
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
pub(super) fn fault_reason(err: &wasmtime::Error, state: &HostState, limits: SandboxLimits) -> String {
    if state.memory_denied {
        let detail = state.fault.as_deref().map(|m| format!(" (guest reported: {m})")).unwrap_or_default();
        return format!("memory limit of {} MiB exceeded{detail}", limits.memory_bytes >> 20);
    }
    if let Some(function) = &state.wasi_called {
        return format!(
            "the guest called `{function}`: mneme gives guests no WASI (no stdio, environment, files, clocks or \
             randomness); return a `log` side effect to log"
        );
    }
    if let Some(msg) = &state.fault {
        return format!("guest panicked: {msg}");
    }
    if let Some(e) = err.downcast_ref::<std::str::Utf8Error>() {
        return format!("the guest handed the host a string that is not valid UTF-8 ({e})");
    }
    if let Some(e) = err.downcast_ref::<std::char::DecodeUtf16Error>() {
        return format!("the guest handed the host a string that is not valid UTF-16 ({e})");
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("deadline of {} ms exceeded", limits.call_timeout.as_millis()),
        Some(Trap::StackOverflow) => format!(
            "stack overflow: the guest used more than its {} KiB Wasm stack (recursion too deep)",
            limits.wasm_stack_bytes >> 10
        ),
        Some(trap) if state.table_denied => {
            format!("table limit of {} elements exceeded ({trap})", limits.table_elements)
        }
        Some(trap) => format!("trap: {trap}"),
        None => format!("{err:#}"),
    }
}

/// One live instance of an entity component.
pub struct Sandbox {
    store: Store<HostState>,
    entity: Instance,
    limits: SandboxLimits,
}

/// The guest of either world and the store to call it with.
enum Guest<'a> {
    V0_1(&'a v01::exports::mneme::entity::handler::Guest),
    V0_2(&'a handler::Guest, FastPaths<Func>),
}

impl Sandbox {
    fn call<R>(&mut self, f: impl FnOnce(Guest, &mut Store<HostState>) -> wasmtime::Result<R>) -> Result<R, Fault> {
        self.store.set_epoch_deadline(deadline_ticks(self.limits));
        self.store.data_mut().reset();
        let guest = match &self.entity {
            Instance::V0_1(e) => Guest::V0_1(e.mneme_entity_handler()),
            Instance::V0_2(e, exports) => Guest::V0_2(e.mneme_entity_handler(), *exports),
        };
        f(guest, &mut self.store).map_err(|e| Fault(fault_reason(&e, self.store.data(), self.limits)))
    }
}

impl EntityHandler for Sandbox {
    fn describe(&mut self) -> Result<handler::EntityInfo, Fault> {
        self.call(|g, s| match g {
            Guest::V0_1(g) => g.call_describe(s).map(legacy::info),
            Guest::V0_2(g, _) => g.call_describe(s),
        })
    }

    fn empty_state(&mut self) -> Result<Vec<u8>, Fault> {
        self.call(|g, s| match g {
            Guest::V0_1(g) => g.call_empty_state(s),
            Guest::V0_2(g, _) => g.call_empty_state(s),
        })
    }

    fn handle_command(
        &mut self,
        state: &[u8],
        command: &handler::Command,
    ) -> Result<Result<handler::Effect, String>, Fault> {
        let decision = self.call(|g, s| match g {
            Guest::V0_1(g) => Ok(g.call_handle_command(s, state, &legacy::command(command))?.map(legacy::effect)),
            Guest::V0_2(g, _) => g.call_handle_command(s, state, command),
        })?;
        limits::check_decision(decision.as_ref().map_err(String::as_str), &self.limits)?;
        Ok(decision)
    }

    fn handle_command_and_apply(
        &mut self,
        state: &[u8],
        command: &handler::Command,
    ) -> Result<Result<Decision, String>, Fault> {
        let Instance::V0_2(_, FastPaths { decide: Some(decide), .. }) = &self.entity else {
            return Ok(self.handle_command(state, command)?.map(Decision::from));
        };
        let decide = *decide;
        let decision = self.call(|_, s| {
            // SAFETY: `instantiate_v02` checked this function's type
            // (`get_typed_func`); `typed` would walk the whole `effect` type again
            // on every command. wasmtime's generated bindings call the `handler`
            // functions the same way.
            let f: HandleCommandAndApply = unsafe { TypedFunc::new_unchecked(decide) };
            Ok(f.call(s, (state, command))?.0)
        })?;
        limits::check_decision(decision.as_ref().map(|d| &d.effect).map_err(String::as_str), &self.limits)?;
        Ok(decision)
    }

    fn apply_events(&mut self, state: &[u8], events: &[handler::Event]) -> Result<Result<Vec<u8>, String>, Fault> {
        self.call(|g, s| match g {
            Guest::V0_1(g) => g.call_apply_events(s, state, &legacy::events(events)),
            Guest::V0_2(g, _) => g.call_apply_events(s, state, events),
        })
    }

    fn apply_event_batch(&mut self, state: &[u8], batch: &EventBatch) -> Result<Result<Vec<u8>, String>, Fault> {
        self.call(|g, s| match g {
            Guest::V0_2(_, FastPaths { replay: Some(f), .. }) => {
                // SAFETY: type checked in `instantiate_v02`, as above.
                let f: ApplyEventBatch = unsafe { TypedFunc::new_unchecked(f) };
                Ok(f.call(s, (state, batch.as_bytes()))?.0)
            }
            Guest::V0_2(g, _) => {
                let events = batch.to_events();
                g.call_apply_events(s, state, &events)
            }
            Guest::V0_1(g) => g.call_apply_events(s, state, &legacy::events(&batch.to_events())),
        })
    }

    fn on_recovery_completed(&mut self, state: &[u8]) -> Result<Vec<handler::SideEffect>, Fault> {
        self.call(|g, s| match g {
            Guest::V0_1(g) => g.call_on_recovery_completed(s, state).map(legacy::side_effects),
            Guest::V0_2(g, _) => g.call_on_recovery_completed(s, state),
        })
    }
}
