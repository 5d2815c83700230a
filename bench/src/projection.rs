//! Projections: how fast `account-balances` catches up from offset 0, next to the
//! raw journal read rate of the same events; and how far behind it stays while
//! following the highest closed-loop load this machine drives, next to the same
//! load without it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mneme::journal::{Journal, NewEvent, WriteBatch};
use mneme::projection::Projections;
use mneme::{Engine, EngineConfig};

use crate::engine::{closed_loop, component, create_accounts, open_journal, percentile, start};
use crate::report::Report;

const NAME: &str = "account-balances";

/// `n` bank-account events over `accounts` accounts, tagged `account`, written
/// straight into the journal in batches of 10k.
fn write_events(journal: &dyn Journal, accounts: u64, n: u64) {
    let mut seq = vec![0u64; accounts as usize];
    let mut written = 0;
    while written < n {
        let mut batch = WriteBatch::default();
        for _ in 0..10_000.min(n - written) {
            let a = (written % accounts) as usize;
            seq[a] += 1;
            let (manifest, payload) = if seq[a] == 1 {
                ("AccountCreated", br#"{"type":"AccountCreated"}"#.to_vec())
            } else {
                ("Deposited", br#"{"type":"Deposited","amount":1}"#.to_vec())
            };
            batch.events.push(NewEvent {
                persistence_id: format!("bank-account|acc{a}"),
                seq_nr: seq[a],
                timestamp_ms: 0,
                writer_id: "bench".into(),
                manifest: manifest.into(),
                tags: vec!["account".into()],
                payload,
            });
            written += 1;
        }
        journal.write(&batch).unwrap();
    }
}

fn offset(projections: &Projections) -> u64 {
    projections.status(NAME).ok().and_then(|s| s.serving).map_or(0, |s| s.offset)
}

fn wait_caught_up(engine: &Engine, timeout: Duration) -> Duration {
    let t = Instant::now();
    let head = *engine.durable_head().borrow();
    while offset(engine.projections()) < head {
        assert!(t.elapsed() < timeout, "the projection did not catch up");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

/// Catch-up from offset 0 vs reading the same events by tag.
pub fn catch_up(report: &mut Report, quick: bool) {
    let n: u64 = if quick { 50_000 } else { 500_000 };
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open_journal(dir.path());
        write_events(journal.as_ref(), 10_000, n);
    }
    let read = {
        let journal = open_journal(dir.path());
        let read_all = || {
            let t = Instant::now();
            let (mut from, mut read) = (0, 0);
            loop {
                let page = journal.events_by_tag("account", from, 1000).unwrap();
                let Some(last) = page.last() else { break };
                from = last.offset + 1;
                read += page.len() as u64;
            }
            assert_eq!(read, n);
            n as f64 / t.elapsed().as_secs_f64()
        };
        read_all(); // cold
        read_all()
    };
    let engine = start(dir.path(), true, EngineConfig::default());
    // Timed from the deploy's return: compiling the component is not catching up.
    engine.projections().deploy(NAME, &component(NAME)).unwrap();
    let rate = n as f64 / wait_caught_up(&engine, Duration::from_secs(600)).as_secs_f64();
    let total: serde_json::Value =
        serde_json::from_slice(&engine.projections().view_get(NAME, "_total").unwrap()).unwrap();
    assert_eq!(total["events"], n, "every event once");
    engine.shutdown();
    report.figure(
        "projection catch-up from offset 0, account-balances (Wasm), batches of 1000",
        rate,
        "events/s",
        Some(("journal read by tag only", read)),
    );
}

/// Deposits at `rate` per second (open loop: sent on schedule, replies not
/// awaited) over `entities` accounts, for `duration`.
fn paced(engine: &Engine, entities: usize, rate: u64, duration: Duration) {
    let t = Instant::now();
    let mut sent = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while t.elapsed() < duration {
        let due = (t.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let id = format!("acc{}", sent as usize % entities);
            pending.push_back(engine.submit("bank-account", &id, String::new(), deposit()).unwrap());
            sent += 1;
        }
        // Keep the receivers of the last second only (dropping one does not cancel its command).
        while pending.len() as u64 > rate {
            pending.pop_front();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for rx in pending {
        let _ = rx.blocking_recv();
    }
}

fn deposit() -> Vec<u8> {
    br#"{"type":"Deposit","amount":1}"#.to_vec()
}

/// What a run under load showed: time lags, lags in events, durable events/s.
struct Lag {
    times: Vec<Duration>,
    events_behind: Vec<u64>,
    events_per_sec: f64,
}

/// Run `load` while sampling the durable head and the projection's offset every
/// millisecond. The time lag of a sample is how long ago the oldest event the
/// projection had not taken in became durable (the first sample whose head passed
/// its offset); 0 when it has everything.
fn under_load(engine: &Engine, load: impl FnOnce()) -> Lag {
    let samples: Arc<Mutex<Vec<(Instant, u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (engine, samples, stop) = (engine.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let head = engine.durable_head();
            while !stop.load(Ordering::Relaxed) {
                let h = *head.borrow();
                let p = offset(engine.projections());
                samples.lock().unwrap().push((Instant::now(), h, p));
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let t = Instant::now();
    let head_before = *engine.durable_head().borrow();
    load();
    let events_per_sec = (*engine.durable_head().borrow() - head_before) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let mut times = Vec::with_capacity(samples.len());
    let mut events_behind = Vec::with_capacity(samples.len());
    for &(t, head, projected) in &samples {
        events_behind.push(head.saturating_sub(projected));
        if projected >= head {
            times.push(Duration::ZERO);
            continue;
        }
        let first = samples.partition_point(|&(_, h, _)| h <= projected);
        times.push(t.saturating_duration_since(samples[first.min(samples.len() - 1)].0));
    }
    times.sort();
    events_behind.sort();
    Lag { times, events_behind, events_per_sec }
}

fn engine_following(entities: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), true, EngineConfig::default());
    create_accounts(&engine, entities);
    engine.projections().deploy(NAME, &component(NAME)).unwrap();
    wait_caught_up(&engine, Duration::from_secs(60));
    (dir, engine)
}

/// Lag while following load: at fixed rates, and at the highest closed-loop load
/// (next to the same load without the projection).
/// `only_rates`: these offered rates instead, and no closed loop.
pub fn live_lag(report: &mut Report, quick: bool, only_rates: &[u64]) {
    let entities = 10_000;
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let rates: &[u64] = if !only_rates.is_empty() {
        only_rates
    } else if quick {
        &[10_000, 20_000]
    } else {
        &[5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 100_000, 120_000]
    };
    for &rate in rates {
        let (_dir, engine) = engine_following(entities);
        let lag = under_load(&engine, || paced(&engine, entities, rate, duration));
        wait_caught_up(&engine, Duration::from_secs(120));
        engine.shutdown();
        report.figure(
            &format!(
                "projection lag p99 following {}k deposits/s offered ({:.1}k durable events/s), account-balances",
                rate / 1000,
                lag.events_per_sec / 1e3
            ),
            percentile(&lag.times, 0.99),
            "ms",
            Some(("target", 1000.0)),
        );
    }

    if !only_rates.is_empty() {
        return;
    }
    // The highest load: closed loop, 4096 clients; baseline without the projection.
    let clients = 4096;
    let dir = tempfile::tempdir().unwrap();
    let engine = start(dir.path(), true, EngineConfig::default());
    create_accounts(&engine, entities);
    let (base_rate, _) = closed_loop(&engine, entities, clients, duration);
    engine.shutdown();
    // The engine before its directory: the journal closes (flushes its index) on drop.
    drop(engine);
    drop(dir);
    let (_dir, engine) = engine_following(entities);
    let mut rate = 0.0;
    let lag = under_load(&engine, || rate = closed_loop(&engine, entities, clients, duration).0);
    let catch_up = wait_caught_up(&engine, Duration::from_secs(120));
    engine.shutdown();
    report.figure(
        "closed loop, 4096 clients, native handler, with account-balances following",
        rate,
        "cmds/s",
        Some(("same load, no projection", base_rate)),
    );
    report.figure("  projection lag p50 at that load", percentile(&lag.times, 0.5), "ms", None);
    report.figure("  projection lag p99 at that load", percentile(&lag.times, 0.99), "ms", Some(("target", 1000.0)));
    let behind = lag.events_behind[((lag.events_behind.len() as f64 - 1.0) * 0.99) as usize] as f64;
    report.figure("  projection lag p99 at that load, in events", behind, "events", None);
    report.figure("  catch-up once the load stopped", catch_up.as_secs_f64() * 1e3, "ms", None);
}
