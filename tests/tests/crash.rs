//! Crash suite: kill -9 a real `mneme serve` again and again while concurrent
//! clients send bank-account commands, restart it on the same data directory each
//! time, then audit the journal through the HTTP API.
//!
//! What is checked, after all the kills:
//! * every acknowledged (200) command's event is stored exactly once, at the place
//!   its reply describes (the balance in the reply is the balance right after it);
//! * a command that certainly failed (409, 422) is not stored; a command whose
//!   outcome is unknown (connection reset, no answer) is stored at most once;
//! * no event is stored that no client sent;
//! * sequence numbers are gapless from 1; global offsets are unique and strictly
//!   increasing across the pages of `GET /v1/events?tag=account`, and the tag
//!   query returns exactly the events of the entities;
//! * every balance a reply showed (`GetBalance`, rejected withdrawals) is one the
//!   journal's history went through: nothing visible was lost;
//! * each entity's state (`/state` and a `GetBalance` command) equals the fold of
//!   its events.
//!
//! Every deposit and withdrawal carries a unique id as its amount (ids are unique
//! across both kinds), so each stored event names the command that made it.
//!
//! CI form: `cargo test -p mneme-tests --test crash` (10 kills). Long form:
//! ```sh
//! cargo build -p mneme --bins --release
//! MNEME_CRASH_KILLS=100 cargo test -p mneme-tests --release --test crash -- --nocapture
//! ```
//! Two of the rounds (`MNEME_CRASH_TERMS`) end with SIGTERM instead: the process
//! must exit cleanly within 60 s under load, every command it handled must have
//! got its answer (a request without an answer must not be stored), and the same
//! audit applies.
//!
//! Knobs (environment): `MNEME_CRASH_KILLS` (10), `MNEME_CRASH_ENTITIES` (200),
//! `MNEME_CRASH_CLIENTS` (8 threads, 2 connections each), `MNEME_CRASH_ROUND_MS`
//! (longest time between a start and its kill; each round draws 100..=this, 1200),
//! `MNEME_CRASH_SEED`, `MNEME_CRASH_SERVE_ARGS` (extra `mneme serve` arguments,
//! e.g. `--journal sled`), `MNEME_TEST_JOURNAL` (`postgres`: a database of its own
//! on the test server, see `mneme_tests::serve_journal_args`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mneme_tests::raw_http::Conn;
use mneme_tests::{components_dir, example, Server};
use serde_json::Value;

/// Withdrawals of `HUGE + id` exceed any balance this test can reach (the sum of
/// all ids stays far below 2^50), so they must be rejected.
const HUGE: u64 = 1 << 50;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// xorshift64*: small, seedable, good enough to pick commands.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Deposit,
    Withdraw,
    /// A withdrawal no balance can cover: must be rejected.
    WithdrawHuge,
    Balance,
}

/// The payloads are read when a problem is printed (through `Debug`).
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Answer {
    /// 200 with the balance the reply showed.
    Ok(u64),
    /// A definite refusal: 409 or 422 (with its message).
    Refused(u16, String),
    /// Sent, but no (complete) answer: the command may or may not have been handled.
    Unknown(String),
    /// Anything else: a finding in itself.
    Unexpected(u16, String),
}

#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    entity: usize,
    kind: Kind,
    round: usize,
    answer: Answer,
}

