//! Projections: read models built from the journal by Wasm components (world
//! `projection` of `wit/projection.wit`), updated exactly once.
//!
//! ```text
//!  journal ──events_by_tag (≤ durable head)──► worker ──handle-events──► component (pure)
//!     ▲                                          │   ◄── get(key) ── view + batch overlay
//!     └──── one frame: view updates + offset ◄───┘
//! ```
//!
//! Each active projection has a worker thread (`worker.rs`) feeding it the events
//! of its tags in offset order, from offset 0 on first deploy, then live (two more
//! threads store its batches and read the next one ahead, `journal/read_ahead.rs`): it waits
//! on the engine's durable head rather than polling. Only durable events are read
//! (the head is published after the write that made them durable). Each batch's
//! view updates and new offset are one atomic write (`journal/views.rs`), so
//! after any crash the view is the fold of every event exactly once, and the
//! worker continues from the stored offset.
//!
//! Versions and generations: a projection's view lives in a *generation*. A new
//! version with the same `view-version` continues the serving generation from its
//! stored offset (that is how a fixed version resumes a failed projection). A new
//! version with another `view-version` gets a new generation, built from offset 0
//! by a second worker while the serving one keeps running with the old version;
//! queries read the serving generation until the new one has caught up and
//! written its first `live` offset record, then switch, and the old worker stops.
//! Which generation serves is stored in the journal, so a restart picks up where
//! the swap stood.
//!
//! A fault stops only that projection (its status names the reason and the
//! event); the engine and the other projections keep running.
//!
//! Architecture: below the engine (which starts it and hands it the durable
//! head), beside the shards; it uses the journal and the component sandbox.

pub mod batch;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::cluster::Ownership;
use crate::component::{LoadedProjection, Registry};
use crate::config::ProjectionConfig;
use crate::journal::{Journal, JournalError, ProjectionOffset};
use crate::metrics::Metrics;
use crate::names::{validate_projection_name, validate_view_key};
use crate::writer::Head;
use worker::{Env, Progress, Spec, State, Worker};

/// Why a projection request failed.
#[derive(Debug)]
pub enum ProjectionError {
    /// No such projection, version or key.
    NotFound(String),
    /// An invalid component, name or key; or a journal that cannot store projections.
    Invalid(String),
    /// The journal could not answer.
    Journal(JournalError),
}

impl std::fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionError::NotFound(m) | ProjectionError::Invalid(m) => f.write_str(m),
            ProjectionError::Journal(e) => write!(f, "{e}"),
        }
    }
}

fn journal_error(e: JournalError) -> ProjectionError {
    match e {
        JournalError::Invalid(m) => ProjectionError::Invalid(m),
        e => ProjectionError::Journal(e),
    }
}

/// A worker's view of its generation, for the status.
#[derive(Debug, Clone)]
pub struct GenerationStatus {
    pub generation: u32,
    /// The component version feeding it.
    pub version: u64,
    pub view_version: u32,
    pub offset: u64,
    pub lag: u64,
    /// `running` or `failed` (also `retrying` while the journal fails, `stopped`).
    pub status: &'static str,
    pub error: Option<String>,
    pub events: u64,
}

/// One projection as `GET /v1/projections` shows it.
#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    pub name: String,
    /// The active version (the one deployed or activated last).
    pub version: u64,
    pub versions: Vec<u64>,
    pub hash: String,
    pub tags: Vec<String>,
    pub view_version: u32,
    pub deployed_at_ms: u64,
    /// The journal's newest durable offset.
    pub head: u64,
    /// The generation queries read, and its worker.
    pub serving: Option<GenerationStatus>,
    /// A new generation being built beside it (another `view-version`).
    pub rebuild: Option<GenerationStatus>,
    /// Why there is no worker (e.g. the journal cannot store projections).
    pub error: Option<String>,
}

impl ProjectionStatus {
    /// `running` or `failed`: what the serving generation's worker does (a
    /// projection without a worker has failed).
    pub fn status(&self) -> &'static str {
        match &self.serving {
            Some(s) if self.error.is_none() => s.status,
            _ => "failed",
        }
    }

    pub fn error(&self) -> Option<String> {
        self.error.clone().or_else(|| self.serving.as_ref().and_then(|s| s.error.clone()))
    }
}

/// What is known of one projection.
#[derive(Default)]
struct Slot {
    /// The generation queries read.
    serving: Option<u32>,
    /// Feeds the serving generation.
    main: Option<Worker>,
    /// Builds a new generation (another `view-version`).
    rebuild: Option<Worker>,
    error: Option<String>,
}

