//! Several `mneme serve` hosts on one PostgreSQL database (`--advertise`), as real
//! processes: the entities spread over the hosts, any host answers any request
//! (forwarding it to the owner), transfers between entities of different hosts
//! complete, and kill -9 or SIGSTOP of a host loses nothing acknowledged and never
//! lets two hosts write one entity. The fence itself (a write under a lost lease
//! refused by the database) is tested in `host/src/cluster/tests.rs`.
//!
//! Checked on the database after the run: every acknowledged deposit is stored
//! exactly once, sequence numbers are gapless, every event was written under a
//! lease granted for its partition (`mneme.lease_history`), the epochs of an
//! entity's events never go back, and each state is the fold of its events.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mneme::journal::postgres::testing;
use mneme::names::partition_of;
use mneme_tests::{components_dir, example, free_port, json, Server};
use serde_json::Value;

/// Seconds a lease lasts: a dead host's entities wait this long for a new owner.
const LEASE_SECS: u64 = 2;
const ACCOUNTS: usize = 24;

struct Host {
    node: String,
    port: u16,
    data: tempfile::TempDir,
    log: PathBuf,
    server: Option<Server>,
}

impl Host {
    fn new(node: &str, logs: &Path) -> Host {
        Host {
            node: node.into(),
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            log: logs.join(format!("{node}.log")),
            server: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, db: &str, components: &Path) {
        self.start_with(db, components, &[]);
    }

    fn start_with(&mut self, db: &str, components: &Path, extra: &[&str]) {
        let advertise = self.url();
        let lease = LEASE_SECS.to_string();
        let mut args = vec![
            "--journal",
            "postgres",
            "--postgres-url",
            db,
            "--advertise",
            &advertise,
            "--node-id",
            &self.node,
            "--lease-secs",
            &lease,
            "--reply-timeout-secs",
            "10",
        ];
        args.extend_from_slice(extra);
        let server = Server::try_start_on(self.port, self.data.path(), components, &args, Some(&self.log))
            .unwrap_or_else(|why| panic!("{} did not start: {why}", self.node));
        self.server = Some(server);
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("host running")
    }

    /// The partitions this host holds, by its own `GET /v1/cluster`.
    fn held(&self) -> Vec<u64> {
        let (status, body) = self.server().get("/v1/cluster");
        assert_eq!(status, 200, "{body}");
        body["held"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect()
    }
}

fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every partition held by exactly one of the running hosts, each at its fair
/// share (so none is about to move).
fn spread(hosts: &[Host]) -> bool {
    let partitions = mneme::names::PARTITIONS as usize;
    let running = hosts.iter().filter(|h| h.server.is_some()).count();
    let mut seen = vec![0; partitions];
    for h in hosts.iter().filter(|h| h.server.is_some()) {
        let held = h.held();
        if held.len() > partitions.div_ceil(running) {
            return false;
        }
        for p in held {
            seen[p as usize] += 1;
        }
    }
    seen.iter().all(|&n| n == 1)
}

/// POST a command to `base`, retrying `503` (a failover) for a while.
fn command(agent: &ureq::Agent, base: &str, id: &str, body: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = agent
            .post(format!("{base}/v1/entities/bank-account/{id}"))
            .header("content-type", "application/json")
            .send(body.as_bytes());
        match r {
            Ok(mut r) if r.status() != 503 || Instant::now() > deadline => {
                let status = r.status().as_u16();
                return (status, r.body_mut().read_to_string().unwrap_or_default());
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// An event as the database holds it.
struct Stored {
    seq: i64,
    epoch: Option<i64>,
    manifest: String,
    payload: Value,
}

/// One deposit's fate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// 200: acknowledged, so stored.
    Ok,
    /// 502, 503 or 504, or no answer (a host killed): not acknowledged; stored at
    /// most once.
    NotAcknowledged,
}

#[test]
fn three_hosts_share_the_entities_and_kill_9_of_two_loses_nothing_acknowledged() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = testing::database_for(db_dir.path());
    let components = components_dir(&[example("bank-account")]);
    let logs = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = ["h1", "h2", "h3"].iter().map(|n| Host::new(n, logs.path())).collect();
    for h in &mut hosts {
        h.start(&db, components.path());
    }
    wait_until("the three hosts hold every partition once", Duration::from_secs(30), || spread(&hosts));
    for h in &hosts {
        let n = h.held().len();
        assert!((20..=22).contains(&n), "{} holds {n} partitions, not its share", h.node);
    }

    // Any host answers for any entity: create every account through h1.
    let agent = mneme_tests::agent(None);
    for i in 0..ACCOUNTS {
        let (status, body) = command(&agent, &hosts[0].url(), &format!("a{i}"), r#"{"type":"CreateAccount"}"#);
        assert_eq!(status, 200, "a{i}: {body}");
    }
    let owners: Vec<usize> = (0..ACCOUNTS)
        .map(|i| {
            let p = partition_of(&format!("bank-account|a{i}")) as u64;
            hosts.iter().position(|h| h.held().contains(&p)).unwrap()
        })
        .collect();
    assert!((0..3).all(|h| owners.contains(&h)), "the accounts are spread over the hosts: {owners:?}");

    // Load: deposits of distinct amounts to random accounts through random hosts.
    let urls: Vec<String> = hosts.iter().map(Host::url).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let sent: Arc<Mutex<Vec<(u64, usize, Answer)>>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (stop, next, sent, urls) = (stop.clone(), next.clone(), sent.clone(), urls.clone());
            std::thread::spawn(move || {
                let agent = mneme_tests::agent(None);
                let mut x = c as u64 * 7919 + 1;
                while !stop.load(Ordering::SeqCst) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let (account, host) = ((x >> 33) as usize % ACCOUNTS, (x >> 17) as usize % urls.len());
                    let amount = next.fetch_add(1, Ordering::SeqCst);
                    let r = agent
                        .post(format!("{}/v1/entities/bank-account/a{account}", urls[host]))
                        .header("content-type", "application/json")
                        .send(format!(r#"{{"type":"Deposit","amount":{amount}}}"#).as_bytes());
                    let answer = match r {
                        Ok(r) if r.status() == 200 => Answer::Ok,
                        Ok(r) if [502, 503, 504].contains(&r.status().as_u16()) => Answer::NotAcknowledged,
                        Ok(mut r) => panic!(
                            "a deposit answered {} through {}: {}",
                            r.status(),
                            urls[host],
                            r.body_mut().read_to_string().unwrap_or_default()
                        ),
                        Err(_) => Answer::NotAcknowledged,
                    };
                    sent.lock().unwrap().push((amount, account, answer));
                    if answer != Answer::Ok {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    let oks = || sent.lock().unwrap().iter().filter(|s| s.2 == Answer::Ok).count();

    // Kill -9 one host, then another after the first is back: each time the
    // others take its partitions over once its lease has run out, and deposits to
    // its accounts succeed again (through any host) without it.
    for victim in [1, 2] {
        std::thread::sleep(Duration::from_secs(2));
        hosts[victim].server.take().unwrap().kill();
        let killed = Instant::now();
        let survivors: Vec<usize> = (0..3).filter(|&h| h != victim).collect();
        // A deposit to one of its accounts, sent once through a survivor: it waits
        // for the new owner instead of failing.
        let probe = {
            let account = owners.iter().position(|&o| o == victim).unwrap();
            let url = format!("{}/v1/entities/bank-account/a{account}", urls[survivors[0]]);
            let amount = next.fetch_add(1, Ordering::SeqCst);
            let agent = mneme_tests::agent(None);
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut r = agent
                    .post(url)
                    .header("content-type", "application/json")
                    .send(format!(r#"{{"type":"Deposit","amount":{amount}}}"#).as_bytes())
                    .unwrap();
                let status = r.status().as_u16();
                let answer = if status == 200 { Answer::Ok } else { Answer::NotAcknowledged };
                sent.lock().unwrap().push((amount, account, answer));
                (status, r.body_mut().read_to_string().unwrap_or_default(), killed.elapsed())
            })
        };
        wait_until("the survivors hold every partition", Duration::from_secs(30), || {
            let mut seen = vec![0; mneme::names::PARTITIONS as usize];
            for &h in &survivors {
                for p in hosts[h].held() {
                    seen[p as usize] += 1;
                }
            }
            seen.iter().all(|&n| n == 1)
        });
        let failover = killed.elapsed();
        let (status, body, waited) = probe.join().unwrap();
        assert_eq!(status, 200, "a deposit sent during the failover: {body}");
        eprintln!("a deposit to the killed host's account waited {waited:?} for its new owner");
        let before = oks();
        wait_until("deposits succeed after the failover", Duration::from_secs(10), || oks() > before + 20);
        eprintln!("host {} killed: its partitions taken over after {failover:?}", hosts[victim].node);
        hosts[victim].start(&db, components.path());
        wait_until("the restarted host takes its share back", Duration::from_secs(30), || spread(&hosts));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    // Transfers between accounts of different hosts: the outbox of the owner of
    // the target delivers them.
    let pairs: Vec<(usize, usize)> =
        (0..ACCOUNTS).filter_map(|i| (0..ACCOUNTS).find(|&j| owners[j] != owners[i]).map(|j| (i, j))).collect();
    for &(from, to) in &pairs {
        let body = format!(r#"{{"type":"Transfer","to":"a{to}","amount":1}}"#);
        let (status, text) = command(&agent, &hosts[from % 3].url(), &format!("a{from}"), &body);
        assert_eq!(status, 200, "transfer a{from} -> a{to}: {text}");
    }
    let states = || -> Vec<Value> {
        (0..ACCOUNTS)
            .map(|i| {
                let (status, body) = hosts[i % 3].server().get(&format!("/v1/entities/bank-account/a{i}/state"));
                assert_eq!(status, 200, "{body}");
                body["state"].clone()
            })
            .collect()
    };
    wait_until("every transfer completed", Duration::from_secs(60), || {
        states().iter().all(|s| s.get("pending").is_none_or(|p| p.as_object().is_some_and(|o| o.is_empty())))
    });

    // What the database holds.
    let sent = sent.lock().unwrap().clone();
    let acknowledged = sent.iter().filter(|s| s.2 == Answer::Ok).count();
    assert!(acknowledged > 200, "too few deposits went through to show anything: {acknowledged}");
    let mut db_client = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    let granted: HashMap<(i32, i64), String> = db_client
        .query("SELECT partition, epoch, node_id FROM mneme.lease_history", &[])
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let rows = db_client
        .query(
            "SELECT persistence_id, seq_nr, epoch, manifest, payload FROM mneme.events \
             WHERE persistence_id LIKE 'bank-account|%' ORDER BY persistence_id, seq_nr",
            &[],
        )
        .unwrap();
    let mut by_account: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for r in &rows {
        let payload: Vec<u8> = r.get(4);
        let payload = json(&String::from_utf8(payload).unwrap());
        by_account.entry(r.get(0)).or_default().push(Stored {
            seq: r.get(1),
            epoch: r.get(2),
            manifest: r.get(3),
            payload,
        });
    }
    let mut stored_deposits: HashMap<u64, usize> = HashMap::new();
    let mut writers_seen = std::collections::BTreeSet::new();
    for (pid, events) in &by_account {
        let partition = partition_of(pid) as i32;
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "{pid}: sequence numbers with a gap");
        let mut last_epoch = 0;
        for Stored { seq, epoch, .. } in events {
            let epoch = epoch.unwrap_or_else(|| panic!("{pid}#{seq}: written without a lease"));
            let node = granted
                .get(&(partition, epoch))
                .unwrap_or_else(|| panic!("{pid}#{seq}: epoch {epoch} of partition {partition} was never granted"));
            writers_seen.insert(node.clone());
            assert!(epoch >= last_epoch, "{pid}#{seq}: written under epoch {epoch} after one under {last_epoch}");
            last_epoch = epoch;
        }
        let mut balance: i64 = 0;
        for Stored { manifest, payload, .. } in events {
            let amount = payload["amount"].as_i64().unwrap_or(0);
            match manifest.as_str() {
                "Deposited" => {
                    *stored_deposits.entry(amount as u64).or_default() += 1;
                    balance += amount;
                }
                "TransferReceived" | "TransferRefunded" => balance += amount,
                "Withdrawn" | "TransferSent" => balance -= amount,
                _ => {}
            }
        }
        let i: usize = pid.trim_start_matches("bank-account|a").parse().unwrap();
        let state = &states()[i];
        assert_eq!(state["balance"].as_i64(), Some(balance), "{pid}: the state is not the fold of its events");
    }
    assert_eq!(writers_seen.len(), 3, "every host wrote: {writers_seen:?}");
    for (amount, account, answer) in &sent {
        let stored = stored_deposits.get(amount).copied().unwrap_or(0);
        match answer {
            Answer::Ok => assert_eq!(stored, 1, "acknowledged deposit {amount} to a{account} stored {stored} times"),
            Answer::NotAcknowledged => assert!(stored <= 1, "deposit {amount} stored {stored} times"),
        }
    }
    let not_acked = sent.len() - acknowledged;
    eprintln!("{acknowledged} deposits acknowledged, {not_acked} not (failovers), all stored exactly once");
}

#[test]
fn a_paused_host_loses_its_partitions_and_answers_503_never_a_success_it_cannot_keep() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = testing::database_for(db_dir.path());
    let components = components_dir(&[example("bank-account")]);
    let logs = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = ["p1", "p2"].iter().map(|n| Host::new(n, logs.path())).collect();
    for h in &mut hosts {
        h.start(&db, components.path());
    }
    wait_until("the two hosts hold every partition once", Duration::from_secs(30), || spread(&hosts));
    let agent = mneme_tests::agent(None);
    // An account p1 owns.
    let held = hosts[0].held();
    let id = (0..)
        .map(|i| format!("x{i}"))
        .find(|id| held.contains(&(partition_of(&format!("bank-account|{id}")) as u64)))
        .unwrap();
    let (status, body) = command(&agent, &hosts[1].url(), &id, r#"{"type":"CreateAccount"}"#);
    assert_eq!(status, 200, "{body}");

    // p1 stops (SIGSTOP): no renewals; p2 takes its partitions once the lease ends.
    let pid = hosts[0].server().pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let paused = Instant::now();
    // A deposit sent to the paused host waits in its socket.
    let stalled = {
        let (agent, url, id) = (agent.clone(), hosts[0].url(), id.clone());
        std::thread::spawn(move || {
            agent
                .post(format!("{url}/v1/entities/bank-account/{id}"))
                .header("content-type", "application/json")
                .send(r#"{"type":"Deposit","amount":1000}"#.as_bytes())
                .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()))
        })
    };
    // A deposit sent to p2, which forwards it to the paused owner.
    let forwarded = {
        let (agent, url, id) = (agent.clone(), hosts[1].url(), id.clone());
        std::thread::spawn(move || {
            let mut r = agent
                .post(format!("{url}/v1/entities/bank-account/{id}"))
                .header("content-type", "application/json")
                .send(r#"{"type":"Deposit","amount":500}"#.as_bytes())
                .unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
        })
    };
    let p = partition_of(&format!("bank-account|{id}")) as u64;
    wait_until("p2 takes the paused host's partitions", Duration::from_secs(30), || hosts[1].held().contains(&p));
    assert!(paused.elapsed() >= Duration::from_secs(LEASE_SECS) - Duration::from_millis(500));
    let (status, body) = command(&agent, &hosts[1].url(), &id, r#"{"type":"Deposit","amount":7}"#);
    assert_eq!(status, 200, "the new owner serves the account: {body}");

    // p1 wakes up with two deposits waiting in its socket. Its leases are gone, so
    // it must not apply either itself. The one p2 forwarded it answers "not the
    // owner" without running it, and p2, the owner now, runs it. The one sent to
    // p1 directly it answers 503 (not stored), or, once it has learnt the new
    // owner, forwards there (stored by p2). Either way every answer is the truth.
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let (status, text) = forwarded.join().unwrap();
    assert_eq!(status, 200, "the deposit p2 forwarded to the paused host, run by p2 after all: {text}");
    let expected = match stalled.join().unwrap() {
        Ok((503, text)) => {
            assert!(text.contains("retry"), "{text}");
            507
        }
        Ok((200, text)) => {
            let balance = json(&text)["balance"].as_u64();
            assert!(balance == Some(1007) || balance == Some(1507), "{text}");
            1507
        }
        other => panic!("the paused host answered neither 503 nor the owner's answer: {other:?}"),
    };
    let (status, state) = hosts[1].server().get(&format!("/v1/entities/bank-account/{id}/state"));
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["state"]["balance"].as_u64(), Some(expected), "{state}");
    // Every deposit was written by p2, under the lease it took over.
    let mut db_client = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    let writers: Vec<String> = db_client
        .query(
            "SELECT h.node_id FROM mneme.events e JOIN mneme.lease_history h \
             ON h.partition = $1 AND h.epoch = e.epoch WHERE e.persistence_id = $2 AND e.manifest = 'Deposited'",
            &[&(p as i32), &format!("bank-account|{id}")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!writers.is_empty() && writers.iter().all(|w| w == "p2"), "deposits written by {writers:?}");
    // Both hosts share the partitions again afterwards.
    wait_until("the hosts share the partitions again", Duration::from_secs(30), || {
        spread(&hosts) && hosts[0].held().len() == 32
    });
}

/// The hash of the version of `entity_type` a host serves.
fn served_hash(host: &Host, entity_type: &str) -> Option<String> {
    let (status, body) = host.server().get("/v1/components");
    assert_eq!(status, 200, "{body}");
    body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entity_type"] == entity_type)
        .map(|c| c["hash"].as_str().unwrap().to_string())
}

#[test]
fn a_deploy_or_rollback_on_any_host_is_served_by_every_host() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = testing::database_for(db_dir.path());
    let with = components_dir(&[example("bank-account")]);
    let empty = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = ["d1", "d2"].iter().map(|n| Host::new(n, logs.path())).collect();
    // d1's components directory seeds the hosts; d2 has none and serves it anyway.
    hosts[0].start(&db, with.path());
    hosts[1].start(&db, empty.path());
    let v1 = served_hash(&hosts[0], "bank-account").expect("d1 serves its directory's component");
    assert_eq!(served_hash(&hosts[1], "bank-account"), Some(v1.clone()), "d2 serves what d1 seeded, from its start");
    let agent = mneme_tests::agent(None);
    let (status, body) = command(&agent, &hosts[1].url(), "z1", r#"{"type":"CreateAccount"}"#);
    assert_eq!(status, 200, "{body}");

    // A new build deployed to d2 is served by d1 within seconds.
    let wasm = std::fs::read(example("bank-account")).unwrap();
    let (status, body) =
        hosts[1].server().request("PUT", "/v1/components/bank-account", &mneme_tests::rebuilt(&wasm, "v2"));
    assert_eq!(status, 200, "{body}");
    let v2 = json(&body)["hash"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    wait_until("d1 serves d2's deploy", Duration::from_secs(30), || {
        served_hash(&hosts[0], "bank-account") == Some(v2.clone())
    });

    // A rollback on d1 (to its version 1) is served by d2 too.
    let (status, body) = hosts[0].server().request("POST", "/v1/components/bank-account/versions/1/activate", b"");
    assert_eq!(status, 200, "{body}");
    wait_until("d2 serves d1's rollback", Duration::from_secs(30), || {
        served_hash(&hosts[1], "bank-account") == Some(v1.clone())
    });

    // A restarted d1, whose directory still holds v1, keeps what the hosts serve.
    let (status, body) =
        hosts[1].server().request("PUT", "/v1/components/bank-account", &mneme_tests::rebuilt(&wasm, "v3"));
    assert_eq!(status, 200, "{body}");
    let v3 = json(&body)["hash"].as_str().unwrap().to_string();
    hosts[0].server.take().unwrap().terminate();
    hosts[0].start(&db, with.path());
    assert_eq!(served_hash(&hosts[0], "bank-account"), Some(v3), "the restarted host serves the hosts' version");
    let (status, body) = command(&agent, &hosts[0].url(), "z1", r#"{"type":"Deposit","amount":3}"#);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn with_redirect_a_host_answers_307_to_the_owner() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = testing::database_for(db_dir.path());
    let components = components_dir(&[example("bank-account")]);
    let logs = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = ["r1", "r2"].iter().map(|n| Host::new(n, logs.path())).collect();
    hosts[0].start_with(&db, components.path(), &["--redirect"]);
    hosts[1].start(&db, components.path());
    wait_until("the two hosts hold every partition once", Duration::from_secs(30), || spread(&hosts));
    let held = hosts[1].held();
    let id = (0..)
        .map(|i| format!("y{i}"))
        .find(|id| held.contains(&(partition_of(&format!("bank-account|{id}")) as u64)))
        .unwrap();
    let no_redirects: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let r = no_redirects
        .post(format!("{}/v1/entities/bank-account/{id}?x=1", hosts[0].url()))
        .header("content-type", "application/json")
        .send(r#"{"type":"CreateAccount"}"#.as_bytes())
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(location, format!("{}/v1/entities/bank-account/{id}?x=1", hosts[1].url()));
    // Followed, it reaches the owner.
    let (status, body) = command(&mneme_tests::agent(None), &hosts[1].url(), &id, r#"{"type":"CreateAccount"}"#);
    assert_eq!(status, 200, "{body}");
}

/// Read a Server-Sent Events stream of `host` (raw HTTP) until `needle` shows.
fn stream_shows(host: &Host, path: &str, needle: &str, within: Duration) -> bool {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(host.server().addr.as_str()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    tcp.write_all(request.as_bytes()).unwrap();
    let (start, mut text, mut buf) = (Instant::now(), String::new(), [0u8; 4096]);
    while start.elapsed() < within {
        if let Ok(n) = tcp.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains(needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn streams_on_one_host_show_what_other_hosts_write_and_publish() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = testing::database_for(db_dir.path());
    let components = components_dir(&[example("bank-account"), mneme_tests::test_component("faulty")]);
    let logs = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = ["s1", "s2"].iter().map(|n| Host::new(n, logs.path())).collect();
    for h in &mut hosts {
        h.start(&db, components.path());
    }
    wait_until("the two hosts hold every partition once", Duration::from_secs(30), || spread(&hosts));
    let held = hosts[1].held();
    let owned_by_s2 = |entity_type: &str| {
        (0..)
            .map(|i| format!("w{i}"))
            .find(|id| held.contains(&(partition_of(&format!("{entity_type}|{id}")) as u64)))
            .unwrap()
    };
    let (account, recorder) = (owned_by_s2("bank-account"), owned_by_s2("faulty"));
    let agent = mneme_tests::agent(None);
    let events = {
        let (s1_url, account) = (hosts[0].url(), account.clone());
        let agent = agent.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let (status, body) = command(&agent, &s1_url, &account, r#"{"type":"CreateAccount"}"#);
            assert_eq!(status, 200, "{body}");
        })
    };
    // s1 streams what s2 writes (the account is s2's; s1 forwards the command),
    // within a second or so, not at the stream's next keep-alive.
    assert!(
        stream_shows(
            &hosts[0],
            "/v1/events/stream?tag=account",
            &format!("bank-account|{account}"),
            Duration::from_secs(10)
        ),
        "s1's event stream did not show s2's event"
    );
    events.join().unwrap();
    let publisher = {
        let s2_url = hosts[1].url();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let r = agent
                .post(format!("{s2_url}/v1/entities/faulty/{recorder}"))
                .header("content-type", "application/json")
                .send(r#"{"type":"Record","value":"from-s2"}"#.as_bytes())
                .unwrap();
            assert_eq!(r.status(), 200);
        })
    };
    assert!(
        stream_shows(&hosts[0], "/v1/topics/faulty-records/stream", "from-s2", Duration::from_secs(3)),
        "s1's topic stream did not show what s2 published"
    );
    publisher.join().unwrap();
}
