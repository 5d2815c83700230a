//! Damage to a data directory, for real: bytes flipped in the files of the journal
//! (commit-log segments, `COMMITTED`, index files) of a data directory built
//! through the binary, then a restart. Every trial must end as
//!
//! * **refused**: the server does not start, and says the journal is damaged;
//! * **detected**: it starts, and every read it cannot serve correctly fails
//!   with a corruption error;
//! * **no effect**: it starts and serves exactly the acknowledged data.
//!
//! A state that lacks acknowledged events, a reused sequence number or offset,
//! a crash or a hang fails the test. `MNEME_CORRUPTION_TRIALS` sets the number of
//! trials (CI: 30; the long form: `MNEME_CORRUPTION_TRIALS=500 cargo test -p
//! mneme-tests --release --test corruption -- --nocapture`), `MNEME_CORRUPTION_SEED`
//! replays a run.
//!
//! The torn-write test cuts the last segment at bytes of its last frame, written
//! but never acknowledged (the process stopped before it recorded the frame as
//! committed), and checks that the server starts, loses only that frame, and
//! says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mneme_tests::{components_dir, example, test_component, Server};
use serde_json::Value;

/// Bank accounts (with snapshots: the bank account takes one every 100 events) and
/// entities of the test component whose large events fill several segments.
const ACCOUNTS: usize = 6;
const DEPOSITS: usize = 120;
const BULK: usize = 4;
const EXTRA: &[&str] = &["--log-segment-mb", "1"];

/// Every entity the data set holds: (type, id).
fn entities() -> Vec<(&'static str, String)> {
    let accounts = (0..ACCOUNTS).map(|i| ("bank-account", account(i)));
    accounts.chain((0..BULK).map(|i| ("faulty", format!("bulk{i}")))).collect()
}

/// Every account's events (seq_nr, offset, payload) and state, as acknowledged.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    events: BTreeMap<String, Vec<(u64, u64, Value)>>,
    states: BTreeMap<String, Value>,
    tagged: Vec<(String, u64, u64)>,
    max_offset: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn account(i: usize) -> String {
    format!("acc{i}")
}