struct Shared {
    env: Env,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Serialises (re)configuring projections.
    configuring: Mutex<()>,
}

/// The projections of an engine. Cheap to clone.
#[derive(Clone)]
pub struct Projections {
    shared: Arc<Shared>,
}

impl Projections {
    /// Start a worker for every projection the registry has an active version of.
    pub fn start(
        journal: Arc<dyn Journal>,
        registry: Arc<Registry>,
        head: Head,
        metrics: Arc<Metrics>,
        config: ProjectionConfig,
        ownership: Option<Arc<Ownership>>,
    ) -> Projections {
        let env = Env { journal, registry, head, metrics, config, ownership };
        let p = Projections { shared: Arc::new(Shared { env, slots: Mutex::default(), configuring: Mutex::new(()) }) };
        for code in p.shared.env.registry.projections() {
            if let Err(e) = p.configure(&code.name) {
                tracing::error!(projection = %code.name, "not started: {e}");
            }
        }
        p
    }

    /// Deploy a projection component (validated before it is stored; an invalid
    /// one changes nothing) and (re)start its workers.
    pub fn deploy(&self, name: &str, wasm: &[u8]) -> Result<ProjectionStatus, ProjectionError> {
        validate_projection_name(name).map_err(ProjectionError::Invalid)?;
        // Refuse before storing anything if the journal cannot hold projections.
        self.shared.env.journal.projection_offsets(name).map_err(journal_error)?;
        self.shared.env.registry.deploy_projection(name, wasm).map_err(ProjectionError::Invalid)?;
        self.configure(name)?;
        self.status(name)
    }

    /// Make a stored version active again and (re)start its workers.
    pub fn activate(&self, name: &str, version: u64) -> Result<ProjectionStatus, ProjectionError> {
        validate_projection_name(name).map_err(ProjectionError::Invalid)?;
        self.shared.env.journal.projection_offsets(name).map_err(journal_error)?;
        self.shared.env.registry.activate_projection(name, version).map_err(ProjectionError::NotFound)?;
        self.configure(name)?;
        self.status(name)
    }

    /// Stop the workers of `name` and start the ones its active version needs,
    /// from what the journal has stored.
    fn configure(&self, name: &str) -> Result<(), ProjectionError> {
        let shared = &self.shared;
        let _one_at_a_time = shared.configuring.lock().unwrap();
        let code = shared
            .env
            .registry
            .projection(name)
            .ok_or_else(|| ProjectionError::NotFound(format!("no projection `{name}`")))?;
        let (main, rebuild) = {
            let mut slots = shared.slots.lock().unwrap();
            let slot = slots.entry(name.to_string()).or_default();
            (slot.main.take(), slot.rebuild.take())
        };
        for w in [main, rebuild].into_iter().flatten() {
            w.stop();
        }
        let offsets = match shared.env.journal.projection_offsets(name) {
            Ok(o) => o,
            Err(e) => {
                let mut slots = shared.slots.lock().unwrap();
                slots.entry(name.to_string()).or_default().error = Some(e.to_string());
                return Err(journal_error(e));
            }
        };
        let plan = plan(&offsets, code.info.view_version);
        let stored = |generation: u32| offsets.iter().find(|o| o.generation == generation).map_or(0, |o| o.offset);
        let mut error = None;
        let main = match plan.serving {
            Some(g) if g.view_version == code.info.view_version => {
                Some(self.spawn(name, g.generation, &code, g.offset))
            }
            Some(g) => match shared.env.registry.projection_version(name, g.component_version) {
                // The serving view keeps following the journal with the version that built it.
                Ok(old) => Some(self.spawn(name, g.generation, &old, g.offset)),
                Err(e) => {
                    error = Some(format!(
                        "the serving view (generation {}) was built by version {}, which cannot be loaded ({e}); \
                         it stays as it is until the new view has caught up",
                        g.generation, g.component_version
                    ));
                    None
                }
            },
            None => Some(self.spawn(name, plan.build, &code, stored(plan.build))),
        };
        let rebuild = match plan.serving {
            Some(g) if g.view_version != code.info.view_version => {
                Some(self.spawn_rebuild(name, plan.build, &code, stored(plan.build)))
            }
            _ => None,
        };
        let mut slots = shared.slots.lock().unwrap();
        let slot = slots.entry(name.to_string()).or_default();
        slot.serving = Some(plan.serving.map_or(plan.build, |g| g.generation));
        slot.main = main;
        slot.rebuild = rebuild;
        slot.error = error;
        Ok(())
    }

