//! One projection generation being fed: a thread that takes the next batch after
//! its position, hands it to the component, and stores the view updates with the
//! new offset in one atomic write; then waits for the durable head to move.
//! Three stages overlap, each on a thread of its own: storing batch N, computing
//! N+1, reading N+2 (`journal/read_ahead.rs`); N+1 is stored only once N has landed, and
//! is dropped if N fails.
//!
//! Failures:
//!
//! * the guest faults (trap, panic, deadline, memory cap), returns `err`, or
//!   returns an update over the limits: the batch is handed in again one event per
//!   call (the `get` import sees the updates of the earlier calls), to find the
//!   event it fails on; the updates of the events before it are stored with their
//!   offset, and the worker stops, failed, with the reason naming the event. Nothing of
//!   the failing event is stored. A fixed version resumes from there.
//! * the journal cannot be read or written (storage trouble): the worker says so
//!   in its status and tries again after [`ProjectionConfig::retry`]; nothing was
//!   stored, so the batch is simply computed again.
//! * the journal refuses the batch or finds damage: the worker fails.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::batch::{check_updates, next_batch, Feed, Overlay, ViewCache};
use crate::cluster::Ownership;
use crate::component::projection::StoredEventRef;
use crate::component::{LoadedProjection, ProjectionFault, ProjectionSandbox, Registry};
use crate::config::ProjectionConfig;
use crate::journal::read_ahead::ReadAhead;
use crate::journal::Fence;
use crate::journal::{Journal, JournalError, JournalResult, ProjectionBatch, ProjectionOffset, StoredEvent};
use crate::metrics::Metrics;
use crate::writer::Head;

/// What a worker is doing, for `GET /v1/projections` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Starting, catching up or following the journal.
    Running,
    /// Stopped by a fault or a refused write; a new deployment resumes it.
    Failed(String),
    /// The journal could not be read or written; trying again.
    Retrying(String),
    /// Told to stop (a new version took over, or the server is shutting down).
    Stopped,
    /// With several hosts: another host runs the projections (the holder of
    /// partition 0); this one takes over if it comes to hold it.
    Standby,
}

/// A worker's progress.
#[derive(Debug, Clone)]
pub struct Progress {
    pub generation: u32,
    pub version: u64,
    pub view_version: u32,
    /// Every event carrying the projection's tags up to here is in the view.
    pub offset: u64,
    /// This generation serves queries.
    pub live: bool,
    pub state: State,
    /// Events handed to the component by this worker.
    pub events: u64,
}

/// What a worker is told to do.
pub struct Spec {
    pub name: String,
    pub generation: u32,
    pub code: Arc<LoadedProjection>,
    /// Write `live` from the first batch (the view already serves queries);
    /// else write it once caught up, then call `on_live`.
    pub live: bool,
    /// The stored offset as last read (shown until the worker has read it again).
    pub offset: u64,
}

