//! What the outbox costs: a command that persists one event and sends one command
//! to another entity, against the same command without the send, in the same run.
//!
//! The send's whole path is counted: the outbox entry in the sender's frame, the
//! delivery through the router, the target's idempotency-key lookup and handler
//! call, and the done record written after it. The run with sends ends when every
//! delivery is recorded as done, so a backlog left behind is not hidden: its rate
//! is commands over (load time + the time to drain the outbox).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mneme::component::sandbox::Runtime;
use mneme::component::{Registry, SandboxLimits};
use mneme::{Engine, EngineConfig, Outcome};
use mneme_sdk::{Context, Effect, Entity, Reply, SideEffect};
use serde::{Deserialize, Serialize};

use crate::report::Report;
use mneme_testkit::Native;

/// The bench's entity: counts bumps; a bump may send a no-op to another entity.
struct Pinger;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum Command {
    Bump,
    BumpAndSend { to: String },
    Noop,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum Event {
    Bumped,
}

impl Entity for Pinger {
    type Command = Command;
    type Event = Event;
    type State = u64;
    const TYPE_NAME: &'static str = "pinger";

    fn handle(_count: &u64, command: Command, _ctx: &Context) -> Effect<Event> {
        match command {
            Command::Bump => Effect::persist(Event::Bumped).then_reply(Reply::ack()),
            Command::BumpAndSend { to } => Effect::persist(Event::Bumped)
                .then_run(SideEffect::send("pinger", to, &Command::Noop))
                .then_reply(Reply::ack()),
            Command::Noop => Effect::none(),
        }
    }

    fn apply(count: u64, _event: &Event) -> u64 {
        count + 1
    }
}

fn engine(dir: &std::path::Path) -> Engine {
    let journal = crate::engine::open_journal(dir);
    let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), dir).unwrap());
    registry.register_native("pinger", Arc::new(|| Box::new(Native::<Pinger>::default()))).unwrap();
    Engine::start(EngineConfig::default(), journal, registry)
}

const ENTITIES: usize = 10_000;
const SINKS: usize = 1000;
const CLIENTS: usize = 1024;

/// Closed loop for `duration`, each client sending `command(n)` to its entities
/// in turn; then waits for the outbox to drain. Returns commands/s over the load
/// and the drain, and the drain time.
fn run(engine: &Engine, duration: Duration, command: fn(usize) -> Vec<u8>) -> (f64, Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (engine, stop, done) = (engine.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = c + k * CLIENTS;
                    k += 1;
                    let id = format!("p{}", n % ENTITIES);
                    let r = engine.send("pinger", &id, command(n)).await;
                    assert!(matches!(r, Ok(Outcome::Reply(_))), "{r:?}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
    });
    let loaded = Instant::now();
    while engine.metrics().outbox_pending.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain = loaded.elapsed();
    (done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64(), drain)
}

pub fn run_all(report: &mut Report, quick: bool) {
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let mut rates = Vec::new();
    for send in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let command: fn(usize) -> Vec<u8> = if send {
            |n| format!(r#"{{"type":"BumpAndSend","to":"sink{}"}}"#, n % SINKS).into_bytes()
        } else {
            |_| br#"{"type":"Bump"}"#.to_vec()
        };
        let (rate, drain) = run(&engine, duration, command);
        let delivered = engine.metrics().outbox_deliveries_total.load(Ordering::Relaxed);
        engine.shutdown();
        rates.push((rate, drain, delivered));
    }
    let (without, with) = (rates[0], rates[1]);
    report.figure("outbox: 1 event per command, no send (native handler, 1024 clients)", without.0, "cmds/s", None);
    report.figure(
        &format!(
            "outbox: 1 event + 1 send per command, every send delivered and recorded done ({} deliveries, drained in {} ms)",
            with.2,
            with.1.as_millis()
        ),
        with.0,
        "cmds/s",
        Some(("no send", without.0)),
    );
}
