//! `--journal postgres` through the real binary: a clear error when PostgreSQL
//! cannot be reached or refuses the login; a schema from a newer mneme refused; a
//! second mneme on one database refused; PostgreSQL stopped and started again
//! under load: commands fail with 503 while it is down and succeed after, without
//! a restart of mneme, and nothing acknowledged is lost. (kill -9 of mneme on
//! PostgreSQL: the crash suite with `MNEME_TEST_JOURNAL=postgres`.)
//!
//! The server is `MNEME_TEST_POSTGRES_URL`'s (`scripts/start-postgres.sh` prints
//! one); without it these tests fail, saying so, they are never skipped. The
//! outage test stops and starts a private server of its own, started with
//! `scripts/start-postgres.sh DIR`.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mneme::journal::postgres::testing;
use mneme_tests::{components_dir, example, root, Server};

fn start_postgres(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts/start-postgres.sh"))
        .args(args)
        .output()
        .expect("run scripts/start-postgres.sh");
    assert!(out.status.success(), "start-postgres.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start `mneme serve` expecting it to fail; its output.
fn failed_start(extra: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let data = tempfile::tempdir().unwrap();
    let components = components_dir(&[example("bank-account")]);
    let out = Command::new(mneme_tests::mneme_bin())
        .arg("serve")
        .arg("--data")
        .arg(data.path())
        .arg("--components")
        .arg(components.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(extra)
        .env_remove("MNEME_POSTGRES_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "a panic instead of an error:\n{text}");
    (out.status, text)
}

#[test]
fn an_unreachable_or_refusing_database_stops_the_start_with_the_drivers_error() {
    // Nothing listens on the port.
    let url = format!("postgres://mneme@127.0.0.1:{}/mneme", free_port());
    let (status, text) = failed_start(&["--journal", "postgres", "--postgres-url", &url], &[]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("Connection refused") && text.contains(&url), "{text}");

    // No URL at all.
    let (status, text) = failed_start(&["--journal", "postgres"], &[]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("--postgres-url"), "{text}");

    // A wrong password and a missing database: PostgreSQL's own words. The
    // password never shows.
    let server = testing::server_url();
    let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mneme_login') THEN \
             CREATE ROLE mneme_login LOGIN PASSWORD 'right-password'; END IF; END $$",
        )
        .unwrap();
    let host = server.trim_start_matches("postgres://mneme@").split('/').next().unwrap().to_string();
    let wrong = format!("postgres://mneme_login:wrong-password@{host}/mneme");
    let (status, text) = failed_start(&["--journal", "postgres"], &[("MNEME_POSTGRES_URL", &wrong)]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("password authentication failed for user \"mneme_login\""), "{text}");
    assert!(!text.contains("wrong-password"), "the password is shown: {text}");
    let missing = format!("postgres://mneme@{host}/no_such_database");
    let (status, text) = failed_start(&["--journal", "postgres", "--postgres-url", &missing], &[]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("database \"no_such_database\" does not exist"), "{text}");
}

#[test]
fn a_database_migrated_by_a_newer_mneme_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let url = testing::database_for(dir.path());
    drop(mneme::journal::PostgresJournal::open(&url).unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute(
            "INSERT INTO mneme.schema_version (version, description, mneme_version) VALUES (9999, 'future', '9.9.9')",
            &[],
        )
        .unwrap();
    let err = mneme::journal::PostgresJournal::open(&url).err().expect("a newer schema must be refused");
    let text = err.to_string();
    let latest = mneme::journal::postgres::SCHEMA_VERSION;
    assert!(text.contains("schema version 9999") && text.contains(&format!("up to {latest}")), "{text}");
}

/// One command's fate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// 503: not stored by an acknowledged write (it may have been committed if
    /// the commit's answer was lost, so it may be stored at most once).
    Unavailable,
    /// No HTTP answer.
    Unknown,
}

#[test]
fn postgres_stopped_and_started_under_load_fails_commands_with_503_and_loses_nothing_acknowledged() {
    let pg_dir = tempfile::tempdir().unwrap();
    // Run as root, the script runs PostgreSQL as the `postgres` user, who must reach the directory.
    std::fs::set_permissions(pg_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pg_dir_arg = pg_dir.path().join("pg");
    let pg_dir_arg = pg_dir_arg.to_str().unwrap().to_string();
    let url = start_postgres(&[&pg_dir_arg]);
    struct StopOnDrop(String);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            start_postgres(&["--stop", &self.0]);
        }
    }
    let _stop = StopOnDrop(pg_dir_arg.clone());

    let data = tempfile::tempdir().unwrap();
    let components = components_dir(&[example("bank-account")]);
    let server = Server::start(
        data.path(),
        components.path(),
        &["--journal", "postgres", "--postgres-url", &url, "--reply-timeout-secs", "10"],
    );
    const ACCOUNTS: usize = 20;
    for i in 0..ACCOUNTS {
        assert_eq!(server.send("bank-account", &format!("a{i}"), r#"{"type":"CreateAccount"}"#).0, 200);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let sent: Arc<Mutex<Vec<(u64, usize, Answer)>>> = Arc::default();
    let url_of = server.url.clone();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (stop, next_id, sent, base) = (stop.clone(), next_id.clone(), sent.clone(), url_of.clone());
            std::thread::spawn(move || {
                let agent = mneme_tests::agent(None);
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    i = (i * 7 + 3) % ACCOUNTS;
                    let body = format!(r#"{{"type":"Deposit","amount":{id}}}"#);
                    let answer = match agent
                        .post(format!("{base}/v1/entities/bank-account/a{i}"))
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                    {
                        Ok(r) if r.status() == 200 => Answer::Ok,
                        Ok(r) if r.status() == 503 => Answer::Unavailable,
                        Ok(r) => panic!("unexpected status {} for a deposit", r.status()),
                        Err(_) => Answer::Unknown,
                    };
                    sent.lock().unwrap().push((id, i, answer));
                    if answer != Answer::Ok {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();

    let count = |a: Answer| sent.lock().unwrap().iter().filter(|s| s.2 == a).count();
    let mut outages = Vec::new();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        let before = count(Answer::Ok);
        assert!(before > 0, "round {round}: no command succeeded before the outage");
        // Down: `immediate` is what a crash of PostgreSQL looks like to mneme.
        start_postgres(&["--kill", &pg_dir_arg]);
        let down = Instant::now();
        let unavailable_before = count(Answer::Unavailable);
        while count(Answer::Unavailable) == unavailable_before {
            assert!(down.elapsed() < Duration::from_secs(30), "no 503 while PostgreSQL is down");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.get("/health").0, 503, "/health while PostgreSQL is down");
        std::thread::sleep(Duration::from_millis(700));
        let ok_while_down = count(Answer::Ok);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(Answer::Ok), ok_while_down, "commands acknowledged while PostgreSQL is down");
        // Up again, on the same port: mneme serves again by itself.
        assert_eq!(start_postgres(&[&pg_dir_arg]), url);
        let up = Instant::now();
        let ok_at_restart = count(Answer::Ok);
        while count(Answer::Ok) == ok_at_restart {
            assert!(up.elapsed() < Duration::from_secs(30), "mneme did not serve again after PostgreSQL returned");
            std::thread::sleep(Duration::from_millis(10));
        }
        outages.push((down.elapsed() - up.elapsed(), up.elapsed()));
        let healthy = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(healthy.elapsed() < Duration::from_secs(10), "/health stays 503");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    // The audit, through the API: every acknowledged deposit stored exactly once,
    // anything else at most once, nothing no client sent, gapless seq nrs.
    let sent = sent.lock().unwrap().clone();
    let answers: HashMap<u64, (usize, Answer)> = sent.iter().map(|&(id, i, a)| (id, (i, a))).collect();
    let mut stored: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..ACCOUNTS {
        let (status, page) = server.get(&format!("/v1/entities/bank-account/a{i}/events?from=1&limit=100000"));
        assert_eq!(status, 200);
        let events = page["events"].as_array().unwrap();
        let mut balance = 0;
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e["seq_nr"], n as u64 + 1, "a{i}: sequence numbers are gapless");
            if e["manifest"] == "Deposited" {
                let id = e["payload"]["amount"].as_u64().unwrap();
                balance += id;
                *stored.entry(id).or_default() += 1;
                let (account, _) = answers.get(&id).unwrap_or_else(|| panic!("a{i}: deposit {id} no client sent"));
                assert_eq!(*account, i, "deposit {id} stored on the wrong account");
            }
        }
        let (_, state) = server.get(&format!("/v1/entities/bank-account/a{i}/state"));
        assert_eq!(state["state"]["balance"], balance, "a{i}: state is the fold of its events");
    }
    let (mut acked, mut lost_answers, mut unavailable_stored) = (0, 0, 0);
    for (&id, &(_, answer)) in &answers {
        let n = stored.get(&id).copied().unwrap_or(0);
        assert!(n <= 1, "deposit {id} stored {n} times");
        match answer {
            Answer::Ok => {
                assert_eq!(n, 1, "acknowledged deposit {id} is not stored");
                acked += 1;
            }
            Answer::Unavailable => unavailable_stored += n,
            Answer::Unknown => lost_answers += 1,
        }
    }
    let unavailable = sent.iter().filter(|s| s.2 == Answer::Unavailable).count();
    println!(
        "{} deposits sent: {acked} acknowledged and stored once, {unavailable} answered 503 ({unavailable_stored} of \
         them committed before the connection broke), {lost_answers} without an answer; outages (down, back after): \
         {outages:?}",
        sent.len()
    );
    assert!(acked > 100, "too little load to mean anything: {acked}");
    assert!(server_alive(server));
}

fn server_alive(mut server: Server) -> bool {
    server.alive()
}

#[test]
fn a_second_mneme_on_the_same_database_is_refused_and_the_first_keeps_serving() {
    let (data, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = testing::database_for(data.path());
    let components = components_dir(&[example("bank-account")]);
    let first = Server::start(data.path(), components.path(), &["--journal", "postgres", "--postgres-url", &url]);
    assert_eq!(first.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);

    // Another data directory, the same database: refused once the writer lock
    // has been waited for, with the reason.
    let log = other.path().join("second.log");
    let started = Instant::now();
    let second = Server::try_start(
        other.path(),
        components.path(),
        &["--journal", "postgres", "--postgres-url", &url],
        Some(&log),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(second.is_err(), "a second mneme started on the same database:\n{text}");
    assert!(text.contains("in use by another mneme"), "{text}");
    println!("second mneme refused after {:?}", started.elapsed());

    assert_eq!(first.send("bank-account", "a", r#"{"type":"Deposit","amount":5}"#).0, 200);
    let (_, state) = first.get("/v1/entities/bank-account/a/state");
    assert_eq!(state["state"]["balance"], 5);
}
