//! The engine: starts the threads and takes commands in.
//!
//! ```text
//!  submit() ──► router ──► shard[hash(pid) % N] ──► writer (one fsync per group) ──► shard
//!                          │  entity state machine, Wasm calls             │ written
//!                          └──────────── replies + side effects ◄──────────┘
//! ```
//! Each shard is one OS thread that owns its entities and its Wasm instances, so an
//! entity's commands run strictly in order without locks. The single writer thread
//! merges whatever batches the shards have handed in into one journal write, which
//! is the group commit: one fsync covers many commands of many entities. The
//! outbox thread delivers the commands entities send, once they are durable.
//!
//! Architecture invariant: the engine is the top of the command path; nothing
//! below it imports it.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::cluster::{Cluster, Ownership};
use crate::component::Registry;
use crate::config::EngineConfig;
use crate::error::{CommandError, CommandResult};
use crate::journal::{Journal, JournalResult, StoredTopicMessage};
use crate::metrics::Metrics;
use crate::names::{persistence_id, validate_entity};
use crate::outbox::{self, OutboxMsg};
use crate::projection::Projections;
use crate::router::{EntityState, Envelope, Outcome, ReplyTo, Router, ShardMsg};
use crate::shard::{self, RecoveryPermits, Shared};
use crate::side_effects::SideEffectRunner;
use crate::telemetry;
use crate::topics::{self, Topics};
use crate::writer::{self, Head, WriterMsg};

/// With several hosts: how often an idle writer reads the journal's head.
const HEAD_FOLLOW: std::time::Duration = std::time::Duration::from_millis(100);

/// With several hosts: how often topic readers look for other hosts' messages.
const TOPICS_FOLLOW: std::time::Duration = std::time::Duration::from_millis(250);

/// The running engine. Cheap to clone; shut it down with [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    router: Router,
    shards: Mutex<Vec<JoinHandle<()>>>,
    /// The outbox stops first; the writer after the shards.
    outbox: (crossbeam_channel::Sender<OutboxMsg>, Mutex<Option<JoinHandle<()>>>),
    writer: Mutex<Option<JoinHandle<()>>>,
    head: Head,
    projections: Projections,
    /// With several hosts: the lease keeper, left after the last write.
    cluster: Mutex<Option<Cluster>>,
}

/// A page of a topic: its messages from a position, and what is there to read.
#[derive(Debug, Clone)]
pub struct TopicPage {
    /// The newest position of the topic (0: no message yet).
    pub head: u64,
    /// The oldest position served (`--topic-retention`).
    pub first: u64,
    pub messages: Vec<StoredTopicMessage>,
}

impl Engine {
    pub fn start(config: EngineConfig, journal: Arc<dyn Journal>, registry: Arc<Registry>) -> Engine {
        Self::start_with(config, journal, registry, None)
    }

    /// Start as one of several hosts on a shared journal: commands run only for
    /// the entities of the partitions `cluster` holds, and every write is fenced
    /// by their leases (`cluster/`).
    pub fn start_in_cluster(
        config: EngineConfig,
        journal: Arc<dyn Journal>,
        registry: Arc<Registry>,
        cluster: Cluster,
    ) -> Engine {
        Self::start_with(config, journal, registry, Some(cluster))
    }

    fn start_with(
        config: EngineConfig,
        journal: Arc<dyn Journal>,
        registry: Arc<Registry>,
        cluster: Option<Cluster>,
    ) -> Engine {
        let ownership = cluster.as_ref().map(|c| c.ownership().clone());
        let n = config.shards.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
        let router = Router::new(senders);
        let metrics = Arc::new(Metrics::default());
        // With several hosts the others' writes move the head too: follow it.
        let follow = ownership.as_ref().map(|_| HEAD_FOLLOW);
        let (writer, head, writer_thread) = writer::spawn(journal.clone(), metrics.clone(), follow);
        let projections = Projections::start(
            journal.clone(),
            registry.clone(),
            head.clone(),
            metrics.clone(),
            config.projections.clone(),
            ownership.clone(),
        );
        // Loads the pending entries before any shard can add one.
        let (outbox_tx, outbox_thread) =
            outbox::spawn(journal.clone(), router.clone(), writer.clone(), metrics.clone(), ownership.clone());
        let writer_id = new_writer_id();
        let topics = Arc::new(Topics::default());
        if ownership.is_some() {
            // Other hosts publish too: topic readers here look again every
            // TOPICS_FOLLOW (event readers follow the journal's head instead).
            let topics = topics.clone();
            let mut closing = topics.closing();
            std::thread::Builder::new()
                .name("mneme-topics".into())
                .spawn(move || {
                    while !*closing.borrow_and_update() {
                        std::thread::sleep(TOPICS_FOLLOW);
                        topics.nudge();
                    }
                })
                .expect("spawn the topics thread");
        }
        let side_effects = SideEffectRunner::new(outbox_tx.clone(), topics, metrics.clone(), writer_id.clone());
        let shared = Arc::new(Shared {
            metrics,
            recoveries: RecoveryPermits::new(config.max_concurrent_recoveries),
            config,
            registry,
            journal,
            side_effects,
            writer,
            writer_id,
            ownership,
        });
        let shards = (receivers.into_iter().enumerate())
            .map(|(i, rx)| shard::spawn(i, shared.clone(), router.shards()[i].clone(), rx))
            .collect();
        let inner = Inner {
            shared,
            router,
            shards: Mutex::new(shards),
            outbox: (outbox_tx, Mutex::new(Some(outbox_thread))),
            writer: Mutex::new(Some(writer_thread)),
            head,
            projections,
            cluster: Mutex::new(cluster),
        };
        Engine { inner: Arc::new(inner) }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.shared.registry
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.shared.journal
    }

