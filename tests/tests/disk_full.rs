//! A full disk, for real: the data directory on a small tmpfs of its own, filled
//! with a file until writes fail, then freed. The same process must serve again,
//! `/health` must say 503 while the journal cannot write and 200 after, and after
//! a restart every acknowledged command is there and no failed one is.
//!
//! Mounting a tmpfs needs root (CI runs as root); without it the test fails, it
//! does not skip.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, Server};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(at.to_path_buf()),
            Ok(o) => panic!(
                "mounting a tmpfs at {} failed (this test needs root, as CI has): {}",
                at.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run mount: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system until a write fails with "no space".
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0;
    loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.raw_os_error() == Some(28) => return written,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

fn deposit(server: &Server, id: &str, amount: u64) -> u16 {
    server.send("bank-account", id, &format!(r#"{{"type":"Deposit","amount":{amount}}}"#)).0
}

fn stored_amounts(server: &Server, id: &str) -> Vec<u64> {
    let (status, body) = server.get(&format!("/v1/entities/bank-account/{id}/events?from=1&limit=10000"));
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().iter().filter_map(|e| e["payload"]["amount"].as_u64()).collect()
}

#[test]
fn a_full_disk_fails_writes_then_the_same_process_serves_again_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "32m");
    let data = fs.0.join("data");
    let comps = components_dir(&[example("bank-account")]);
    let log = dir.path().join("server.log");
    let server = Server::try_start(&data, comps.path(), &["--log-segment-mb", "1"], Some(&log)).unwrap();
    let ids: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for id in &ids {
        assert_eq!(server.send("bank-account", id, r#"{"type":"CreateAccount"}"#).0, 200);
    }
    let filled = fill(&fs.0.join("filler"));
    println!("filled the disk with {} MiB", filled >> 20);

    // Write until the disk refuses (the current segment was allocated up front, so
    // that takes until a new segment is needed), then a little longer.
    let (mut acked, mut failed) = (BTreeSet::new(), BTreeSet::new());
    let mut amount = 0;
    let started = Instant::now();
    while failed.len() < 20 {
        assert!(started.elapsed() < Duration::from_secs(300), "writes never failed on a full disk");
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| {
                    amount += 1;
                    let (server, a) = (&server, amount);
                    s.spawn(move || (a, deposit(server, id, a)))
                })
                .collect();
            for h in handles {
                match h.join().unwrap() {
                    (a, 200) => acked.insert(a),
                    (a, 503) => failed.insert(a),
                    (a, status) => panic!(
                        "deposit {a}: unexpected status {status}; the server's log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                };
            }
        });
    }
    let (status, health) = server.get("/health");
    assert_eq!(status, 503, "{health}");
    assert!(health["error"].as_str().unwrap().contains("No space left"), "{health}");

    // Free the space: the same process serves again.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/health").0 != 200 {
        if Instant::now() > deadline {
            let said = std::fs::read_to_string(&log).unwrap();
            let tail: Vec<&str> = said.lines().rev().take(15).collect();
            panic!("/health did not come back after space was freed: {:?}\n{}", server.get("/health"), tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &ids {
        amount += 1;
        assert_eq!(deposit(&server, id, amount), 200, "a write after space came back");
        acked.insert(amount);
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("No space left on device"), "the OS error is not in the log:\n{said}");

    // After a restart: every acknowledged deposit, no failed one.
    assert!(server.terminate().success());
    let server = Server::start(&data, comps.path(), &["--log-segment-mb", "1"]);
    let stored: BTreeSet<u64> = ids.iter().flat_map(|id| stored_amounts(&server, id)).collect();
    assert!(acked.is_subset(&stored), "lost acknowledged deposits: {:?}", acked.difference(&stored));
    assert!(stored.is_disjoint(&failed), "failed deposits stored: {:?}", stored.intersection(&failed));
    println!("{} deposits acknowledged, {} refused with 503 on the full disk", acked.len(), failed.len());
}
