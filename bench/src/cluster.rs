//! Several hosts on one PostgreSQL database, as real `mneme serve` processes (the
//! release binary, `--advertise`): bank-account deposits over HTTP from 64 clients
//! spread over the hosts, three hosts next to one host on the same database in
//! the same run; then kill -9 of one of the three, and how long commands for its
//! entities wait (or fail) until another host owns them (next to the lease they wait for).
//! The server is `MNEME_TEST_POSTGRES_URL`'s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mneme::journal::postgres;

use crate::report::Report;

const ENTITIES: usize = 2_000;
const CLIENTS: usize = 64;
const LEASE_SECS: u64 = 5;

struct Host {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().join("mneme");
    assert!(p.exists(), "{} is missing: scripts/bench.sh builds it", p.display());
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn start(db: &str, node: &str, components: &Path) -> Host {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .args(["serve", "--journal", "postgres", "--postgres-url", db, "--node-id", node])
        .args(["--advertise", &url, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--lease-secs", &LEASE_SECS.to_string()])
        .arg("--data")
        .arg(data.path())
        .arg("--components")
        .arg(components)
        .env("RUST_LOG", "mneme=error")
        .stdin(Stdio::null())
        .spawn()
        .expect("start mneme");
    let host = Host { child, url, _data: data };
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.get(format!("{}/ready", host.url)).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "{node} did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    host
}

/// The partitions held by the hosts, by their own answers: each once, and each
/// host at its fair share (so no partition is about to move).
fn spread(hosts: &[&Host]) -> bool {
    let agent = agent();
    let partitions = mneme::names::PARTITIONS as usize;
    let mut seen = vec![0; partitions];
    for h in hosts {
        let Ok(mut r) = agent.get(format!("{}/v1/cluster", h.url)).call() else { return false };
        let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let held = body["held"].as_array().unwrap();
        if held.len() > partitions.div_ceil(hosts.len()) {
            return false;
        }
        for p in held {
            seen[p.as_u64().unwrap() as usize] += 1;
        }
    }
    seen.iter().all(|&n| n == 1)
}

fn wait_spread(hosts: &[&Host]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spread(hosts) {
        assert!(Instant::now() < deadline, "the partitions never spread over the hosts");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> u16 {
    match agent.post(url).header("content-type", "application/json").send(body.as_bytes()) {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// `CLIENTS` closed-loop clients, client c sending to host c % hosts: cmds/s.
fn closed_loop(urls: &[String], duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, done, base) = (stop.clone(), done.clone(), urls[c % urls.len()].clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("{base}/v1/entities/bank-account/acc{}", (c + k * CLIENTS) % ENTITIES);
                    k += 1;
                    let status = post(&agent, &url, r#"{"type":"Deposit","amount":1}"#);
                    assert_eq!(status, 200, "a deposit through {base}");
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

fn create_accounts(url: &str) {
    let threads: Vec<_> = (0..16)
        .map(|c| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let agent = agent();
                for i in (c..ENTITIES).step_by(16) {
                    let mut r = agent
                        .post(format!("{url}/v1/entities/bank-account/acc{i}"))
                        .header("content-type", "application/json")
                        .send(r#"{"type":"CreateAccount"}"#.as_bytes())
                        .unwrap();
                    let status = r.status().as_u16();
                    if status != 200 {
                        let why = r.body_mut().read_to_string().unwrap_or_default();
                        let mut c = agent.get(format!("{url}/v1/cluster")).call().unwrap();
                        panic!("creating acc{i}: {status} {why}; {}", c.body_mut().read_to_string().unwrap());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Kill -9 `victim`, then send to one of its entities through `through` until it
/// succeeds (the first one waits for the new owner): seconds it took, and how many
/// commands failed meanwhile.
fn failover(victim: Host, through: &str, entity: usize) -> (f64, u64) {
    let agent = agent();
    drop(victim);
    let killed = Instant::now();
    let mut failed = 0;
    let url = format!("{through}/v1/entities/bank-account/acc{entity}");
    while post(&agent, &url, r#"{"type":"Deposit","amount":1}"#) != 200 {
        failed += 1;
        assert!(killed.elapsed() < Duration::from_secs(120), "no failover within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (killed.elapsed().as_secs_f64(), failed)
}

pub fn run(report: &mut Report, quick: bool) {
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let server = postgres::testing::server_url();
    let components = tempfile::tempdir().unwrap();
    std::fs::write(components.path().join("bank-account.wasm"), crate::engine::component("bank-account")).unwrap();
    let components = components.path().to_path_buf();
    let mut rates = Vec::new();
    for n in [1, 3] {
        let name = format!("mneme_bench_cluster_{}_{n}", std::process::id());
        let db = crate::postgres::fresh_database(&server, &name);
        let hosts: Vec<Host> = (0..n).map(|i| start(&db, &format!("b{i}"), &components)).collect();
        wait_spread(&hosts.iter().collect::<Vec<_>>());
        create_accounts(&hosts[0].url);
        let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
        rates.push(closed_loop(&urls, duration));
        if n == 3 {
            // An entity the third host owns: ask it.
            let agent = agent();
            let mut r = agent.get(format!("{}/v1/cluster", hosts[2].url)).call().unwrap();
            let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            let held: Vec<u64> = body["held"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
            let entity = (0..ENTITIES)
                .find(|i| held.contains(&(mneme::names::partition_of(&format!("bank-account|acc{i}")) as u64)))
                .unwrap();
            let mut hosts = hosts;
            let victim = hosts.pop().unwrap();
            let (took, failed) = failover(victim, &hosts[0].url, entity);
            report.figure(
                &format!(
                    "  failover after kill -9 of a host: a command to its entity answered after ({failed} failed)"
                ),
                took,
                "s",
                Some(("lease", LEASE_SECS as f64)),
            );
        }
    }
    report.figure(
        &format!("HTTP deposits, {CLIENTS} clients over 3 hosts on one PostgreSQL"),
        rates[1],
        "cmds/s",
        Some(("1 host", rates[0])),
    );
}