/// The running worker, as its owner sees it.
pub struct Worker {
    pub generation: u32,
    pub progress: Arc<Mutex<Progress>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Tell the worker to stop after the batch in progress, and wait for it.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Only tell it (for a worker stopping itself from its own thread).
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// What a worker needs of the engine.
#[derive(Clone)]
pub struct Env {
    pub journal: Arc<dyn Journal>,
    pub registry: Arc<Registry>,
    pub head: Head,
    pub metrics: Arc<Metrics>,
    pub config: ProjectionConfig,
    /// With several hosts: what this host owns. Projections run on the holder of
    /// [`LEADER`], their batches fenced by its lease.
    pub ownership: Option<Arc<Ownership>>,
}

/// With several hosts, the partition whose holder runs the projections.
pub const LEADER: u32 = 0;

/// Called once when a generation that was not live has caught up and written
/// its first `live` record.
pub type OnLive = Box<dyn FnOnce() + Send>;

pub fn spawn(env: Env, spec: Spec, on_live: Option<OnLive>) -> Worker {
    let (stop, stop_rx) = watch::channel(false);
    let progress = Arc::new(Mutex::new(Progress {
        generation: spec.generation,
        version: spec.code.version,
        view_version: spec.code.info.view_version,
        offset: spec.offset,
        live: spec.live,
        state: State::Running,
        events: 0,
    }));
    let generation = spec.generation;
    let p = progress.clone();
    let thread = std::thread::Builder::new()
        .name(format!("mneme-projection-{}", spec.name))
        .spawn(move || {
            let cache = Arc::new(Mutex::new(ViewCache::new(env.config.cache_bytes)));
            let store = Store::spawn(env.clone(), &spec.name);
            let reader = read_ahead(&env, &spec);
            let mut run = Run {
                env,
                spec,
                progress: p,
                stop: stop_rx,
                sandbox: None,
                cache,
                store,
                reader,
                stored: 0,
                chain: 0,
                live_stored: false,
                live_chain: false,
                on_live,
                lease: None,
            };
            let end = run.run();
            let mut p = run.progress.lock().unwrap();
            if let Some(why) = &end {
                tracing::error!(projection = %run.spec.name, generation = run.spec.generation, "failed: {why}");
            }
            p.state = end.map_or(State::Stopped, State::Failed);
        })
        .expect("spawn projection thread");
    Worker { generation, progress, stop, thread: Some(thread) }
}

struct Run {
    env: Env,
    spec: Spec,
    progress: Arc<Mutex<Progress>>,
    stop: watch::Receiver<bool>,
    sandbox: Option<ProjectionSandbox>,
    cache: Arc<Mutex<ViewCache>>,
    store: Store,
    reader: ReadAhead<JournalResult<Feed>>,
    /// The generation's offset as stored in the journal.
    stored: u64,
    /// The offset of the last batch computed (stored, or on its way): the next
    /// batch continues from it.
    chain: u64,
    /// The stored offset record says `live`.
    live_stored: bool,
    /// The last batch computed says `live`.
    live_chain: bool,
    on_live: Option<OnLive>,
    /// With several hosts: the epoch of the lease of [`LEADER`] this worker runs
    /// under (`None`: standing by).
    lease: Option<u64>,
}

/// How a step ended when it did not succeed.
enum Halt {
    /// Fail with this reason: the worker stops until another version is deployed.
    Fail(String),
    /// Storage trouble: try again later.
    Retry(String),
}

fn journal_halt(what: &str, e: JournalError) -> Halt {
    match e {
        JournalError::Storage(_) | JournalError::Locked(_) | JournalError::Fenced(_) => {
            Halt::Retry(format!("{what}: {e}"))
        }
        JournalError::Corrupt(_) | JournalError::Invalid(_) => Halt::Fail(format!("{what}: {e}")),
    }
}

/// What computing the next batch gave.
enum Step {
    /// The worker has taken in everything up to `through`; `batch` (if any) stores it.
    Ready {
        through: u64,
        batch: Option<ProjectionBatch>,
    },
    /// The guest failed on an event: `partial` stores the events before it; then fail.
    Failed {
        partial: Option<ProjectionBatch>,
        why: String,
    },
    Halt(Halt),
}

/// The batch being stored by the [`Store`] thread while the next one is computed.
struct InFlight {
    offset: u64,
    live: bool,
}

/// The worker's store thread: writes the batches it is handed, one at a time, and
/// answers each with the result. One thread for the worker's life rather than one
/// per batch: following live load means many small batches. It ends when the
/// worker drops it.
struct Store {
    batches: crossbeam_channel::Sender<ProjectionBatch>,
    results: crossbeam_channel::Receiver<Result<(), Halt>>,
}

impl Store {
    fn spawn(env: Env, name: &str) -> Store {
        let (batches, rx) = crossbeam_channel::bounded::<ProjectionBatch>(1);
        let (tx, results) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name(format!("mneme-projection-{name}-store"))
            .spawn(move || {
                for batch in rx {
                    if tx.send(store(&env, &batch)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn projection store thread");
        Store { batches, results }
    }
}

impl Run {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn node(&self) -> String {
        self.env.ownership.as_ref().map(|o| o.node().to_string()).unwrap_or_default()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn set_state(&self, state: State) {
        self.progress.lock().unwrap().state = state;
    }

    /// Returns why it failed, or `None` when told to stop.
    ///
    /// A two-stage pipeline: while batch N is being stored (its own thread), batch
    /// N+1 is read and computed on top of N's updates (kept in the cache as
    /// pending); N+1 is stored only after N has landed. If storing N fails, N+1 is
    /// dropped, the cache forgotten, and the worker continues from the stored offset.
    fn run(&mut self) -> Option<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("projection runtime");
        let mut head_rx = self.env.head.clone();
        loop {
            if self.stopping() {
                return None;
            }
            match self.load_offset() {
                Ok(()) => break,
                Err(Halt::Fail(why)) => return Some(why),
                Err(Halt::Retry(why)) => {
                    self.set_state(State::Retrying(why));
                    self.wait(&rt, &mut head_rx, Some(self.env.config.retry));
                }
            }
        }
        let mut position = self.stored;
        let mut in_flight: Option<InFlight> = None;
        self.progress.lock().unwrap().offset = position;
        loop {
            if self.stopping() {
                let _ = self.land(&mut in_flight);
                return None;
            }
            if let Some(ownership) = self.env.ownership.clone() {
                let now = ownership.epoch(LEADER);
                if now != self.lease {
                    // Taking over or handing over: finish what is in flight (a batch
                    // of a lost lease is fenced), then start from what is stored.
                    let _ = self.land(&mut in_flight);
                    self.lease = now;
                    if now.is_some() {
                        if let Err(halt) = self.load_offset() {
                            self.lease = None;
                            if let Some(why) = self.halted(halt, &rt, &mut head_rx) {
                                return Some(why);
                            }
                            continue;
                        }
                        self.set_state(State::Running);
                    }
                    position = self.reset();
                }
                if self.lease.is_none() {
                    self.set_state(State::Standby);
                    self.wait(&rt, &mut head_rx, Some(Duration::from_millis(250)));
                    continue;
                }
            }
            let head = *head_rx.borrow_and_update();
            if position >= head && self.live_chain {
                match self.land(&mut in_flight) {
                    Ok(()) => self.wait(&rt, &mut head_rx, None),
                    Err(halt) => {
                        position = self.reset();
                        if let Some(why) = self.halted(halt, &rt, &mut head_rx) {
                            return Some(why);
                        }
                    }
                }
                continue;
            }
            let step = self.compute(position, head);
            // The batch before this one must have landed before anything else is stored.
            if let Err(halt) = self.land(&mut in_flight) {
                position = self.reset();
                if let Some(why) = self.halted(halt, &rt, &mut head_rx) {
                    return Some(why);
                }
                continue;
            }
            match step {
                Step::Ready { through, batch: None } => {
                    // Nothing to store (no events of its tags): the stored offset,
                    // which the next batch continues from, stays where it is.
                    position = through;
                    self.progress.lock().unwrap().offset = through;
                }
                Step::Ready { through, batch: Some(batch) } => {
                    position = through;
                    in_flight = Some(self.store_in_background(batch));
                }
                Step::Failed { partial, why } => {
                    if let Some(batch) = partial {
                        let offset = batch.offset.offset;
                        if let Err(halt) = store(&self.env, &batch) {
                            position = self.reset();
                            if let Some(why) = self.halted(halt, &rt, &mut head_rx) {
                                return Some(why);
                            }
                            continue;
                        }
                        self.landed(offset, batch.offset.live);
                    }
                    return Some(why);
                }
                Step::Halt(halt) => {
                    position = self.reset();
                    if let Some(why) = self.halted(halt, &rt, &mut head_rx) {
                        return Some(why);
                    }
                }
            }
        }
    }

    /// A failure ends the worker (its reason); storage trouble is waited out.
    fn halted(&self, halt: Halt, rt: &tokio::runtime::Runtime, head: &mut Head) -> Option<String> {
        match halt {
            Halt::Fail(why) => Some(why),
            Halt::Retry(why) => {
                tracing::warn!(projection = %self.spec.name, "{why}; trying again");
                self.set_state(State::Retrying(why));
                self.wait(rt, head, Some(self.env.config.retry));
                None
            }
        }
    }

    /// Back to what is stored: after a failed write, or a step that must be computed again.
    fn reset(&mut self) -> u64 {
        self.cache.lock().unwrap().forget();
        self.chain = self.stored;
        self.live_chain = self.live_stored;
        self.progress.lock().unwrap().offset = self.stored;
        self.stored
    }

    /// Wait for the batch in flight (if any) to be stored.
    fn land(&mut self, in_flight: &mut Option<InFlight>) -> Result<(), Halt> {
        let Some(f) = in_flight.take() else { return Ok(()) };
        let result = self.store.results.recv().unwrap_or_else(|_| Err(Halt::Fail("storing a batch panicked".into())));
        result?;
        self.cache.lock().unwrap().landed();
        self.landed(f.offset, f.live);
        Ok(())
    }

    /// A batch with this offset is stored.
    fn landed(&mut self, offset: u64, live: bool) {
        self.stored = offset;
        self.env.metrics.projection_batches_total.fetch_add(1, Relaxed);
        {
            let mut p = self.progress.lock().unwrap();
            p.offset = offset;
            if matches!(p.state, State::Retrying(_)) {
                p.state = State::Running;
            }
        }
        if live && !self.live_stored {
            self.live_stored = true;
            self.progress.lock().unwrap().live = true;
            tracing::info!(projection = %self.spec.name, generation = self.spec.generation, "view caught up: serving it");
            if let Some(f) = self.on_live.take() {
                f();
            }
        }
    }

    /// Hand `batch` to the store thread. Called only once the batch before it has
    /// landed, so the cache's pending updates are this batch's alone, and
    /// [`ViewCache::landed`] moves exactly them.
    fn store_in_background(&mut self, batch: ProjectionBatch) -> InFlight {
        self.cache.lock().unwrap().queue(&batch.updates);
        let (offset, live) = (batch.offset.offset, batch.offset.live);
        self.chain = offset;
        self.live_chain = live;
        // The store thread takes one batch at a time and only one is in flight,
        // so this never waits; if the thread is gone, `land` reports it.
        let _ = self.store.batches.send(batch);
        InFlight { offset, live }
    }

    /// Wait until the head moves, the worker is told to stop, or `timeout` passes.
    fn wait(&self, rt: &tokio::runtime::Runtime, head: &mut Head, timeout: Option<Duration>) {
        let mut stop = self.stop.clone();
        let timeout = timeout.unwrap_or(Duration::from_secs(1));
        rt.block_on(async {
            tokio::select! {
                _ = head.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(timeout) => {}
            }
        });
    }

    fn load_offset(&mut self) -> Result<(), Halt> {
        let offsets =
            self.env.journal.projection_offsets(self.name()).map_err(|e| journal_halt("reading its offset", e))?;
        if let Some(o) = offsets.into_iter().find(|o| o.generation == self.spec.generation) {
            self.stored = o.offset;
            self.live_stored = o.live;
        }
        self.live_stored |= self.spec.live;
        self.chain = self.stored;
        self.live_chain = self.live_stored;
        self.progress.lock().unwrap().live = self.live_stored;
        Ok(())
    }

    /// Take the next batch after `position` (up to the head), hand it to the
    /// component on top of the batch in flight, and start reading the one after.
    fn compute(&mut self, position: u64, head: u64) -> Step {
        let feed = match self.reader.take(position).and_then(|read| read) {
            Ok(feed) => feed,
            Err(e) => return Step::Halt(journal_halt("reading events", e)),
        };
        if feed.through < *self.env.head.borrow() {
            self.reader.ask(feed.through);
        }
        let journal = self.env.journal.clone();
        // A view that is not live yet takes over once it has everything up to the head.
        let live = self.live_chain || feed.through >= head;
        if feed.events.is_empty() {
            let batch = (live && !self.live_chain).then(|| self.batch(feed.through, Vec::new(), true));
            return Step::Ready { through: feed.through, batch };
        }
        let events: Vec<StoredEventRef> = feed.events.into_iter().map(to_guest).collect();
        let overlay = Overlay::new(journal, self.name(), self.spec.generation, self.cache.clone());
        match self.call(&events, &overlay) {
            Ok(()) => {
                self.count(events.len());
                let updates = overlay.into_updates();
                Step::Ready { through: feed.through, batch: Some(self.batch(feed.through, updates, live)) }
            }
            Err(Halt::Retry(why)) => Step::Halt(Halt::Retry(why)),
            Err(Halt::Fail(why)) if events.len() == 1 => Step::Failed { partial: None, why: self.at(&events[0], &why) },
            Err(Halt::Fail(_)) => self.find_failing_event(&events, feed.through, live),
        }
    }

    /// A batch failed: hand it in again one event per call, to store the updates
    /// of the events before the one that fails and fail naming it.
    fn find_failing_event(&mut self, events: &[StoredEventRef], through: u64, live: bool) -> Step {
        let overlay = Overlay::new(self.env.journal.clone(), self.name(), self.spec.generation, self.cache.clone());
        for (i, event) in events.iter().enumerate() {
            match self.call(std::slice::from_ref(event), &overlay) {
                Ok(()) => {}
                Err(Halt::Retry(why)) => return Step::Halt(Halt::Retry(why)),
                Err(Halt::Fail(why)) => {
                    self.count(i);
                    let partial =
                        (i > 0).then(|| self.batch(events[i - 1].offset, overlay.into_updates(), self.live_chain));
                    return Step::Failed { partial, why: self.at(event, &why) };
                }
            }
        }
        // Every event on its own works (e.g. the batch as a whole needed more
        // memory than the cap): store them all.
        self.count(events.len());
        Step::Ready { through, batch: Some(self.batch(through, overlay.into_updates(), live)) }
    }

    fn at(&self, event: &StoredEventRef, why: &str) -> String {
        format!(
            "version {} failed on the event at offset {} ({}#{}, {}): {why}",
            self.spec.code.version, event.offset, event.persistence_id, event.seq_nr, event.manifest
        )
    }

    fn count(&self, events: usize) {
        self.progress.lock().unwrap().events += events as u64;
        self.env.metrics.projection_events_total.fetch_add(events as u64, Relaxed);
    }

    /// One `handle-events` call; its updates go into `overlay`.
    fn call(&mut self, events: &[StoredEventRef], overlay: &Arc<Overlay>) -> Result<(), Halt> {
        if self.sandbox.is_none() {
            let sandbox = self
                .spec
                .code
                .instantiate(self.env.registry.runtime())
                .map_err(|e| Halt::Fail(format!("cannot instantiate version {}: {e}", self.spec.code.version)))?;
            self.sandbox = Some(sandbox);
        }
        let sandbox = self.sandbox.as_mut().unwrap();
        let result = sandbox.handle_events(events, overlay.clone());
        let fault = |sandbox: &mut Option<ProjectionSandbox>, metrics: &Metrics, why: String| {
            // A trapped instance cannot be called again.
            *sandbox = None;
            metrics.projection_faults_total.fetch_add(1, Relaxed);
            Halt::Fail(why)
        };
        match result {
            Ok(Ok(updates)) => match check_updates(updates, self.env.config.max_value_bytes) {
                Ok(updates) => {
                    overlay.apply(updates);
                    Ok(())
                }
                Err(why) => Err(fault(&mut self.sandbox, &self.env.metrics, why)),
            },
            Ok(Err(message)) => {
                Err(fault(&mut self.sandbox, &self.env.metrics, format!("handle-events returned an error: {message}")))
            }
            Err(ProjectionFault::Guest(why)) => Err(fault(&mut self.sandbox, &self.env.metrics, why)),
            Err(ProjectionFault::Host(why)) => {
                self.sandbox = None;
                Err(Halt::Retry(format!("reading its view: {why}")))
            }
        }
    }

    /// The batch that stores `updates` with `offset`, continuing the chain.
    fn batch(&self, offset: u64, updates: Vec<crate::journal::ViewUpdate>, live: bool) -> ProjectionBatch {
        let code = &self.spec.code;
        ProjectionBatch {
            offset: ProjectionOffset {
                projection: self.spec.name.clone(),
                generation: self.spec.generation,
                offset,
                view_version: code.info.view_version,
                component_version: code.version,
                live,
            },
            previous_offset: self.chain,
            updates,
            fence: self.lease.map(|epoch| Fence { node: self.node(), leases: vec![(LEADER, epoch)] }),
        }
    }
}

/// The reader of the worker's batches: the events of its tags after a position,
/// up to the durable head when read.
fn read_ahead(env: &Env, spec: &Spec) -> ReadAhead<JournalResult<Feed>> {
    let (journal, head, config) = (env.journal.clone(), env.head.clone(), env.config.clone());
    let tags = spec.code.info.tags.clone();
    let read = move |position| {
        let head = *head.borrow();
        let read = |tag: &str, from, limit| journal.events_by_tag(tag, from, limit);
        next_batch(read, &tags, position, head, config.batch_events, config.batch_bytes)
    };
    ReadAhead::spawn(format!("mneme-projection-{}-read", spec.name), Box::new(read))
        .expect("spawn projection reader thread")
}

/// Store a batch: its updates and offset in one atomic write.
fn store(env: &Env, batch: &ProjectionBatch) -> Result<(), Halt> {
    env.journal.write_projection(batch).map_err(|e| journal_halt("storing a batch", e))
}

fn to_guest(e: StoredEvent) -> StoredEventRef {
    StoredEventRef {
        persistence_id: e.persistence_id,
        seq_nr: e.seq_nr,
        offset: e.offset,
        timestamp_ms: e.timestamp_ms,
        manifest: e.manifest,
        tags: e.tags,
        payload: e.payload,
    }
}
