//! Projection components (`wit/projection.wit`): one live instance, its calls,
//! and the host side of its imports.
//!
//! The same sandbox as an entity's: no WASI (checked at deploy against the
//! `projection` world, `world::PROJECTION`; the stdio interfaces Rust's standard
//! library links become named traps), an epoch deadline per call, memory and
//! table caps, a bounded Wasm stack. A faulted instance is discarded.
//!
//! A component that exports `feed#handle-event-batch` (the Rust SDK's do) gets
//! its events packed into one buffer ([`pack_events`]) instead of as a
//! `list<stored-event>`; both calls return the same updates.
//!
//! The `get` import reads the projection's view through a [`ViewReader`] the
//! caller hands in with each `handle-events` call; a reader that fails (storage
//! trouble) traps the call, and the failure is reported as the host's
//! ([`ProjectionFault::Host`]), not the guest's.

use std::sync::Arc;

use wasmtime::component::{Component, ComponentExportIndex, Func, HasSelf, Linker, TypedFunc};
use wasmtime::Store;

use super::event_batch::put_field;
use super::limits::SandboxLimits;
use super::sandbox::{deadline_ticks, fault_reason, HostState, Runtime};
use super::view::ViewReader;
use super::world;

/// Host-side bindings generated from `wit/projection.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/projection.wit",
        world: "projection",
        imports: { "mneme:projection/view.get": trappable },
    });
}

use bindings::mneme::projection::{host, types as wit, view};
use bindings::{Projection, ProjectionPre};

/// `handle-event-batch: func(batch: list<u8>) -> result<list<view-update>, string>`.
type HandleEventBatch<'a> = TypedFunc<(&'a [u8],), (Result<Vec<ViewUpdate>, String>,)>;

/// A linked projection component, ready to instantiate.
pub struct ProjectionCode {
    pre: ProjectionPre<HostState>,
    /// `feed#handle-event-batch`, where the component exports it.
    feed: Option<ComponentExportIndex>,
}

/// An event as a projection receives it.
pub type StoredEventRef = wit::StoredEvent;
/// One change to the view, as a projection returned it.
pub type ViewUpdate = wit::ViewUpdate;

/// What a projection says about itself (`describe()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionInfo {
    pub name: String,
    pub tags: Vec<String>,
    pub view_version: u32,
}

/// A call into a projection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionFault {
    /// Trap, panic, deadline, memory cap: the guest's. The instance must be dropped.
    Guest(String),
    /// The host could not answer the guest's `get`: the call may work later.
    Host(String),
}

impl std::fmt::Display for ProjectionFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionFault::Guest(m) => f.write_str(m),
            ProjectionFault::Host(m) => write!(f, "reading the view failed: {m}"),
        }
    }
}

impl view::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let Some(reader) = &self.view else {
            wasmtime::bail!("`get` called outside `handle-events`");
        };
        match reader.get(&key) {
            Ok(value) => Ok(value),
            Err(e) => {
                self.view_error = Some(e.clone());
                wasmtime::bail!("reading key `{key}` of the view failed: {e}")
            }
        }
    }
}

impl host::Host for HostState {
    fn report_fault(&mut self, message: String) {
        let mut m = message;
        m.truncate(2000);
        self.fault = Some(m);
    }
}

impl wit::Host for HostState {}

impl Runtime {
    /// Check that a compiled component fits the `projection` world (refusing it
    /// with every reason if not), then link it. The linker is built here, once
    /// per deploy or start, so the entity sandbox needs to know nothing of projections.
    pub fn prepare_projection(&self, component: &Component) -> anyhow::Result<ProjectionCode> {
        world::check(&world::PROJECTION, self.engine(), component)?;
        let mut linker = Linker::new(self.engine());
        Projection::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        world::link_inert_imports(&world::PROJECTION, self.engine(), component, &mut linker)?;
        let pre = linker.instantiate_pre(component)?;
        let feed = world::optional_export(&world::PROJECTION, self.engine(), component, "feed", "handle-event-batch");
        let pre = ProjectionPre::new(pre)
            .map_err(|e| anyhow::anyhow!("its exports do not match the `projection` world: {e:#}"))?;
        Ok(ProjectionCode { pre, feed })
    }

