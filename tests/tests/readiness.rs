//! Start-up through the real binary: the server listens at once, `/health` is
//! live from the first moment, `/ready` answers 503 with what is pending until the
//! journal is open and every component is compiled, and a command for a type still
//! compiling gets a 503 that says so.

use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, polyglot, Server};

#[test]
fn the_server_listens_at_once_and_says_when_it_is_ready() {
    let data = tempfile::tempdir().unwrap();
    // A Python component compiles for seconds on a fresh data directory (no cache).
    let comps = components_dir(&[polyglot("bank-account-python"), example("bank-account")]);
    let server = Server::start_live(data.path(), comps.path(), &[]);
    let (s, health) = server.get("/health");
    assert_eq!(s, 200, "live while starting: {health}");

    // Not ready, saying what it waits for: the journal, then the Python component's
    // compile by name (never a bare "loading components" while a component is pending).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, ready) = server.get("/ready");
        assert_eq!(s, 503, "ready before the Python component compiled: {ready}");
        assert_eq!(ready["status"], "starting", "{ready}");
        let text = ready["pending"].to_string();
        assert!(["bank-account-python", "opening the journal"].iter().any(|w| text.contains(w)), "{ready}");
        if text.contains("bank-account-python") {
            break;
        }
        assert!(Instant::now() < deadline, "the compile never showed as pending: {ready}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A command for the type still compiling: 503, saying why.
    let (s, body) = server.send("bank-account-python", "a", r#"{"type":"CreateAccount"}"#);
    if s == 503 {
        let err = body["error"].as_str().unwrap();
        assert!(err.contains("not ready") || err.contains("starting"), "{err}");
        assert!(err.contains("/ready"), "{err}");
    } else {
        panic!("a command before the component compiled got {s}: {body}");
    }

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (s, ready) = server.get("/ready");
        if s == 200 {
            assert_eq!(ready["status"], "ready");
            assert_eq!(ready["components"], 2, "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {ready}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.send("bank-account-python", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    drop(server);

    // A restart loads the compiled code from the cache: ready within seconds.
    let started = Instant::now();
    let server = Server::start(data.path(), comps.path(), &[]);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert_eq!(server.send("bank-account-python", "a", r#"{"type":"GetBalance"}"#).0, 200);
}