    /// Wakes readers of topics when messages become durable.
    pub fn topics(&self) -> &Arc<Topics> {
        self.inner.shared.side_effects.topics()
    }

    /// Messages of `topic` from position `from` (at most `limit`), within the
    /// retention (`EngineConfig::topic_retention`). Reads the journal: call it
    /// off async workers.
    pub fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<TopicPage> {
        let journal = self.journal();
        let head = journal.topic_head(topic)?;
        let first = topics::readable_from(head, self.inner.shared.config.topic_retention);
        let messages = journal.topic_messages(topic, from.max(first), limit)?;
        Ok(TopicPage { head, first, messages })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// The global offset of the newest durable event, updated after every write
    /// (`changed().await` wakes a reader that follows the journal live).
    pub fn durable_head(&self) -> Head {
        self.inner.head.clone()
    }

    /// The projections fed from this engine's journal.
    pub fn projections(&self) -> &Projections {
        &self.inner.projections
    }

    /// With several hosts: what this host owns, and who owns the rest.
    pub fn ownership(&self) -> Option<&Arc<Ownership>> {
        self.inner.shared.ownership.as_ref()
    }

    /// The id stored with every event this process writes (Akka's writer uuid).
    pub fn writer_id(&self) -> &str {
        &self.inner.shared.writer_id
    }

    /// A valid entity of a deployed type: its persistence id.
    fn check(&self, entity_type: &str, entity_id: &str) -> CommandResult<String> {
        validate_entity(entity_type, entity_id).map_err(CommandError::InvalidId)?;
        self.registry().require(entity_type)?;
        Ok(persistence_id(entity_type, entity_id))
    }

    /// Send a command and wait for its outcome. A successful outcome is returned
    /// only after the command's events (and those before it) are durable.
    pub async fn send(&self, entity_type: &str, entity_id: &str, payload: Vec<u8>) -> CommandResult<Outcome> {
        let rx = self.submit(entity_type, entity_id, String::new(), payload)?;
        rx.await.unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// Like [`Engine::send`], from a thread that is not running async code.
    pub fn send_blocking(&self, entity_type: &str, entity_id: &str, payload: Vec<u8>) -> CommandResult<Outcome> {
        let rx = self.submit(entity_type, entity_id, String::new(), payload)?;
        rx.blocking_recv().unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// Queue a command; the receiver yields its outcome (an error when the engine
    /// shuts down first: map it to [`CommandError::ShuttingDown`]).
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
            accepted: std::time::Instant::now(),
            reply_to: ReplyTo::Caller(tx),
            origin: None,
            span: telemetry::command_span(&tracing::Span::current(), entity_type, entity_id, None),
        };
        let shard = self.inner.router.shard_of(&pid);
        shard.send(ShardMsg::Command(env)).map_err(|_| CommandError::ShuttingDown)?;
        Ok(rx)
    }

    /// The entity's durable state (recovering it if it is not in memory).
    pub async fn state(&self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let rx = self.request_state(entity_type, entity_id)?;
        rx.await.unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// Like [`Engine::state`], from a thread that is not running async code.
    pub fn state_blocking(&self, entity_type: &str, entity_id: &str) -> CommandResult<EntityState> {
        let rx = self.request_state(entity_type, entity_id)?;
        rx.blocking_recv().unwrap_or(Err(CommandError::ShuttingDown))
    }

    fn request_state(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> CommandResult<oneshot::Receiver<CommandResult<EntityState>>> {
        let pid = self.check(entity_type, entity_id)?;
        let (tx, rx) = oneshot::channel();
        let msg =
            ShardMsg::GetState { entity_type: entity_type.to_string(), entity_id: entity_id.to_string(), reply_to: tx };
        self.inner.router.shard_of(&pid).send(msg).map_err(|_| CommandError::ShuttingDown)?;
        Ok(rx)
    }

    /// Stop the projections and the outbox (deliveries not settled are delivered
    /// again after the next start), then the shards after their in-flight writes
    /// finish, then the writer, so the journal is closed when this returns.
    pub fn shutdown(&self) {
        self.inner.projections.shutdown();
        self.topics().close();
        let _ = self.inner.outbox.0.send(OutboxMsg::Stop);
        if let Some(t) = self.inner.outbox.1.lock().unwrap().take() {
            let _ = t.join();
        }
        for s in self.inner.router.shards() {
            let _ = s.send(ShardMsg::Shutdown);
        }
        for t in std::mem::take(&mut *self.inner.shards.lock().unwrap()) {
            let _ = t.join();
        }
        let _ = self.inner.shared.writer.send(WriterMsg::Stop);
        if let Some(t) = self.inner.writer.lock().unwrap().take() {
            let _ = t.join();
        }
        // Nothing more is written: hand the partitions to the other hosts at once.
        if let Some(cluster) = self.inner.cluster.lock().unwrap().take() {
            cluster.leave();
        }
    }
}

/// A fresh id for this process's writes.
fn new_writer_id() -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (std::process::id(), SystemTime::now()).hash(&mut h);
    format!("{:016x}", h.finish())
}