/// A data directory with many frames over several segments, stopped cleanly.
fn build(data: &Path, comps: &Path) -> Reference {
    let server = Server::start(data, comps, EXTRA);
    std::thread::scope(|s| {
        for i in 0..ACCOUNTS {
            let server = &server;
            s.spawn(move || {
                let id = account(i);
                assert_eq!(server.send("bank-account", &id, r#"{"type":"CreateAccount"}"#).0, 200);
                for d in 0..DEPOSITS {
                    let cmd = format!(r#"{{"type":"Deposit","amount":{}}}"#, 1 + d % 97);
                    assert_eq!(server.send("bank-account", &id, &cmd).0, 200);
                }
            });
        }
        for i in 0..BULK {
            let server = &server;
            s.spawn(move || {
                for c in 0..40 {
                    let values: Vec<String> = (0..25).map(|v| format!("{c}-{v}-{}", "x".repeat(380))).collect();
                    let cmd = serde_json::json!({ "type": "RecordMany", "values": values }).to_string();
                    let (status, body) = server.send("faulty", &format!("bulk{i}"), &cmd);
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    let reference = read_all(&server).expect("the fresh data directory reads back");
    assert!(server.terminate().success());
    reference
}

/// Everything a user can read about the entities; `Err` when a read fails
/// (with its status and message).
fn read_all(server: &Server) -> Result<Reference, String> {
    let mut r = Reference { events: BTreeMap::new(), states: BTreeMap::new(), tagged: Vec::new(), max_offset: 0 };
    for (entity_type, id) in entities() {
        let key = format!("{entity_type}/{id}");
        let (status, body) = server.get(&format!("/v1/entities/{key}/events?from=1&limit=10000"));
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        let events: Vec<_> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["seq_nr"].as_u64().unwrap(), e["offset"].as_u64().unwrap(), e["payload"].clone()))
            .collect();
        r.max_offset = r.max_offset.max(events.iter().map(|e| e.1).max().unwrap_or(0));
        r.events.insert(key.clone(), events);
        let (status, body) = server.get(&format!("/v1/entities/{key}/state"));
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        r.states.insert(key, body["state"].clone());
    }
    let mut from = 0;
    loop {
        let (status, body) = server.get(&format!("/v1/events?tag=account&from={from}&limit=1000"));
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        let page = body["events"].as_array().unwrap();
        if page.is_empty() {
            break;
        }
        for e in page {
            let pid = e["persistence_id"].as_str().unwrap().to_string();
            r.tagged.push((pid, e["seq_nr"].as_u64().unwrap(), e["offset"].as_u64().unwrap()));
        }
        from = body["next_from"].as_u64().unwrap();
    }
    Ok(r)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The journal's files: the commit log (segments, COMMITTED) and the index.
fn journal_files(data: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n != "LOCK" && n != "lock") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("log"), &mut out);
    walk(&data.join("index"), &mut out);
    out.sort();
    out
}

/// Flip one byte: at a random offset of the written part of the file (segments
/// are preallocated, mostly zeros), or, one time in eight, anywhere in it.
fn flip(rng: &mut Rng, file: &Path) -> String {
    let mut bytes = std::fs::read(file).unwrap();
    if bytes.is_empty() {
        return format!("{} is empty", file.display());
    }
    let used = bytes.iter().rposition(|b| *b != 0).map_or(bytes.len(), |p| p + 1) as u64;
    let range = if rng.below(8) == 0 { bytes.len() as u64 } else { used };
    let at = rng.below(range) as usize;
    let mask = (1 + rng.below(255)) as u8;
    bytes[at] ^= mask;
    std::fs::write(file, &bytes).unwrap();
    format!("{} byte {at} ^ {mask:#04x}", file.display())
}

#[derive(Debug, Default)]
struct Tally {
    refused: u32,
    detected: u32,
    no_effect: u32,
}

fn is_corruption_error(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("corrupt") || t.contains("damaged") || t.contains("checksum")
}

/// One trial on a copy of the data directory; panics on a silent loss.
fn trial(rng: &mut Rng, pristine: &Path, comps: &Path, reference: &Reference, tally: &mut Tally, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(pristine, &data);
    let files = journal_files(&data);
    let file = &files[rng.below(files.len() as u64) as usize];
    let what = flip(rng, file);
    let stderr = dir.path().join("stderr");
    let server = match Server::try_start(&data, comps, EXTRA, Some(&stderr)) {
        Ok(server) => server,
        Err(why) => {
            assert!(is_corruption_error(&why), "trial {n} ({what}): refused without saying why: {why}");
            tally.refused += 1;
            return;
        }
    };
    match read_all(&server) {
        Ok(read) => {
            assert_eq!(read, *reference, "trial {n} ({what}): served data differs from what was acknowledged");
            // A new write continues after the acknowledged sequence numbers and offsets.
            let id = account(n % ACCOUNTS);
            let (status, body) = server.send("bank-account", &id, r#"{"type":"Deposit","amount":1}"#);
            assert_eq!(status, 200, "trial {n} ({what}): {body}");
            let (_, events) = server.get(&format!("/v1/entities/bank-account/{id}/events?from=1&limit=10000"));
            let last = events["events"].as_array().unwrap().last().unwrap().clone();
            let before = reference.events[&format!("bank-account/{id}")].len() as u64;
            assert_eq!(last["seq_nr"].as_u64().unwrap(), before + 1, "trial {n} ({what})");
            assert!(last["offset"].as_u64().unwrap() > reference.max_offset, "trial {n} ({what}): offset reused");
            tally.no_effect += 1;
        }
        Err(why) => {
            assert!(is_corruption_error(&why), "trial {n} ({what}): a read failed without naming corruption: {why}");
            tally.detected += 1;
        }
    }
    server.kill();
}

#[test]
fn flipped_bytes_are_refused_or_detected_and_never_lose_acknowledged_data() {
    let trials: usize = std::env::var("MNEME_CORRUPTION_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("MNEME_CORRUPTION_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    println!("MNEME_CORRUPTION_SEED={seed}");
    let comps = components_dir(&[example("bank-account"), test_component("faulty")]);
    let pristine = tempfile::tempdir().unwrap();
    let reference = build(pristine.path(), comps.path());
    let segments = std::fs::read_dir(pristine.path().join("log")).unwrap().filter_map(Result::ok);
    let segments = segments.filter(|e| e.path().extension().is_some_and(|x| x == "log")).count();
    assert!(segments >= 2, "the data set should span segments ({segments})");
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for n in 0..trials {
        trial(&mut rng, pristine.path(), comps.path(), &reference, &mut tally, n);
    }
    println!(
        "{trials} trials: {} refused, {} detected, {} no effect, 0 silent losses",
        tally.refused, tally.detected, tally.no_effect
    );
}

/// The log's own files, to append a frame the way a killed process leaves it.
fn segments(data: &Path) -> Vec<PathBuf> {
    let mut s: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    s.sort();
    s
}

#[test]
fn a_torn_last_frame_is_cut_and_logged_and_nothing_acknowledged_is_lost() {
    let comps = components_dir(&[example("bank-account"), test_component("faulty")]);
    let pristine = tempfile::tempdir().unwrap();
    let data = pristine.path();
    let server = Server::start(data, comps.path(), EXTRA);
    for i in 0..3 {
        assert_eq!(server.send("bank-account", &account(i), r#"{"type":"CreateAccount"}"#).0, 200);
    }
    let reference = read_all(&server).unwrap();
    assert!(server.terminate().success());
    // The frame a killed process was writing: appended with the log's own code,
    // while COMMITTED keeps saying where the acknowledged frames end.
    let committed = std::fs::read(data.join("log/COMMITTED")).unwrap();
    let last = segments(data).pop().unwrap();
    let before = std::fs::read(&last).unwrap();
    {
        let io: std::sync::Arc<dyn mneme::journal::log::LogIo> = std::sync::Arc::new(mneme::journal::log::StdIo);
        let opts = mneme::journal::log::LogOptions { segment_bytes: 1 << 20 };
        let (mut log, _) = mneme::journal::log::CommitLog::open(&data.join("log"), opts, io).unwrap();
        log.append(reference.max_offset + 1, b"a batch that was never acknowledged").unwrap();
    }
    std::fs::write(data.join("log/COMMITTED"), &committed).unwrap();
    let after = std::fs::read(&last).unwrap();
    let start = before.iter().zip(&after).position(|(a, b)| a != b).expect("the frame changed the segment");
    let end = after.iter().rposition(|b| *b != 0).unwrap() + 1;
    let step = if std::env::var("MNEME_TORN_EVERY_BYTE").is_ok() { 1 } else { 7 };
    let mut cuts: Vec<usize> = (start..end).step_by(step).collect();
    cuts.push(end - 1);
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("data");
        copy_dir(data, &copy);
        let seg = copy.join("log").join(last.file_name().unwrap());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[cut..].iter_mut().for_each(|b| *b = 0);
        std::fs::write(&seg, &bytes).unwrap();
        let stderr = dir.path().join("stderr");
        let server = Server::try_start(&copy, comps.path(), &[EXTRA, &["--shards", "1"]].concat(), Some(&stderr))
            .unwrap_or_else(|e| panic!("cut at byte {cut}: {e}"));
        assert_eq!(read_all(&server).unwrap(), reference, "cut at byte {cut}");
        server.kill();
        let log = std::fs::read_to_string(&stderr).unwrap();
        if cut > start {
            assert!(log.contains("cut a torn write"), "cut at byte {cut}: not logged:\n{log}");
        }
    }
}

/// A damaged index file on which fjall aborts the process (a panic in its manifest
/// decode while it holds a lock, then another in its destructor: seen as trial 27
/// of one CI run): that start is refused naming the damaged index, and the next
/// start rebuilds the index from the log and serves everything acknowledged.
#[test]
fn an_index_whose_store_aborts_is_refused_once_then_rebuilt() {
    let comps = components_dir(&[example("bank-account"), test_component("faulty")]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let reference = build(&data, comps.path());
    // The manifest of the index's keyspace: byte 8 is its level count (7).
    let manifest = data.join("index/keyspaces/1/v0");
    let mut bytes = std::fs::read(&manifest).unwrap();
    assert_eq!(bytes[8], 7, "the manifest layout this test damages");
    bytes[8] ^= 0x89;
    std::fs::write(&manifest, &bytes).unwrap();
    let stderr = dir.path().join("stderr");
    let why = Server::try_start(&data, comps.path(), EXTRA, Some(&stderr)).err().expect("the damaged start is refused");
    assert!(why.contains("the index") && why.contains("is damaged"), "{why}");
    let server = Server::start(&data, comps.path(), EXTRA);
    assert_eq!(read_all(&server).unwrap(), reference, "served data differs from what was acknowledged");
    server.kill();
}
