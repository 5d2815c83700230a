//! Start-up of a large journal: opening a commit log of millions of events whose
//! index is current, and rebuilding the index from scratch (`mneme journal
//! reindex`), next to reading the log's bytes once in the same run.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use mneme::journal::{log_journal, DataLock, Journal, LogJournal, NewEvent, WriteBatch};

use crate::report::Report;

/// `n` events over 10k accounts, in batches of 1000 (about 110 bytes per record).
fn fill(data: &Path, n: u64) {
    let journal = LogJournal::open(data, DataLock::acquire(data).unwrap()).unwrap();
    let accounts = 10_000u64;
    let mut seq = vec![0u64; accounts as usize];
    let mut written = 0;
    while written < n {
        let mut batch = WriteBatch::default();
        for i in 0..1000.min(n - written) {
            let a = ((written + i) % accounts) as usize;
            seq[a] += 1;
            batch.events.push(NewEvent {
                persistence_id: format!("bank-account|acc{a}"),
                seq_nr: seq[a],
                timestamp_ms: 1_700_000_000_000,
                writer_id: "bench".into(),
                manifest: "Deposited".into(),
                tags: vec!["account".into()],
                payload: br#"{"type":"Deposited","amount":1}"#.to_vec(),
            });
        }
        written += batch.events.len() as u64;
        journal.write(&batch).unwrap();
    }
}

/// Seconds to read every segment file once (the bytes a full scan must touch).
fn read_log_bytes(data: &Path) -> (f64, u64) {
    let t = Instant::now();
    let mut bytes = 0;
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(data.join("log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "log") {
            let mut f = std::fs::File::open(path).unwrap();
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    (t.elapsed().as_secs_f64(), bytes)
}

pub fn run(report: &mut Report, quick: bool) {
    let n: u64 = if quick { 1_000_000 } else { 10_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let t = Instant::now();
    fill(data, n);
    let fill_rate = n as f64 / t.elapsed().as_secs_f64();
    let (read_secs, bytes) = read_log_bytes(data);
    let t = Instant::now();
    let journal = LogJournal::open(data, DataLock::acquire(data).unwrap()).unwrap();
    let open_secs = t.elapsed().as_secs_f64();
    assert_eq!(journal.highest_seq_nr("bank-account|acc0").unwrap(), n.div_ceil(10_000));
    drop(journal);
    let t = Instant::now();
    std::fs::remove_dir_all(log_journal::index_dir(data)).unwrap();
    let frames = log_journal::reindex(data).unwrap();
    let reindex_secs = t.elapsed().as_secs_f64();
    assert!(frames > 0);
    let label = format!("{}M events", n / 1_000_000);
    report.figure(&format!("journal writes while filling ({label}, 1000/batch)"), fill_rate, "events/s", None);
    report.figure(
        &format!("start-up, {label} in the log, index current"),
        open_secs,
        "s",
        Some((&format!("reading the log's {} MiB once", bytes >> 20), read_secs)),
    );
    report.figure(
        &format!("reindex from the log ({label})"),
        n as f64 / reindex_secs,
        "events/s",
        Some(("journal writes", fill_rate)),
    );
}
