//! One process per data directory, whatever its flags: `DATA/LOCK` is taken
//! before anything in the directory is opened or created.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, mneme_bin};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthy(port: u16) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent.get(format!("http://127.0.0.1:{port}/health")).call().is_ok_and(|r| r.status() == 200)
}

#[test]
fn concurrent_first_starts_with_different_flags_let_exactly_one_win() {
    let comps = components_dir(&[example("bank-account")]);
    for attempt in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let journals = if attempt % 2 == 0 { ["log", "sled"] } else { ["sled", "log"] };
        let mut children: Vec<_> = journals
            .iter()
            .enumerate()
            .map(|(i, journal)| {
                let port = free_port();
                let log = std::fs::File::create(dir.path().join(format!("out{i}"))).unwrap();
                let child = Command::new(mneme_bin())
                    .args(["serve", "--journal", journal, "--data"])
                    .arg(&data)
                    .arg("--components")
                    .arg(comps.path())
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                (child, port, i)
            })
            .collect();
        // Wait until one is serving and the other has exited (or time runs out).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut exited = Vec::new();
        let mut serving = Vec::new();
        while Instant::now() < deadline && exited.len() + serving.len() < 2 {
            for (child, port, i) in children.iter_mut() {
                if exited.iter().any(|(j, _)| j == i) || serving.contains(i) {
                    continue;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    exited.push((*i, status));
                } else if healthy(*port) {
                    serving.push(*i);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (child, _, _) in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(serving.len(), 1, "attempt {attempt}: serving {serving:?}, exited {exited:?}");
        assert_eq!(exited.len(), 1, "attempt {attempt}: serving {serving:?}, exited {exited:?}");
        let (loser, status) = exited[0];
        assert!(!status.success(), "attempt {attempt}: the loser must exit non-zero");
        let said = std::fs::read_to_string(dir.path().join(format!("out{loser}"))).unwrap();
        assert!(
            said.contains("in use by another mneme process") || said.contains("start with `--journal"),
            "attempt {attempt}: unclear refusal: {said}"
        );
    }
}
