//! Engine figures: handler cost, in-process and HTTP throughput with latency,
//! recovery, activation, restart, memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bank_account::AccountEntity;
use mneme::component::bindings::mneme::entity::types::{Action, Command, CommandMetadata};
use mneme::component::sandbox::Runtime;
use mneme::component::{EntityHandler, EventBatch, Registry, SandboxLimits};
use mneme::journal::{self, Backend, Journal, NewEvent, Snapshot, WriteBatch};
use mneme::{Engine, EngineConfig, Outcome};

use crate::report::Report;
use mneme_testkit::Native;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target"))
}

pub(crate) fn component(name: &str) -> Vec<u8> {
    let p = target_dir().join("components").join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-components.sh)", p.display()))
}

pub fn registry(data: &Path, native: bool) -> Arc<Registry> {
    let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), data).unwrap());
    if native {
        registry.register_native("bank-account", Arc::new(|| Box::new(Native::<AccountEntity>::default()))).unwrap();
    } else {
        registry.deploy("bank-account", &component("bank-account")).unwrap();
    }
    registry
}

pub(crate) fn start(data: &Path, native: bool, config: EngineConfig) -> Engine {
    Engine::start(config, open_journal(data), registry(data, native))
}

/// The backend the engine scenarios run on (`--journal`).
pub static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

pub(crate) fn open_journal(data: &Path) -> Arc<dyn Journal> {
    journal::open(data, *BACKEND.get_or_init(Backend::default)).unwrap()
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn deposit() -> Vec<u8> {
    br#"{"type":"Deposit","amount":1}"#.to_vec()
}

/// Cost of one `handle-command` (a deposit on an open account): the Rust component
/// and, when built (`scripts/build-polyglot.sh`), the Python, JavaScript and C ones,
/// each against the same Rust code compiled natively, without the engine around it.
pub fn handler_cost(report: &mut Report, quick: bool) {
    let n = if quick { 20_000 } else { 200_000 };
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path(), false);
    let mut handlers: Vec<(String, Box<dyn EntityHandler>, usize)> = vec![
        ("native Rust".into(), Box::new(Native::<AccountEntity>::default()), n),
        ("Rust component".into(), registry.get("bank-account").unwrap().instantiate(registry.runtime()).unwrap(), n),
    ];
    for lang in ["c", "js", "python"] {
        let p = target_dir().join("components-polyglot").join(format!("bank-account-{lang}.wasm"));
        if let Ok(wasm) = std::fs::read(&p) {
            let c = registry.deploy(&format!("bank-account-{lang}"), &wasm).unwrap();
            handlers.push((format!("{lang} component"), c.instantiate(registry.runtime()).unwrap(), n / 10));
        }
    }
    let mut native = 0.0;
    for (name, h, calls) in handlers.iter_mut() {
        let state = br#"{"status":"open","balance":100}"#;
        let mut cmd = Command {
            manifest: String::new(),
            payload: deposit(),
            metadata: CommandMetadata {
                entity_type: "bank-account".into(),
                entity_id: "a".into(),
                sequence_nr: 1,
                timestamp_ms: 0,
                origin: None,
            },
        };
        let t = Instant::now();
        for i in 0..*calls {
            cmd.metadata.sequence_nr = i as u64;
            let effect = h.handle_command(state, &cmd).unwrap().unwrap();
            std::hint::black_box(effect);
        }
        let per_call = t.elapsed().as_secs_f64() * 1e6 / *calls as f64;
        let scenario = format!("handle-command (deposit), {name}");
        if native == 0.0 {
            native = per_call;
            report.figure(&scenario, per_call, "µs/call", None);
        } else {
            report.figure(&scenario, per_call, "µs/call", Some(("native Rust", native)));
        }
        // A persisting command as the engine runs it: two calls (decide, then
        // apply the events), or one where the component exports `decide`.
        let t = Instant::now();
        for _ in 0..*calls {
            let effect = h.handle_command(state, &cmd).unwrap().unwrap();
            let Action::Persist(events) = &effect.action else { panic!("a deposit persists") };
            std::hint::black_box(h.apply_events(state, events).unwrap().unwrap());
        }
        let two_calls = t.elapsed().as_secs_f64() * 1e6 / *calls as f64;
        let t = Instant::now();
        for _ in 0..*calls {
            let decision = h.handle_command_and_apply(state, &cmd).unwrap().unwrap();
            let after = match (&decision.effect.action, decision.state_after) {
                (_, Some(after)) => after,
                (Action::Persist(events), None) => h.apply_events(state, events).unwrap().unwrap(),
                _ => panic!("a deposit persists"),
            };
            std::hint::black_box(after);
        }
        let one_call = t.elapsed().as_secs_f64() * 1e6 / *calls as f64;
        report.figure(
            &format!("  deposit decided and applied (`decide` where exported), {name}"),
            one_call,
            "µs/cmd",
            Some(("handle-command + apply-events", two_calls)),
        );
    }
}

