//! The engine: routes commands to shards and wires the threads together.
//!
//! ```text
//!  send() ──► shard[hash(pid) % N] ──► writer (one fsync per group) ──► shard
//!                 │  entity state machine, Wasm calls        │ Written
//!                 └────────────── replies + side effects ◄───┘
//! ```
//! Each shard is one OS thread that owns its entities and its Wasm instances, so an
//! entity's commands run strictly in order without locks. The single writer thread
//! merges whatever batches the shards have submitted into one journal write, which
//! is the group commit: one fsync covers many commands of many entities.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::component::Registry;
use crate::effects::{Effects, Topics};
use crate::error::{CommandError, CommandResult};
use crate::metrics::Metrics;
use crate::journal::{persistence_id, validate_entity_id, validate_entity_type, Journal, WriteBatch};
use crate::shard::{self, Envelope, ShardMsg};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads running entities).
    pub shards: usize,
    /// Snapshot every N events for components whose `describe()` leaves it to the host (0 = never).
    pub snapshot_every: u64,
    /// Capacity of each entity's explicit stash.
    pub stash_capacity: usize,
    /// Passivate entities idle this long.
    pub idle_timeout: Duration,
    /// At most this many entities recover at the same time.
    pub max_concurrent_recoveries: usize,
    /// The journal refuses events with a larger payload.
    pub max_event_bytes: usize,
    /// Events handed to `apply-events` per call during recovery.
    pub recovery_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            snapshot_every: 1000,
            stash_capacity: 1000,
            idle_timeout: Duration::from_secs(120),
            max_concurrent_recoveries: 64,
            max_event_bytes: 1 << 20,
            recovery_batch: 1000,
        }
    }
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `reply: ok(bytes)`.
    Reply(Vec<u8>),
    /// `reply: error(message)`: a domain rejection, not a fault.
    ReplyError(String),
    /// The handler gave no reply.
    NoReply,
}

/// An entity's durable state, as returned by [`Engine::state`].
#[derive(Debug, Clone)]
pub struct EntityState {
    pub seq_nr: u64,
    pub state: Arc<[u8]>,
    pub component_version: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Sends messages to the shard that owns an entity.
#[derive(Clone)]
pub(crate) struct Router {
    shards: Arc<Vec<Sender<ShardMsg>>>,
}

impl Router {
    pub(crate) fn shard_of(&self, pid: &str) -> &Sender<ShardMsg> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pid.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    /// Fire and forget: deliver a command whose reply nobody waits for.
    pub(crate) fn tell(&self, entity_type: String, entity_id: String, payload: Vec<u8>) {
        let pid = persistence_id(&entity_type, &entity_id);
        let env = Envelope { entity_type, entity_id, manifest: String::new(), payload, accepted_ms: now_ms(), reply: None };
        let _ = self.shard_of(&pid).send(ShardMsg::Command(env));
    }
}

/// A counting semaphore for blocking threads (bounds concurrent recoveries).
pub(crate) struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    pub(crate) fn new(n: usize) -> Self {
        Semaphore { free: Mutex::new(n.max(1)), cv: Condvar::new() }
    }
    pub(crate) fn acquire(&self) -> SemaphoreGuard<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.cv.wait(free).unwrap();
        }
        *free -= 1;
        SemaphoreGuard(self)
    }
}

pub(crate) struct SemaphoreGuard<'a>(&'a Semaphore);

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
}

/// What every shard shares.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub registry: Arc<Registry>,
    pub journal: Arc<dyn Journal>,
    pub effects: Effects,
    pub writer: Sender<WriterMsg>,
    pub writer_id: String,
    pub recoveries: Semaphore,
    pub metrics: Arc<Metrics>,
}

pub(crate) enum WriterMsg {
    Write(WriteRequest),
    Stop,
}

/// A shard's batch on its way to the journal.
pub(crate) struct WriteRequest {
    pub batch: WriteBatch,
    pub batch_id: u64,
    pub notify: Sender<ShardMsg>,
}

