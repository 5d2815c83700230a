//! Transfers between 100 bank accounts while the server is killed with SIGKILL,
//! again and again, through the real binary and the real journal.
//!
//! Each round, clients send `Transfer` commands between random accounts (some to
//! accounts that do not exist, which reject and are refunded) until the server is
//! killed at a random moment. After the last round the server runs until every
//! transfer has ended, then:
//!
//! * the sum of all balances is the sum of the deposits: money neither created
//!   nor lost;
//! * every acknowledged transfer, and every transfer in the journal, ended once:
//!   completed (received by exactly one account) or refunded (received by none);
//! * no command was applied twice: each transfer is received, completed or
//!   refunded at most once, and `mneme journal verify` finds every idempotency key
//!   applied at most once per entity;
//! * commands were delivered again after restarts (entries pending at a start),
//!   and deliveries whose target had applied them were recognised.
//!
//! `MNEME_TRANSFER_ROUNDS` sets the number of kills (default 3).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, mneme_bin, Server};
use serde_json::Value;

const ACCOUNTS: usize = 100;
const DEPOSIT: u64 = 1000;
const CLIENTS: usize = 8;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    s | 1
}

/// One round: clients transfer until the server is killed. Returns the ids of
/// the acknowledged transfers and the outbox counters of that server's life.
fn round(server: Server, seed: u64, duration: Duration) -> (Vec<String>, u64, u64) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), server.url.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut rng = Rng(seed.wrapping_add(c as u64 * 7919) | 1);
                while !stop.load(Ordering::SeqCst) {
                    let from = rng.below(ACCOUNTS as u64);
                    let to = match rng.below(10) {
                        0 => format!("ghost{}", rng.below(5)),
                        _ => format!("acc{}", (from + 1 + rng.below(ACCOUNTS as u64 - 1)) % ACCOUNTS as u64),
                    };
                    let amount = 1 + rng.below(50);
                    let body = format!(r#"{{"type":"Transfer","to":"{to}","amount":{amount}}}"#);
                    match agent.post(format!("{url}/v1/entities/bank-account/acc{from}")).send(body.as_bytes()) {
                        Ok(mut r) if r.status() == 200 => {
                            let reply: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                            acked.lock().unwrap().push(reply["transferId"].as_str().unwrap().to_string());
                        }
                        Ok(r) if r.status() == 422 => {} // insufficient balance
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => return, // the server died
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    let counters =
        (server.metric::<u64>("mneme_outbox_recovered_total"), server.metric::<u64>("mneme_outbox_duplicates_total"));
    server.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    (acked, counters.0, counters.1)
}

#[test]
fn transfers_keep_money_and_apply_each_command_once_through_repeated_kill_9() {
    let rounds: usize = std::env::var("MNEME_TRANSFER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let seed = seed();
    eprintln!("seed {seed}, {rounds} rounds");
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    for i in 0..ACCOUNTS {
        assert_eq!(server.send("bank-account", &format!("acc{i}"), r#"{"type":"CreateAccount"}"#).0, 200);
        let deposit = format!(r#"{{"type":"Deposit","amount":{DEPOSIT}}}"#);
        assert_eq!(server.send("bank-account", &format!("acc{i}"), &deposit).0, 200);
    }
    let mut acked = Vec::new();
    let (mut recovered, mut duplicates) = (0, 0);
    let mut server = Some(server);
    let mut rng = Rng(seed);
    for r in 0..rounds {
        let s = server.take().unwrap_or_else(|| Server::start(data.path(), comps.path(), &[]));
        let duration = Duration::from_millis(700 + rng.below(1300));
        let (ids, rec, dup) = round(s, seed.wrapping_add(r as u64), duration);
        eprintln!("round {r}: {} transfers acknowledged in {duration:?}; at its start {rec} entries were pending, {dup} deliveries were already applied", ids.len());
        acked.extend(ids);
        recovered += rec;
        duplicates += dup;
    }

    // The last start: everything pending is delivered; wait for every transfer to end.
    // The accounts are read one after another while deliveries go on, so one pass
    // is not a consistent cut: a receiver read before its deposit and its sender
    // read after the transfer completed would show money missing. But no transfer
    // starts now (only clients start them), and a receiver deposits before its
    // sender's transfer ends: once a whole pass has shown no pending transfer,
    // every transfer had ended when that pass finished, and the next pass reads
    // settled accounts.
    let server = Server::start(data.path(), comps.path(), &[]);
    let read_states = || -> Vec<Value> {
        (0..ACCOUNTS)
            .map(|i| {
                let (s, body) = server.get(&format!("/v1/entities/bank-account/acc{i}/state"));
                assert_eq!(s, 200, "{body}");
                body["state"].clone()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_states().iter().any(|s| s.get("pending").is_some()) {
        assert!(Instant::now() < deadline, "transfers still pending after 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let states = read_states();
    assert!(states.iter().all(|s| s.get("pending").is_none()), "a transfer started after all had ended: {states:?}");
    let balances: Vec<u64> = states.iter().map(|s| s["balance"].as_u64().unwrap()).collect();
    recovered += server.metric::<u64>("mneme_outbox_recovered_total");
    std::thread::sleep(Duration::from_millis(500));
    duplicates += server.metric::<u64>("mneme_outbox_duplicates_total");

    // Each account's state is the fold of its events in the journal.
    let events = server.tagged_events("account");
    let mut folded: HashMap<String, i64> = HashMap::new();
    for e in &events {
        let pid = e["persistence_id"].as_str().unwrap().to_string();
        let amount = e["payload"]["amount"].as_i64().unwrap_or(0);
        let change = match e["manifest"].as_str().unwrap() {
            "Deposited" | "TransferReceived" | "TransferRefunded" => amount,
            "Withdrawn" | "TransferSent" => -amount,
            _ => 0,
        };
        *folded.entry(pid).or_default() += change;
    }
    for (i, balance) in balances.iter().enumerate() {
        let pid = format!("bank-account|acc{i}");
        assert_eq!(*balance as i64, folded[&pid], "{pid}: the state's balance is not the sum of its events");
    }

    // Money neither created nor lost.
    assert_eq!(balances.iter().sum::<u64>(), ACCOUNTS as u64 * DEPOSIT, "balances: {balances:?}");

    // Every transfer in the journal ended exactly once, and was received at most once.
    let mut sent: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut ended: HashMap<String, Vec<&str>> = HashMap::new();
    for e in &events {
        let pid = e["persistence_id"].as_str().unwrap().to_string();
        let p = &e["payload"];
        let id = p["transferId"].as_str().map(str::to_string);
        match e["manifest"].as_str().unwrap() {
            "TransferSent" => {
                let id = id.unwrap();
                assert!(pid.ends_with(&format!("|{}", id.split('#').next().unwrap())), "{e}");
                let prev = sent.insert(id.clone(), (p["to"].as_str().unwrap().into(), p["amount"].as_u64().unwrap()));
                assert!(prev.is_none(), "transfer {id} sent twice");
            }
            "TransferReceived" => received.entry(id.unwrap()).or_default().push(pid),
            "TransferCompleted" => ended.entry(id.unwrap()).or_default().push("completed"),
            "TransferRefunded" => ended.entry(id.unwrap()).or_default().push("refunded"),
            _ => {}
        }
    }
    let acked_set: HashSet<&String> = acked.iter().collect();
    assert_eq!(acked_set.len(), acked.len(), "a transfer id acknowledged twice");
    for id in &acked {
        assert!(sent.contains_key(id), "acknowledged transfer {id} is not in the journal");
    }
    let (mut completed, mut refunded) = (0, 0);
    for (id, (to, _)) in &sent {
        let ends = ended.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let receivers = received.get(id).map(Vec::as_slice).unwrap_or(&[]);
        match ends {
            ["completed"] => {
                completed += 1;
                assert_eq!(receivers, [format!("bank-account|{to}")], "transfer {id}: received by");
            }
            ["refunded"] => {
                refunded += 1;
                assert!(receivers.is_empty(), "transfer {id} refunded but received by {receivers:?}");
                assert!(to.starts_with("ghost"), "transfer {id} to an open account {to} was refunded");
            }
            other => panic!("transfer {id} to {to} ended {other:?} (received by {receivers:?})"),
        }
    }
    for id in received.keys().chain(ended.keys()) {
        assert!(sent.contains_key(id), "transfer {id} received or ended but never sent");
    }
    eprintln!(
        "{} transfers in the journal ({} acknowledged): {completed} completed, {refunded} refunded; \
         {recovered} deliveries pending at a start, {duplicates} of them already applied",
        sent.len(),
        acked.len()
    );
    assert!(!acked.is_empty());
    assert!(refunded > 0 && completed > 0, "both ends of the saga were exercised");
    assert!(recovered > 0, "no delivery was pending at any start: the kills did not test redelivery");
    assert!(server.terminate().success());

    // Every idempotency key applied at most once per entity, every record intact.
    let out = std::process::Command::new(mneme_bin()).args(["journal", "verify"]).arg(data.path()).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify: {report}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", report.lines().next().unwrap_or_default());
}