    /// A worker feeding the generation that serves queries.
    fn spawn(&self, name: &str, generation: u32, code: &Arc<LoadedProjection>, offset: u64) -> Worker {
        let spec = Spec { name: name.to_string(), generation, code: code.clone(), live: true, offset };
        worker::spawn(self.shared.env.clone(), spec, None)
    }

    /// A worker building a new generation; once caught up it takes over.
    fn spawn_rebuild(&self, name: &str, generation: u32, code: &Arc<LoadedProjection>, offset: u64) -> Worker {
        let spec = Spec { name: name.to_string(), generation, code: code.clone(), live: false, offset };
        let weak = Arc::downgrade(&self.shared);
        let n = name.to_string();
        let on_live: worker::OnLive = Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                swapped(&shared, &n, generation);
            }
        });
        worker::spawn(self.shared.env.clone(), spec, Some(on_live))
    }

    /// Every projection with an active version, by name.
    pub fn list(&self) -> Vec<ProjectionStatus> {
        self.shared.env.registry.projections().iter().filter_map(|c| self.status(&c.name).ok()).collect()
    }

    pub fn status(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let shared = &self.shared;
        let code = shared
            .env
            .registry
            .projection(name)
            .ok_or_else(|| ProjectionError::NotFound(format!("no projection `{name}`")))?;
        let head = *shared.env.head.borrow();
        let slots = shared.slots.lock().unwrap();
        let slot = slots.get(name);
        let gen_status = |w: &Worker| generation_status(&w.progress.lock().unwrap(), head);
        Ok(ProjectionStatus {
            name: name.to_string(),
            version: code.version,
            versions: shared.env.registry.projection_versions(name),
            hash: code.hash.clone(),
            tags: code.info.tags.clone(),
            view_version: code.info.view_version,
            deployed_at_ms: code.deployed_at_ms,
            head,
            serving: slot.and_then(|s| s.main.as_ref()).map(gen_status),
            rebuild: slot.and_then(|s| s.rebuild.as_ref()).map(gen_status),
            error: slot.map_or(Some("not started".into()), |s| s.error.clone()),
        })
    }

    /// The generation queries of `name` read.
    fn serving(&self, name: &str) -> Result<u32, ProjectionError> {
        validate_projection_name(name).map_err(ProjectionError::Invalid)?;
        let not_found = || ProjectionError::NotFound(format!("no projection `{name}`"));
        if self.shared.env.registry.projection(name).is_none() {
            return Err(not_found());
        }
        self.shared.slots.lock().unwrap().get(name).and_then(|s| s.serving).ok_or_else(not_found)
    }

    /// The value of `key` in `name`'s view; `NotFound` for an unknown projection or key.
    pub fn view_get(&self, name: &str, key: &str) -> Result<Vec<u8>, ProjectionError> {
        validate_view_key(key).map_err(ProjectionError::Invalid)?;
        let generation = self.serving(name)?;
        self.shared
            .env
            .journal
            .view_get(name, generation, key)
            .map_err(journal_error)?
            .ok_or_else(|| ProjectionError::NotFound(format!("projection `{name}` has no value for key `{key}`")))
    }

    /// Keys of `name`'s view starting with `prefix`, from `from_key` on, in key
    /// order, at most `limit`.
    pub fn view_scan(
        &self,
        name: &str,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        let generation = self.serving(name)?;
        self.shared.env.journal.view_scan(name, generation, prefix, from_key, limit).map_err(journal_error)
    }

    /// Per-projection lines for `/metrics` (Prometheus text format).
    pub fn render_metrics(&self) -> String {
        let list = self.list();
        let mut out = String::new();
        let gauges = [
            ("projection_offset", "Offset through which a projection's serving view has taken in events."),
            ("projection_lag", "Journal head minus a projection's offset (events and other records' offsets)."),
            ("projection_failed", "1 when a projection has failed and stopped (a fault; see GET /v1/projections)."),
        ];
        for (i, (name, help)) in gauges.iter().enumerate() {
            let _ = writeln!(out, "# HELP mneme_{name} {help}");
            let _ = writeln!(out, "# TYPE mneme_{name} gauge");
            for p in &list {
                let value = match i {
                    0 => p.serving.as_ref().map_or(0, |s| s.offset),
                    1 => p.serving.as_ref().map_or(p.head, |s| s.lag),
                    _ => u64::from(p.status() == "failed"),
                };
                let _ = writeln!(out, "mneme_{name}{{projection=\"{}\"}} {value}", p.name);
            }
        }
        out
    }

    /// Stop every worker (after the batch each is in), so the journal can close.
    pub fn shutdown(&self) {
        let _one_at_a_time = self.shared.configuring.lock().unwrap();
        let workers: Vec<Worker> = {
            let mut slots = self.shared.slots.lock().unwrap();
            slots.values_mut().flat_map(|s| [s.main.take(), s.rebuild.take()]).flatten().collect()
        };
        for w in &workers {
            w.signal_stop();
        }
        for w in workers {
            w.stop();
        }
    }
}