/// Closed-loop load: `clients` tasks, each sending deposits to its own entities
/// one after another. Returns (commands/s, sorted latencies).
pub(crate) fn closed_loop(
    engine: &Engine,
    entities: usize,
    clients: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (engine, latencies, stop) = (engine.clone(), latencies.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("acc{}", (c + k * clients) % entities);
                    k += 1;
                    let sent = Instant::now();
                    let r = engine.send("bank-account", &id, deposit()).await;
                    assert!(matches!(r, Ok(Outcome::Reply(_))), "{r:?}");
                    mine.push(sent.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = t.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    (l.len() as f64 / elapsed, l)
}

pub(crate) fn create_accounts(engine: &Engine, n: usize) {
    let rx: Vec<_> = (0..n)
        .map(|i| {
            engine
                .submit("bank-account", &format!("acc{i}"), String::new(), br#"{"type":"CreateAccount"}"#.to_vec())
                .unwrap()
        })
        .collect();
    for r in rx {
        let _ = r.blocking_recv().unwrap();
    }
}

pub fn in_process(report: &mut Report, quick: bool) {
    let entities = 10_000;
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let mut figures = Vec::new();
    for native in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let engine = start(dir.path(), native, EngineConfig::default());
        create_accounts(&engine, entities);
        let (rate, lat) = closed_loop(&engine, entities, 4096, duration);
        engine.shutdown();
        figures.push((rate, percentile(&lat, 0.5), percentile(&lat, 0.99)));
    }
    let (n, w) = (figures[0], figures[1]);
    report.figure("engine in-process, 10k accounts, 4096 clients, native handler", n.0, "cmds/s", None);
    report.figure("engine in-process, 10k accounts, 4096 clients, Wasm handler", w.0, "cmds/s", Some(("native", n.0)));
    report.figure("  latency p50 (Wasm)", w.1, "ms", Some(("native p50", n.1)));
    report.figure("  latency p99 (Wasm)", w.2, "ms", Some(("native p99", n.2)));
    // What the journal alone sustains with the same batch sizes is in the storage rows.
}

pub fn http(report: &mut Report, quick: bool) {
    let entities = 10_000;
    let clients = 64;
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), false, EngineConfig::default());
    create_accounts(&engine, entities);
    // Same-run baseline: the same 64 clients in-process.
    let (base_rate, base_lat) = closed_loop(&engine, entities, clients, duration);
    let (rate, lat) = http_closed_loop(&engine, entities, clients, duration);
    engine.shutdown();
    report.figure(
        "HTTP keep-alive, 64 clients (ureq threads, same machine)",
        rate,
        "cmds/s",
        Some(("in-process 64 clients", base_rate)),
    );
    report.figure(
        "  latency p50 (HTTP)",
        percentile(&lat, 0.5),
        "ms",
        Some(("in-process p50", percentile(&base_lat, 0.5))),
    );
    report.figure(
        "  latency p99 (HTTP)",
        percentile(&lat, 0.99),
        "ms",
        Some(("in-process p99", percentile(&base_lat, 0.99))),
    );
}

