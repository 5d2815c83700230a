//! The PostgreSQL journal: bank-account deposits over HTTP with 16 and 64 clients
//! on `--journal postgres`, next to the same load on the commit log and next to a
//! plain loop of one INSERT (one transaction, one commit) per command on the same
//! PostgreSQL, all in this run. The server is `MNEME_TEST_POSTGRES_URL`'s
//! (`export MNEME_TEST_POSTGRES_URL=$(scripts/start-postgres.sh)`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mneme::journal::{self, postgres, Backend, JournalOptions};
use mneme::{Engine, EngineConfig};

use crate::engine::{create_accounts, http_closed_loop, percentile, registry};
use crate::report::Report;

const ENTITIES: usize = 10_000;

/// A database of its own, fresh.
pub(crate) fn fresh_database(server: &str, name: &str) -> String {
    let mut client = ::postgres::Client::connect(server, ::postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    postgres::create_database(server, name).unwrap()
}

fn deposits(options: &JournalOptions, clients: usize, duration: Duration) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal::open_with(dir.path(), options).unwrap();
    let engine = Engine::start(EngineConfig::default(), journal, registry(dir.path(), false));
    create_accounts(&engine, ENTITIES);
    let (rate, lat) = http_closed_loop(&engine, ENTITIES, clients, duration);
    engine.shutdown();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// `clients` connections, each inserting one event per transaction (autocommit,
/// `synchronous_commit = on`) as fast as it can.
fn plain_inserts(url: &str, clients: usize, duration: Duration) -> f64 {
    let mut setup = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    setup
        .batch_execute(
            "CREATE TABLE plain_events (persistence_id text NOT NULL, seq_nr bigint NOT NULL, \
             payload bytea NOT NULL, PRIMARY KEY (persistence_id, seq_nr))",
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, done, url) = (stop.clone(), done.clone(), url.to_string());
            std::thread::spawn(move || {
                let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
                client.batch_execute("SET synchronous_commit = on").unwrap();
                let insert = client
                    .prepare("INSERT INTO plain_events (persistence_id, seq_nr, payload) VALUES ($1, $2, $3)")
                    .unwrap();
                let payload = br#"{"type":"Deposited","amount":1}"#.to_vec();
                let mut seq = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    client.execute(&insert, &[&format!("bank-account|c{c}"), &seq, &payload]).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

pub fn run(report: &mut Report, quick: bool) {
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let server = postgres::testing::server_url();
    let me = std::process::id();
    for clients in [16, 64] {
        let log = deposits(&JournalOptions::default(), clients, duration);
        let url = fresh_database(&server, &format!("mneme_bench_{me}_{clients}"));
        let options =
            JournalOptions { backend: Backend::Postgres, postgres_url: Some(url), ..JournalOptions::default() };
        let pg = deposits(&options, clients, duration);
        let plain_url = fresh_database(&server, &format!("mneme_bench_{me}_{clients}_plain"));
        let plain = plain_inserts(&plain_url, clients, duration);
        report.figure(
            &format!("HTTP deposits, {clients} clients, PostgreSQL journal (group commit)"),
            pg.0,
            "cmds/s",
            Some(("commit log", log.0)),
        );
        report.figure(
            &format!("  latency p50, {clients} clients (PostgreSQL)"),
            pg.1,
            "ms",
            Some(("commit log", log.1)),
        );
        report.figure(
            &format!("  latency p99, {clients} clients (PostgreSQL)"),
            pg.2,
            "ms",
            Some(("commit log", log.2)),
        );
        report.figure(
            &format!("  PostgreSQL journal vs one INSERT+COMMIT per command, {clients} connections"),
            pg.0,
            "cmds/s",
            Some(("plain inserts", plain)),
        );
    }
}