/// The running engine. Cheap to clone; shut it down with [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    router: Router,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    pub fn start(config: EngineConfig, journal: Arc<dyn Journal>, registry: Arc<Registry>) -> Engine {
        let n = config.shards.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
        let router = Router { shards: Arc::new(senders) };
        let (timer_tx, timer_rx) = crossbeam_channel::unbounded();
        let (writer_tx, writer_rx) = crossbeam_channel::unbounded();
        let writer_id = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (std::process::id(), SystemTime::now()).hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            recoveries: Semaphore::new(config.max_concurrent_recoveries),
            config,
            registry,
            journal: journal.clone(),
            effects: Effects { router: router.clone(), topics: Topics::default(), timers: timer_tx },
            writer: writer_tx,
            writer_id,
        });
        let mut threads = Vec::new();
        threads.push(spawn_writer(journal.clone(), writer_rx, metrics));
        threads.push(crate::timers::spawn(journal, router.clone(), timer_rx));
        for (i, rx) in receivers.into_iter().enumerate() {
            let tx = router.shards[i].clone();
            threads.push(shard::spawn(i, shared.clone(), tx, rx));
        }
        Engine { inner: Arc::new(Inner { shared, router, threads: Mutex::new(threads) }) }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.shared.registry
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.shared.journal
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.shared.effects.topics
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    pub fn writer_id(&self) -> &str {
        &self.inner.shared.writer_id
    }

    fn check(&self, entity_type: &str, entity_id: &str) -> CommandResult<String> {
        validate_entity_type(entity_type).map_err(CommandError::InvalidId)?;
        validate_entity_id(entity_id).map_err(CommandError::InvalidId)?;
        if self.registry().get(entity_type).is_none() {
            return Err(CommandError::UnknownType(entity_type.to_string()));
        }
        Ok(persistence_id(entity_type, entity_id))
    }

    /// Send a command and wait for its outcome. A successful outcome is returned
    /// only after the command's events (and those before it) are durable.
    pub async fn send(&self, entity_type: &str, entity_id: &str, payload: Vec<u8>) -> CommandResult<Outcome> {
        let rx = self.submit(entity_type, entity_id, String::new(), payload)?;
        rx.await.unwrap_or_else(|_| Err(CommandError::Overloaded("engine shut down before replying".into())))
    }

    /// Like [`Engine::send`], from a thread that is not running async code.
    pub fn send_blocking(&self, entity_type: &str, entity_id: &str, payload: Vec<u8>) -> CommandResult<Outcome> {
        let rx = self.submit(entity_type, entity_id, String::new(), payload)?;
        rx.blocking_recv().unwrap_or_else(|_| Err(CommandError::Overloaded("engine shut down before replying".into())))
    }

    /// Queue a command; the receiver yields its outcome.
    pub fn submit(
        &self,
        entity_type: &str,
        entity_id: &str,
        manifest: String,
        payload: Vec<u8>,
    ) -> CommandResult<oneshot::Receiver<CommandResult<Outcome>>> {
        let pid = self.check(entity_type, entity_id)?;
        let (tx, rx) = oneshot::channel();
        let env = Envelope {
            entity_type: entity_type.to_string(),
            entity_id: entity_id.to_string(),
            manifest,
            payload,
            accepted_ms: now_ms(),
            reply: Some(tx),
        };
        self.inner
            .router
            .shard_of(&pid)
            .send(ShardMsg::Command(env))
            .map_err(|_| CommandError::Overloaded("engine is shut down".into()))?;
        Ok(rx)
    }

    /// The entity's durable state (recovering it if it is not in memory).
    pub async fn state(&self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let rx = self.request_state(entity_type, entity_id)?;
        rx.await.unwrap_or_else(|_| Err(CommandError::Overloaded("engine shut down before replying".into())))
    }

    fn request_state(&self, entity_type: &str, entity_id: &str) -> CommandResult<oneshot::Receiver<CommandResult<EntityState>>> {
        let pid = self.check(entity_type, entity_id)?;
        let (tx, rx) = oneshot::channel();
        let msg = ShardMsg::GetState { entity_type: entity_type.to_string(), entity_id: entity_id.to_string(), reply: tx };
        self.inner.router.shard_of(&pid).send(msg).map_err(|_| CommandError::Overloaded("engine is shut down".into()))?;
        Ok(rx)
    }

    /// Like [`Engine::state`], from a thread that is not running async code.
    pub fn state_blocking(&self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let rx = self.request_state(entity_type, entity_id)?;
        rx.blocking_recv().unwrap_or_else(|_| Err(CommandError::Overloaded("engine shut down before replying".into())))
    }

    /// Stop the shards after their in-flight writes finish, then the writer.
    pub fn shutdown(&self) {
        for s in self.inner.router.shards.iter() {
            let _ = s.send(ShardMsg::Shutdown);
        }
        let threads = std::mem::take(&mut *self.inner.threads.lock().unwrap());
        // Shards first (they drain their writes through the writer), then the
        // writer and the timers, so the journal is closed when this returns.
        let mut threads = threads.into_iter();
        let (writer, timers) = (threads.next(), threads.next());
        for t in threads {
            let _ = t.join();
        }
        let _ = self.inner.shared.writer.send(WriterMsg::Stop);
        let _ = self.inner.shared.effects.timers.send(crate::timers::TimerMsg::Stop);
        for t in [writer, timers].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

fn spawn_writer(journal: Arc<dyn Journal>, rx: Receiver<WriterMsg>, metrics: Arc<Metrics>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mneme-writer".into())
        .spawn(move || {
            let mut stop = false;
            while !stop {
                let Ok(first) = rx.recv() else { return };
                let mut requests = Vec::new();
                for msg in std::iter::once(first).chain(rx.try_iter()) {
                    match msg {
                        WriterMsg::Write(r) => requests.push(r),
                        WriterMsg::Stop => stop = true,
                    }
                }
                let mut merged = WriteBatch::default();
                let mut notify = Vec::with_capacity(requests.len());
                for r in requests {
                    merged.append(r.batch);
                    notify.push((r.notify, r.batch_id));
                }
                let result = journal.write(&merged).map_err(|e| e.to_string());
                match &result {
                    Ok(()) => {
                        use std::sync::atomic::Ordering::Relaxed;
                        metrics.journal_writes_total.fetch_add(1, Relaxed);
                        metrics.events_persisted_total.fetch_add(merged.events.len() as u64, Relaxed);
                        metrics.snapshots_total.fetch_add(merged.snapshots.len() as u64, Relaxed);
                    }
                    Err(e) => tracing::error!(events = merged.events.len(), "journal write failed: {e}"),
                }
                for (tx, batch_id) in notify {
                    let _ = tx.send(ShardMsg::Written { batch_id, result: result.clone() });
                }
            }
        })
        .expect("spawn writer thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn semaphore_bounds_concurrency() {
        let sem = Arc::new(Semaphore::new(2));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (sem, now, peak) = (sem.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _permit = sem.acquire();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2, "at most 2 holders, and the bound is reached");
    }
}