    /// A fresh, empty projection instance. A `feed` export of another type than
    /// `wit/projection.wit`'s is refused here (a deploy makes an instance first).
    pub fn instantiate_projection(&self, code: &ProjectionCode) -> Result<ProjectionSandbox, String> {
        let mut store = self.store();
        let made = (|| {
            let instance = code.pre.instance_pre().instantiate(&mut store)?;
            let projection = Projection::new(&mut store, &instance)?;
            let feed = match &code.feed {
                Some(index) => {
                    let func: HandleEventBatch = instance.get_typed_func(&mut store, index).map_err(|e| {
                        e.context(
                            "its `mneme:projection/feed` export does not match `wit/projection.wit` \
                             (`handle-event-batch: func(batch: list<u8>) -> result<list<view-update>, string>`)",
                        )
                    })?;
                    Some(*func.func())
                }
                None => None,
            };
            wasmtime::Result::Ok((projection, feed))
        })();
        let (instance, feed) = made.map_err(|e| fault_reason(&e, store.data(), self.limits()))?;
        Ok(ProjectionSandbox { store, instance, feed, packed: Vec::new(), limits: self.limits() })
    }
}

/// The events packed for `feed#handle-event-batch`, in the format
/// `wit/projection.wit` gives, appended to `out` (cleared first).
pub fn pack_events(events: &[StoredEventRef], out: &mut Vec<u8>) {
    out.clear();
    for e in events {
        let tags: usize = e.tags.iter().map(|t| 4 + t.len()).sum();
        out.reserve(40 + e.persistence_id.len() + e.manifest.len() + tags + e.payload.len());
        put_field(out, e.persistence_id.as_bytes());
        out.extend_from_slice(&e.seq_nr.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
        put_field(out, e.manifest.as_bytes());
        out.extend_from_slice(&(e.tags.len() as u32).to_le_bytes());
        for t in &e.tags {
            put_field(out, t.as_bytes());
        }
        put_field(out, &e.payload);
    }
}

/// One live instance of a projection component.
pub struct ProjectionSandbox {
    store: Store<HostState>,
    instance: Projection,
    /// `feed#handle-event-batch`, type-checked, where the component exports it.
    feed: Option<Func>,
    /// The packed batch, its buffer reused from call to call.
    packed: Vec<u8>,
    limits: SandboxLimits,
}

impl ProjectionSandbox {
    fn call<R>(
        &mut self,
        view: Option<Arc<dyn ViewReader>>,
        f: impl FnOnce(&bindings::exports::mneme::projection::handler::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, ProjectionFault> {
        self.store.set_epoch_deadline(deadline_ticks(self.limits));
        let data = self.store.data_mut();
        data.reset();
        data.view = view;
        let guest = self.instance.mneme_projection_handler();
        let result = f(guest, &mut self.store);
        self.store.data_mut().view = None;
        result.map_err(|e| match self.store.data_mut().view_error.take() {
            Some(why) => ProjectionFault::Host(why),
            None => ProjectionFault::Guest(fault_reason(&e, self.store.data(), self.limits)),
        })
    }

    pub fn describe(&mut self) -> Result<ProjectionInfo, ProjectionFault> {
        let info = self.call(None, |g, s| g.call_describe(s))?;
        Ok(ProjectionInfo { name: info.name, tags: info.tags, view_version: info.view_version })
    }

    /// Fold `events` into the view: the guest's updates, or its `err`.
    pub fn handle_events(
        &mut self,
        events: &[StoredEventRef],
        view: Arc<dyn ViewReader>,
    ) -> Result<Result<Vec<ViewUpdate>, String>, ProjectionFault> {
        match self.feed {
            Some(f) => {
                let mut packed = std::mem::take(&mut self.packed);
                pack_events(events, &mut packed);
                // SAFETY: type checked in `instantiate_projection`.
                let f: HandleEventBatch = unsafe { TypedFunc::new_unchecked(f) };
                let result = self.call(Some(view), |_, s| Ok(f.call(s, (&packed,))?.0));
                self.packed = packed;
                result
            }
            None => self.call(Some(view), |g, s| g.call_handle_events(s, events)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_layout_is_the_one_wit_projection_documents() {
        let event = StoredEventRef {
            persistence_id: "t|a".into(),
            seq_nr: 2,
            offset: 258,
            timestamp_ms: 1,
            manifest: "M".into(),
            tags: vec!["x".into(), "".into()],
            payload: b"{}".to_vec(),
        };
        let mut out = vec![9; 3];
        pack_events(&[event.clone(), event], &mut out);
        let one: Vec<u8> = [
            &[3, 0, 0, 0][..],
            b"t|a",
            &[2, 0, 0, 0, 0, 0, 0, 0],
            &[2, 1, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0],
            b"M",
            &[2, 0, 0, 0],
            &[1, 0, 0, 0],
            b"x",
            &[0, 0, 0, 0],
            &[2, 0, 0, 0],
            b"{}",
        ]
        .concat();
        assert_eq!(out, [one.clone(), one].concat(), "cleared first, then each event in order");
    }
}