/// A rebuilt generation caught up: it serves queries now; the old worker stops.
fn swapped(shared: &Shared, name: &str, generation: u32) {
    let old = {
        let mut slots = shared.slots.lock().unwrap();
        let Some(slot) = slots.get_mut(name) else { return };
        if slot.rebuild.as_ref().map(|w| w.generation) != Some(generation) {
            return; // reconfigured meanwhile
        }
        slot.serving = Some(generation);
        slot.error = None;
        let old = slot.main.take();
        slot.main = slot.rebuild.take();
        old
    };
    if let Some(old) = old {
        // This runs on the new worker's thread: stop the old one without waiting here.
        old.signal_stop();
        std::thread::spawn(move || old.stop());
    }
}

fn generation_status(p: &Progress, head: u64) -> GenerationStatus {
    let (status, error) = match &p.state {
        State::Running => ("running", None),
        State::Failed(why) => ("failed", Some(why.clone())),
        State::Retrying(why) => ("retrying", Some(why.clone())),
        State::Stopped => ("stopped", None),
        State::Standby => {
            ("standby", Some(format!("another host runs the projections (the holder of partition {})", worker::LEADER)))
        }
    };
    GenerationStatus {
        generation: p.generation,
        version: p.version,
        view_version: p.view_version,
        offset: p.offset,
        lag: head.saturating_sub(p.offset),
        status,
        error,
        events: p.events,
    }
}

/// Which generations to feed, from the stored offset records.
#[derive(Debug, PartialEq, Eq)]
struct Plan<'a> {
    /// The newest generation that has gone live (it serves queries).
    serving: Option<&'a ProjectionOffset>,
    /// The generation the active version builds: the serving one when the
    /// view-versions match, else a newer one of that view-version (continued), else a
    /// new one.
    build: u32,
}

fn plan(offsets: &[ProjectionOffset], view_version: u32) -> Plan<'_> {
    let serving = offsets.iter().filter(|o| o.live).max_by_key(|o| o.generation);
    let newest = offsets.iter().map(|o| o.generation).max().unwrap_or(0);
    let build = match serving {
        Some(s) if s.view_version == view_version => s.generation,
        Some(s) => offsets
            .iter()
            .filter(|o| !o.live && o.generation > s.generation && o.view_version == view_version)
            .map(|o| o.generation)
            .max()
            .unwrap_or(newest + 1),
        None => {
            offsets.iter().filter(|o| o.view_version == view_version).map(|o| o.generation).max().unwrap_or(newest + 1)
        }
    };
    Plan { serving, build }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(generation: u32, view_version: u32, live: bool) -> ProjectionOffset {
        ProjectionOffset { projection: "p".into(), generation, offset: 5, view_version, component_version: 1, live }
    }

    #[test]
    fn the_plan_continues_the_serving_view_or_builds_a_new_generation() {
        assert_eq!(plan(&[], 1), Plan { serving: None, build: 1 }, "first deploy");
        let one = [o(1, 1, true)];
        assert_eq!(plan(&one, 1), Plan { serving: Some(&one[0]), build: 1 }, "same view-version: continue");
        assert_eq!(plan(&one, 2), Plan { serving: Some(&one[0]), build: 2 }, "new view-version: new generation");
        let building = [o(1, 1, true), o(2, 2, false)];
        assert_eq!(plan(&building, 2).build, 2, "a rebuild in progress continues after a restart");
        assert_eq!(plan(&building, 3).build, 3, "another view-version: another generation");
        assert_eq!(plan(&building, 1), Plan { serving: Some(&building[0]), build: 1 }, "back to the serving one");
        let swapped = [o(1, 1, true), o(2, 2, true)];
        assert_eq!(plan(&swapped, 2), Plan { serving: Some(&swapped[1]), build: 2 }, "the newest live one serves");
        let back = [o(1, 1, true), o(2, 2, true)];
        assert_eq!(plan(&back, 1).build, 3, "an older view-version again is rebuilt, not reused");
    }
}
