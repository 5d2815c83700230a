//! Storage figures: the raw limit of the disk (append + fdatasync on a plain file)
//! next to each journal backend (the commit log with its index, sled) and the
//! commit log alone doing the same amount of durable work.

use std::io::Write;
use std::time::Instant;

use mneme::journal::{DataLock, Journal, LogJournal, NewEvent, SledJournal, WriteBatch};

use crate::report::Report;

const RECORD: usize = 128;

/// Append `batches` x `per_batch` records of 128 bytes, one fdatasync per batch.
fn raw_appends(dir: &std::path::Path, batches: usize, per_batch: usize) -> f64 {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("raw.log")).unwrap();
    let record = vec![7u8; RECORD];
    let mut buf = Vec::with_capacity(RECORD * per_batch);
    let t = Instant::now();
    for _ in 0..batches {
        buf.clear();
        for _ in 0..per_batch {
            buf.extend_from_slice(&record);
        }
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    (batches * per_batch) as f64 / t.elapsed().as_secs_f64()
}

/// Write `batches` batches of `per_batch` events (one tag each) and return events/s
/// of the `write` calls alone: building a batch is the caller's work (the shards'),
/// not the journal's, and the raw baseline has no such step either.
fn journal_appends(journal: &dyn Journal, batches: usize, per_batch: usize) -> f64 {
    journal_appends_after(journal, batches, &mut vec![0; per_batch])
}

/// [`journal_appends`] of `seq.len()` events per batch, entity `i`'s events
/// numbered on from `seq[i]`.
fn journal_appends_after(journal: &dyn Journal, batches: usize, seq: &mut [u64]) -> f64 {
    let per_batch = seq.len();
    let payload = vec![7u8; RECORD - 28];
    let mut writing = std::time::Duration::ZERO;
    for _ in 0..batches {
        let mut batch = WriteBatch::default();
        for (i, s) in seq.iter_mut().enumerate() {
            *s += 1;
            batch.events.push(NewEvent {
                persistence_id: format!("bench-{per_batch}|{i}"),
                seq_nr: *s,
                timestamp_ms: 0,
                writer_id: "bench".into(),
                manifest: "Deposited".into(),
                tags: vec!["account".into()],
                payload: payload.clone(),
            });
        }
        let t = Instant::now();
        journal.write(&batch).unwrap();
        writing += t.elapsed();
    }
    // Until the last write is readable (the commit log's index is built beside the
    // writes: its work is counted to the end).
    let t = Instant::now();
    assert_eq!(journal.highest_seq_nr(&format!("bench-{per_batch}|0")).unwrap(), seq[0]);
    writing += t.elapsed();
    (batches * per_batch) as f64 / writing.as_secs_f64()
}

pub fn run(report: &mut Report, quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let single = if quick { 200 } else { 1000 };
    let batches = if quick { 50 } else { 200 };
    let raw_single = raw_appends(dir.path(), single, 1);
    let raw_batched = raw_appends(dir.path(), batches, 512);
    let sled = SledJournal::open(&dir.path().join("sled")).unwrap();
    let sled_single = journal_appends(&sled, single, 1);
    let sled_batched = journal_appends(&sled, batches, 512);
    report.figure("raw file: append + fdatasync, 1 record/sync", raw_single, "records/s", None);
    report.figure("raw file: append + fdatasync, 512 records/sync", raw_batched, "records/s", None);
    report.figure(
        "sled journal: 1 event/write (flush + fdatasync)",
        sled_single,
        "events/s",
        Some(("raw 1/sync", raw_single)),
    );
    report.figure(
        "sled journal: 512 events/write (flush + fdatasync)",
        sled_batched,
        "events/s",
        Some(("raw 512/sync", raw_batched)),
    );
    drop(sled);
    let data = dir.path().join("log-journal");
    let log = LogJournal::open(&data, DataLock::acquire(&data).unwrap()).unwrap();
    let log_single = journal_appends(&log, single, 1);
    let log_batched = journal_appends(&log, batches, 512);
    report.figure(
        "log journal: 1 event/write (append + fdatasync + index)",
        log_single,
        "events/s",
        Some(("raw 1/sync", raw_single)),
    );
    report.figure(
        "log journal: 512 events/write (append + fdatasync + index)",
        log_batched,
        "events/s",
        Some(("raw 512/sync", raw_batched)),
    );
    drop(log);
    // The same two, alternated in rounds, so that each ratio compares stretches of
    // time next to each other on a machine whose disk and CPU are shared.
    let data = dir.path().join("log-journal-rounds");
    let log = LogJournal::open(&data, DataLock::acquire(&data).unwrap()).unwrap();
    let rounds = if quick { 2 } else { 5 };
    let mut seq = vec![0; 512];
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|_| {
            journal_appends_after(&log, batches / rounds, &mut seq) / raw_appends(dir.path(), batches / rounds, 512)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    report.figure(
        &format!(
            "log journal: 512 events/write against raw 512/sync, {rounds} alternated rounds: median ratio (all {})",
            ratios.iter().map(|r| format!("{r:.2}x")).collect::<Vec<_>>().join(" ")
        ),
        ratios[rounds / 2],
        "x raw",
        None,
    );
    // The commit log alone, frames of 512 records' bytes, against the same bytes
    // appended and fdatasync'ed to a plain file in the same call.
    let frames = batches;
    let segment_bytes = mneme::journal::log::LogOptions::default().segment_bytes;
    let (first_secs, ahead_secs, raw_secs) =
        mneme::journal::log::bench_appends(&dir.path().join("log-alone"), frames, 512 * RECORD, segment_bytes);
    report.figure(
        "commit log alone: 64 KiB frames (pwrite + fdatasync), in a segment written ahead",
        frames as f64 / ahead_secs,
        "frames/s",
        Some(("raw same bytes", frames as f64 / raw_secs)),
    );
    report.figure(
        "  the same in the first segment (fallocate)",
        frames as f64 / first_secs,
        "frames/s",
        Some(("written ahead", frames as f64 / ahead_secs)),
    );
}