/// Closed-loop deposits over HTTP keep-alive: `clients` threads, each on its own
/// accounts, against the API of `engine` served on a loopback port. Returns
/// (commands/s, sorted latencies).
pub fn http_closed_loop(engine: &Engine, entities: usize, clients: usize, duration: Duration) -> (f64, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = mneme::api::router(engine.clone(), mneme::api::ApiConfig::default());
    rt.spawn(async move { mneme::api::axum::serve(listener, app).await });
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let mut lat = Vec::new();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("http://{addr}/v1/entities/bank-account/acc{}", (c + k * clients) % entities);
                    k += 1;
                    let sent = Instant::now();
                    let r = agent.post(&url).send(&deposit()[..]).unwrap();
                    assert_eq!(r.status(), 200);
                    lat.push(sent.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort();
    rt.shutdown_background();
    (rate, lat)
}

fn write_account_events(journal: &dyn Journal, pid: &str, n: u64) {
    let mut seq = 0;
    while seq < n {
        let mut batch = WriteBatch::default();
        for _ in 0..10_000.min(n - seq) {
            seq += 1;
            let payload = if seq == 1 { br#"{"type":"AccountCreated"}"#.to_vec() } else { deposit_event() };
            batch.events.push(NewEvent {
                persistence_id: pid.into(),
                seq_nr: seq,
                timestamp_ms: 0,
                writer_id: "bench".into(),
                manifest: if seq == 1 { "AccountCreated".into() } else { "Deposited".into() },
                tags: vec!["account".into()],
                payload,
            });
        }
        journal.write(&batch).unwrap();
    }
}

fn deposit_event() -> Vec<u8> {
    br#"{"type":"Deposited","amount":1}"#.to_vec()
}

pub fn recovery(report: &mut Report, quick: bool) {
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open_journal(dir.path());
        write_account_events(journal.as_ref(), "bank-account|big", n);
    }
    // Baseline first: reading the same events the way recovery does, without
    // applying them (this also warms the page cache for both replays below).
    let read = {
        let journal = open_journal(dir.path());
        let read_all = || {
            let t = Instant::now();
            let (mut from, mut bytes) = (1, 0);
            while from <= n {
                let chunk =
                    journal.for_each_event("bank-account|big", from, 1000, &mut |e| bytes += e.payload.len()).unwrap();
                from += chunk as u64;
            }
            assert!(bytes > 0);
            n as f64 / t.elapsed().as_secs_f64()
        };
        read_all(); // cold: from disk
        read_all()
    };
    // Three replays per handler, alternated, each in a fresh engine: one replay of
    // 1M events is a fraction of a second, so one hiccup of the machine moves it.
    let (mut native, mut wasm) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for is_native in [true, false] {
            let engine = start(dir.path(), is_native, EngineConfig::default());
            let t = Instant::now();
            let s = engine.state_blocking("bank-account", "big").unwrap();
            let rate = n as f64 / t.elapsed().as_secs_f64();
            assert_eq!(s.seq_nr, n);
            engine.shutdown();
            if is_native {
                native.push(rate)
            } else {
                wasm.push(rate)
            }
        }
    }
    let (native, native_runs) = median(native);
    let (wasm, wasm_runs) = median(wasm);
    report.figure(
        &format!("recovery replay, 1 account (JSON), native handler, median of 3 ({native_runs})"),
        native,
        "events/s",
        Some(("journal read only", read)),
    );
    report.figure(
        &format!("recovery replay, 1 account (JSON), Wasm handler, median of 3 ({wasm_runs})"),
        wasm,
        "events/s",
        Some(("native", native)),
    );
    fold_alone(report, dir.path(), quick);
}

/// The median of `rates` and all of them, as `a / b / c`.
fn median(mut rates: Vec<f64>) -> (f64, String) {
    let all = rates.iter().map(|r| format!("{:.2}M", r / 1e6)).collect::<Vec<_>>().join(" / ");
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], all)
}