impl Sent {
    fn amount(&self) -> u64 {
        match self.kind {
            Kind::WithdrawHuge => HUGE + self.id,
            _ => self.id,
        }
    }
    fn body(&self) -> String {
        match self.kind {
            Kind::Create => r#"{"type":"CreateAccount"}"#.to_string(),
            Kind::Deposit => format!(r#"{{"type":"Deposit","amount":{}}}"#, self.amount()),
            Kind::Withdraw | Kind::WithdrawHuge => format!(r#"{{"type":"Withdraw","amount":{}}}"#, self.amount()),
            Kind::Balance => r#"{"type":"GetBalance"}"#.to_string(),
        }
    }
}

fn entity_id(i: usize) -> String {
    format!("acct-{i:04}")
}

struct Shared {
    addr: SocketAddr,
    stop: AtomicBool,
    next_id: Arc<AtomicU64>,
    /// Entities a client has seen created (only steers the choice of commands).
    created: Arc<Vec<AtomicBool>>,
}

/// One client thread: two keep-alive connections used in turn, one command at a
/// time on each, never resent.
fn client(shared: Arc<Shared>, mut rng: Rng, round: usize) -> Vec<Sent> {
    let entities = shared.created.len();
    let mut conns: [Option<Conn>; 2] = [None, None];
    let mut log = Vec::new();
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        turn += 1;
        let slot = &mut conns[turn % 2];
        if slot.is_none() {
            match Conn::connect(shared.addr, Duration::from_secs(30)) {
                Ok(c) => *slot = Some(c),
                Err(_) => {
                    // The server is dead (killed): nothing was sent.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        }
        let entity = rng.below(entities as u64) as usize;
        let created = shared.created[entity].load(Ordering::Relaxed);
        let roll = rng.below(100);
        let kind = if !created && roll < 70 {
            Kind::Create
        } else {
            match roll % 50 {
                0 => Kind::Create,
                1..=26 => Kind::Deposit,
                27..=39 => Kind::Withdraw,
                40..=43 => Kind::WithdrawHuge,
                _ => Kind::Balance,
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let mut sent = Sent { id, entity, kind, round, answer: Answer::Unknown(String::new()) };
        let path = format!("/v1/entities/bank-account/{}", entity_id(entity));
        let result = slot.as_mut().unwrap().request("POST", &path, sent.body().as_bytes());
        sent.answer = match result {
            Ok(r) => {
                let text = r.body_text();
                match r.status {
                    200 => match serde_json::from_str::<Value>(&text).ok().and_then(|v| v["balance"].as_u64()) {
                        Some(b) => Answer::Ok(b),
                        None => Answer::Unexpected(200, text),
                    },
                    409 | 422 => Answer::Refused(r.status, text),
                    s => Answer::Unexpected(s, text),
                }
            }
            Err(e) => {
                *slot = None;
                Answer::Unknown(e)
            }
        };
        if matches!(sent.answer, Answer::Ok(_)) && kind == Kind::Create
            || matches!(&sent.answer, Answer::Refused(422, m) if m.contains("already created"))
        {
            shared.created[entity].store(true, Ordering::Relaxed);
        }
        log.push(sent);
    }
    log
}

/// Every page of a paged listing, following `next_from`.
fn pages(server: &Server, path: impl Fn(u64) -> String, first: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = first;
    loop {
        let (s, page) = server.get(&path(from));
        assert_eq!(s, 200, "{}: {page}", path(from));
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        let next = page["next_from"].as_u64().unwrap();
        assert!(next > from, "{}: next_from {next} does not advance", path(from));
        from = next;
        out.extend(events);
    }
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    terms: usize,
    sent: usize,
    acked: usize,
    refused: usize,
    unknown: usize,
    unknown_stored: usize,
    stored_events: usize,
    per_round_ms: Vec<u64>,
}

#[test]
fn kill_9_under_concurrent_load_keeps_every_acknowledged_command_exactly_once() {
    let kills = env_u64("MNEME_CRASH_KILLS", 10) as usize;
    let terms = env_u64("MNEME_CRASH_TERMS", 2) as usize;
    let entities = env_u64("MNEME_CRASH_ENTITIES", 200) as usize;
    let clients = env_u64("MNEME_CRASH_CLIENTS", 8) as usize;
    let round_ms = env_u64("MNEME_CRASH_ROUND_MS", 1200).max(100);
    let seed = env_u64(
        "MNEME_CRASH_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
    );
    let data = tempfile::tempdir().unwrap();
    let mut extra_args: Vec<String> =
        std::env::var("MNEME_CRASH_SERVE_ARGS").unwrap_or_default().split_whitespace().map(String::from).collect();
    extra_args.extend(mneme_tests::serve_journal_args(data.path()));
    let extra: Vec<&str> = extra_args.iter().map(String::as_str).collect();
    // Graceful stops (SIGTERM) spread among the kills.
    let rounds = kills + terms;
    let every = rounds.checked_div(terms).unwrap_or(usize::MAX);
    let graceful: Vec<bool> = (0..rounds).map(|r| (r + 1) % every == 0 && (r + 1) / every <= terms).collect();
    println!("crash suite: {kills} kills and {terms} graceful stops, {entities} entities, {clients} clients, rounds up to {round_ms} ms, seed {seed}, args {extra:?}");

    let comps = components_dir(&[example("bank-account")]);
    let mut rng = Rng(seed);
    let next_id = Arc::new(AtomicU64::new(1));
    let created: Arc<Vec<AtomicBool>> = Arc::new((0..entities).map(|_| AtomicBool::new(false)).collect());
    let mut log: Vec<Sent> = Vec::new();
    let mut writer_ids: Vec<String> = Vec::new();
    let mut tally = Tally::default();
    let started = Instant::now();

    let mut term_unknown = 0;
    for (round, &stop_gracefully) in graceful.iter().enumerate() {
        let server = Server::start(data.path(), comps.path(), &extra);
        writer_ids.push(server.get("/health").1["writer_id"].as_str().unwrap().to_string());
        let shared = Arc::new(Shared {
            addr: server.addr(),
            stop: AtomicBool::new(false),
            next_id: next_id.clone(),
            created: created.clone(),
        });
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (shared, r) = (shared.clone(), Rng(rng.next() | 1));
                std::thread::spawn(move || client(shared, r, round))
            })
            .collect();
        let ms = 100 + rng.below(round_ms - 99);
        std::thread::sleep(Duration::from_millis(ms));
        let how = if stop_gracefully {
            // SIGTERM: in-flight writes finish, the process exits cleanly.
            let status = server.terminate_within(Duration::from_secs(60));
            assert!(
                status.is_some_and(|s| s.success()),
                "round {round}: SIGTERM under load did not end in a clean exit: {status:?}"
            );
            tally.terms += 1;
            "stopped (SIGTERM)"
        } else {
            server.kill();
            tally.kills += 1;
            "killed"
        };
        shared.stop.store(true, Ordering::SeqCst);
        let before = log.len();
        for t in threads {
            log.extend(t.join().unwrap());
        }
        tally.per_round_ms.push(ms);
        let acked = log[before..].iter().filter(|s| matches!(s.answer, Answer::Ok(_))).count();
        let unknown = log[before..].iter().filter(|s| matches!(s.answer, Answer::Unknown(_))).count();
        if stop_gracefully {
            term_unknown += unknown;
        }
        println!(
            "round {round}: {how} after {ms} ms, {} commands sent, {acked} acknowledged, {unknown} unknown",
            log.len() - before
        );
    }

    // Audit on a fresh start.
    let server = Server::start(data.path(), comps.path(), &extra);
    writer_ids.push(server.get("/health").1["writer_id"].as_str().unwrap().to_string());
    let generation: HashMap<&str, usize> = writer_ids.iter().enumerate().map(|(g, w)| (w.as_str(), g)).collect();
    let by_id: HashMap<u64, &Sent> = log.iter().map(|s| (s.id, s)).collect();
    let mut problems: Vec<String> = Vec::new();
    let mut stored_ids: HashMap<u64, usize> = HashMap::new();
    // (pid, seq) -> offset, from the entities' own event lists.
    let mut entity_offsets: HashMap<(String, u64), u64> = HashMap::new();

    for e in 0..entities {
        let id = entity_id(e);
        let pid = format!("bank-account|{id}");
        let events = pages(&server, |from| format!("/v1/entities/bank-account/{id}/events?from={from}&limit=1000"), 1);
        // Balances the history went through (after each event).
        let mut balances: HashSet<u64> = HashSet::new();
        let mut balance: u64 = 0;
        let mut last_offset = 0;
        let mut last_gen = 0;
        let mut creates = 0;
        for (i, ev) in events.iter().enumerate() {
            let seq = ev["seq_nr"].as_u64().unwrap();
            let offset = ev["offset"].as_u64().unwrap();
            if seq != i as u64 + 1 {
                problems.push(format!("{pid}: event #{i} has seq_nr {seq}: gap or duplicate"));
            }
            if ev["persistence_id"] != pid.as_str() {
                problems.push(format!("{pid}: event {seq} has persistence_id {}", ev["persistence_id"]));
            }
            if i > 0 && offset <= last_offset {
                problems
                    .push(format!("{pid}: offset {offset} of event {seq} is not above the previous one {last_offset}"));
            }
            if ev["tags"] != serde_json::json!(["account"]) {
                problems.push(format!("{pid}: event {seq} has tags {}", ev["tags"]));
            }
            match generation.get(ev["writer_id"].as_str().unwrap_or("")) {
                Some(&g) if g >= last_gen => last_gen = g,
                Some(&g) => {
                    problems.push(format!("{pid}: event {seq} was written by run {g} after events of run {last_gen}"))
                }
                None => problems.push(format!("{pid}: event {seq} has writer id {} of no run", ev["writer_id"])),
            }
            last_offset = offset;
            entity_offsets.insert((pid.clone(), seq), offset);
            let manifest = ev["manifest"].as_str().unwrap_or("");
            let amount = ev["payload"]["amount"].as_u64();
            match (manifest, amount) {
                ("AccountCreated", None) => {
                    creates += 1;
                    if seq != 1 {
                        problems.push(format!("{pid}: AccountCreated at seq_nr {seq}"));
                    }
                }
                ("Deposited" | "Withdrawn", Some(amount)) => {
                    if seq == 1 {
                        problems.push(format!("{pid}: {manifest} before AccountCreated"));
                    }
                    *stored_ids.entry(amount % HUGE).or_default() += 1;
                    let expected_kind = if manifest == "Deposited" { Kind::Deposit } else { Kind::Withdraw };
                    let sent_id = if amount >= HUGE { amount - HUGE } else { amount };
                    if amount >= HUGE {
                        problems.push(format!(
                            "{pid}: event {seq} {manifest} {amount}: an impossible withdrawal is stored"
                        ));
                    }
                    match by_id.get(&sent_id) {
                        Some(s) if s.kind == expected_kind && s.entity == e => {
                            if let Answer::Ok(b) = s.answer {
                                let after = if expected_kind == Kind::Deposit {
                                    balance + amount
                                } else {
                                    balance.wrapping_sub(amount)
                                };
                                if b != after {
                                    problems.push(format!(
                                        "{pid}: command {amount} ({manifest}) was acknowledged with balance {b}, the journal has {after} after it"
                                    ));
                                }
                            }
                        }
                        Some(s) => problems.push(format!(
                            "{pid}: event {seq} {manifest} {amount} does not match the command sent: {s:?}"
                        )),
                        None => problems
                            .push(format!("{pid}: event {seq} {manifest} {amount}: no client sent this command")),
                    }
                    if manifest == "Deposited" {
                        balance += amount;
                    } else if amount > balance {
                        problems
                            .push(format!("{pid}: withdrawal {amount} at seq_nr {seq} exceeds the balance {balance}"));
                        balance = 0;
                    } else {
                        balance -= amount;
                    }
                }
                _ => problems.push(format!("{pid}: unexpected event {ev}")),
            }
            balances.insert(balance);
        }
        if creates > 1 {
            problems.push(format!("{pid}: {creates} AccountCreated events"));
        }
        tally.stored_events += events.len();
        let sent_here: Vec<&Sent> = log.iter().filter(|s| s.entity == e).collect();
        let acked_creates =
            sent_here.iter().filter(|s| s.kind == Kind::Create && matches!(s.answer, Answer::Ok(_))).count();
        if acked_creates > 1 {
            problems.push(format!("{pid}: {acked_creates} CreateAccount commands were acknowledged"));
        }
        if acked_creates == 1 && creates != 1 {
            problems.push(format!("{pid}: an acknowledged CreateAccount is not stored"));
        }
        // Balances shown by replies that persisted nothing must be ones the history went through.
        for s in &sent_here {
            let shown = match (&s.kind, &s.answer) {
                (Kind::Balance, Answer::Ok(b)) => Some(*b),
                (Kind::Withdraw | Kind::WithdrawHuge, Answer::Refused(422, msg)) => msg
                    .split("Insufficient balance ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok()),
                _ => None,
            };
            if let Some(b) = shown {
                if !balances.contains(&b) {
                    problems.push(format!(
                        "{pid}: command {} showed balance {b}, which the stored history never had",
                        s.id
                    ));
                }
            }
        }
        // State = fold of the events.
        let (s, state) = server.get(&format!("/v1/entities/bank-account/{id}/state"));
        assert_eq!(s, 200, "{pid}: {state}");
        if state["seq_nr"].as_u64() != Some(events.len() as u64) {
            problems.push(format!("{pid}: state seq_nr {} but {} events", state["seq_nr"], events.len()));
        }
        let expected_state = if events.is_empty() {
            serde_json::json!({"status":"empty"})
        } else {
            serde_json::json!({"status":"open","balance":balance})
        };
        if state["state"] != expected_state {
            problems.push(format!("{pid}: state {} but the events fold to {expected_state}", state["state"]));
        }
        let (s, reply) = server.send("bank-account", &id, r#"{"type":"GetBalance"}"#);
        match (events.is_empty(), s) {
            (true, 409) => {}
            (false, 200) if reply["balance"].as_u64() == Some(balance) => {}
            _ => problems.push(format!("{pid}: GetBalance answered {s} {reply}, the events fold to {balance}")),
        }
    }

    // The tag query: every event once, offsets unique and strictly increasing, the same offsets.
    let tagged = pages(&server, |from| format!("/v1/events?tag=account&from={from}&limit=1000"), 0);
    let mut last: Option<u64> = None;
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    for ev in &tagged {
        let offset = ev["offset"].as_u64().unwrap();
        if last.is_some_and(|l| offset <= l) {
            problems.push(format!("tag query: offset {offset} after {}", last.unwrap()));
        }
        last = Some(offset);
        let key = (ev["persistence_id"].as_str().unwrap().to_string(), ev["seq_nr"].as_u64().unwrap());
        match entity_offsets.get(&key) {
            Some(&o) if o == offset => {}
            Some(&o) => problems.push(format!("tag query: {key:?} at offset {offset}, the entity's events say {o}")),
            None => problems.push(format!("tag query: {key:?} is not among the entity's events")),
        }
        if !seen.insert(key.clone()) {
            problems.push(format!("tag query: {key:?} twice"));
        }
    }
    if tagged.len() != entity_offsets.len() {
        problems.push(format!(
            "tag query returned {} events, the entities hold {}",
            tagged.len(),
            entity_offsets.len()
        ));
    }

    // Every command against what is stored.
    let mut by_answer: BTreeMap<&str, usize> = BTreeMap::new();
    let mut term_unknown_stored = 0;
    for s in &log {
        tally.sent += 1;
        let stored = stored_ids.get(&s.id).copied().unwrap_or(0);
        let stored = if matches!(s.kind, Kind::Deposit | Kind::Withdraw) { stored } else { 0 };
        if stored > 1 {
            problems.push(format!("command {} stored {stored} times: {s:?}", s.id));
        }
        match &s.answer {
            Answer::Ok(_) => {
                tally.acked += 1;
                *by_answer.entry("acknowledged").or_default() += 1;
                if matches!(s.kind, Kind::Deposit | Kind::Withdraw) && stored != 1 {
                    problems.push(format!("acknowledged command {} is stored {stored} times: {s:?}", s.id));
                }
                if s.kind == Kind::WithdrawHuge {
                    problems.push(format!("an impossible withdrawal was acknowledged: {s:?}"));
                }
            }
            Answer::Refused(status, _) => {
                tally.refused += 1;
                *by_answer.entry(if *status == 409 { "refused 409" } else { "refused 422" }).or_default() += 1;
                if stored != 0 {
                    problems.push(format!("refused command {} is stored: {s:?}", s.id));
                }
            }
            Answer::Unknown(_) => {
                tally.unknown += 1;
                *by_answer.entry("unknown").or_default() += 1;
                tally.unknown_stored += stored;
                if graceful[s.round] {
                    term_unknown_stored += stored;
                    if stored > 0 {
                        problems.push(format!("a graceful stop handled command {} but sent no answer: {s:?}", s.id));
                    }
                }
            }
            Answer::Unexpected(..) => {
                *by_answer.entry("unexpected").or_default() += 1;
                problems.push(format!("unexpected answer: {s:?}"));
            }
        }
    }
    // The rounds must have produced the situations the audit is about.
    let acked_per_round: Vec<usize> =
        (0..rounds).map(|r| log.iter().filter(|s| s.round == r && matches!(s.answer, Answer::Ok(_))).count()).collect();
    assert!(acked_per_round.iter().all(|&n| n > 0), "a round acknowledged nothing: {acked_per_round:?}");
    assert!(tally.refused > 0, "no command was refused: the audit of refusals checked nothing");

    println!(
        "crash tally: kills={} graceful_stops={} (unknown outcomes at graceful stops: {term_unknown}, of which stored: {term_unknown_stored}) commands_sent={} acknowledged_audited={} refused={} unknown_outcome={} unknown_stored={} stored_events={} answers={by_answer:?} elapsed={:.1}s",
        tally.kills,
        tally.terms,
        tally.sent,
        tally.acked,
        tally.refused,
        tally.unknown,
        tally.unknown_stored,
        tally.stored_events,
        started.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(40).collect();
        panic!(
            "{} problems (seed {seed}); first ones:\n{}",
            problems.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}