/// The guest's side of a replay without the journal: `apply-event-batch` over
/// packed batches of 1000 deposits, the Rust component against the same code
/// compiled natively. Replay reads the next batch while the guest applies this
/// one, so the slower of this and the journal read sets the replay's rate. The
/// bank account decodes a `Deposited` by its manifest; under a manifest it does
/// not know, the same payload goes through the event enum's derived decoder, as
/// in an entity that keeps the SDK's default `upcast`.
fn fold_alone(report: &mut Report, data: &Path, quick: bool) {
    let calls = if quick { 100 } else { 1000 };
    let registry = registry(data, false);
    let mut wasm = registry.get("bank-account").unwrap().instantiate(registry.runtime()).unwrap();
    let mut native: Box<dyn EntityHandler> = Box::new(Native::<AccountEntity>::default());
    let rate = |h: &mut Box<dyn EntityHandler>, manifest: &str| {
        let mut batch = EventBatch::default();
        for _ in 0..1000 {
            batch.push(manifest, &deposit_event());
        }
        let mut state = br#"{"status":"open","balance":0}"#.to_vec();
        let t = Instant::now();
        for _ in 0..calls {
            state = h.apply_event_batch(&state, &batch).unwrap().unwrap();
        }
        let rate = (calls * 1000) as f64 / t.elapsed().as_secs_f64();
        assert_eq!(state, format!(r#"{{"status":"open","balance":{}}}"#, calls * 1000).into_bytes());
        rate
    };
    let by_manifest = (rate(&mut native, "Deposited"), rate(&mut wasm, "Deposited"));
    let by_enum = (rate(&mut native, "deposited-v0"), rate(&mut wasm, "deposited-v0"));
    report.figure(
        "  apply-event-batch alone, 1000 deposits per call, Wasm (decoded by manifest)",
        by_manifest.1,
        "events/s",
        Some(("native", by_manifest.0)),
    );
    report.figure(
        "  the same through the event enum's derived decoder, Wasm",
        by_enum.1,
        "events/s",
        Some(("native", by_enum.0)),
    );
}

pub fn activation(report: &mut Report, quick: bool) {
    let n = if quick { 500 } else { 5_000 };
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open_journal(dir.path());
        let mut batch = WriteBatch::default();
        for i in 0..n {
            let pid = format!("bank-account|s{i}");
            batch.snapshots.push(Snapshot {
                persistence_id: pid,
                seq_nr: 0,
                state_version: 1,
                timestamp_ms: 0,
                state: br#"{"status":"open","balance":100}"#.to_vec(),
            });
        }
        journal.write(&batch).unwrap();
    }
    let engine = start(dir.path(), false, EngineConfig { shards: 1, ..EngineConfig::default() });
    let t = Instant::now();
    for i in 0..n {
        engine.state_blocking("bank-account", &format!("s{i}")).unwrap();
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    engine.shutdown();
    drop(engine);
    let journal = open_journal(dir.path());
    let t = Instant::now();
    for i in 0..n {
        let pid = format!("bank-account|s{i}");
        std::hint::black_box(journal.load_snapshot(&pid).unwrap());
        std::hint::black_box(journal.events(&pid, 1, 1000).unwrap());
    }
    let base = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    report.figure(
        "activation from snapshot (recover + on-recovery-completed)",
        per,
        "µs",
        Some(("journal reads alone", base)),
    );
}

pub fn restart(report: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let mut wasm: Vec<(String, Vec<u8>)> =
        ["bank-account", "blog-post", "task-manager"].iter().map(|n| (n.to_string(), component(n))).collect();
    let registry = Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), dir.path()).unwrap();
    // The polyglot entities (the folder also holds projections, which are not deployed here).
    let poly = target_dir().join("components-polyglot");
    if let Ok(paths) = Registry::dir_files(&poly) {
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            if !registry.is_projection(&bytes) {
                wasm.push((p.file_stem().unwrap().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    let names: Vec<String> = wasm.iter().map(|(n, _)| n.clone()).collect();
    let mut i = 0;
    while wasm.len() < 10 {
        let (name, bytes) = wasm[i % 3].clone();
        wasm.push((format!("{name}-{}", wasm.len()), bytes));
        i += 1;
    }
    for (name, bytes) in &wasm {
        registry.deploy(name, bytes).unwrap();
    }
    drop(registry);
    let open = || {
        let t = Instant::now();
        let journal = open_journal(dir.path());
        let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), dir.path()).unwrap());
        assert_eq!(registry.list().len(), 10);
        let engine = Engine::start(EngineConfig::default(), journal, registry);
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        engine.shutdown();
        elapsed
    };
    let warm = open();
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    let cold = open();
    let what = format!("restart with 10 components ({})", names.join(", "));
    report.figure(&what, warm, "ms", Some(("same, compile cache emptied", cold)));
}

fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn memory(report: &mut Report, quick: bool) {
    let n = if quick { 10_000 } else { 50_000 };
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), false, EngineConfig::default());
    create_accounts(&engine, 100);
    let before = rss_kib();
    create_accounts(&engine, n);
    let after = rss_kib();
    engine.shutdown();
    let per_10k = (after - before) / 1024.0 * 10_000.0 / n as f64;
    report.figure(
        "RSS per 10k active bank accounts",
        per_10k,
        "MiB",
        Some(("process RSS before (MiB)", before / 1024.0)),
    );
}

/// SSE fan-out: subscribers following tag `account` over HTTP while clients send
/// deposits in-process; the engine's rate with and without them, and the events
/// the subscribers received per second.
pub fn fan_out(report: &mut Report, quick: bool) {
    let entities = 10_000;
    let subscribers = 100;
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), true, EngineConfig::default());
    create_accounts(&engine, entities);
    let (base_rate, _) = closed_loop(&engine, entities, 256, duration);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = mneme::api::router(engine.clone(), mneme::api::ApiConfig::default());
    rt.spawn(async move { mneme::api::axum::serve(listener, app).await });
    let from = engine.journal().head() + 1;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..subscribers)
        .map(|_| {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let url = format!("http://{addr}/v1/events/stream?tag=account&from={from}");
                let mut r = agent.get(&url).call().unwrap();
                let reader = std::io::BufReader::new(r.body_mut().as_reader());
                for line in reader.lines() {
                    let Ok(line) = line else { return };
                    if line.starts_with("data:") {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    let (rate, _) = closed_loop(&engine, entities, 256, duration);
    let delivered = received.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    engine.shutdown();
    drop(rt);
    for t in threads {
        let _ = t.join();
    }
    report.figure(
        &format!("engine with {subscribers} SSE subscribers on one tag (native handler)"),
        rate,
        "cmds/s",
        Some(("no subscribers", base_rate)),
    );
    report.figure(
        &format!("  events delivered to the {subscribers} subscribers"),
        delivered,
        "events/s",
        Some(("written x subscribers", rate * subscribers as f64)),
    );
}
