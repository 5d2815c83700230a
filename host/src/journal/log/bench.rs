//! A measurement for the project's benchmark (`mneme-bench`): durable appends
//! through the commit log next to the disk's raw limit, in the same run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::{CommitLog, LogOptions, StdIo};

/// Append `frames` frames of `frame_bytes` body bytes to a new commit log in
/// `dir/log` (each `append` one `pwrite` + `fdatasync`), then write the same
/// bodies to a plain file `dir/raw` (each one `write` + `fdatasync`). Returns the
/// seconds each took: `(log_secs, raw_secs)`. Segment creation at open is not
/// timed; rolls during the run are. The raw file grows with every write, so its
/// `fdatasync` also writes the new size, while the log's segments are
/// preallocated: the figure compares what each design costs, not two identical
/// syscall sequences.
pub fn bench_appends(dir: &Path, frames: usize, frame_bytes: usize) -> (f64, f64) {
    let body: Vec<u8> = (0..frame_bytes).map(|i| (i % 251) as u8 + 1).collect();

    let (mut log, _) =
        CommitLog::open(&dir.join("log"), LogOptions::default(), StdIo::new()).expect("open the commit log");
    let t = Instant::now();
    for i in 0..frames {
        log.append(i as u64, &body).expect("append");
    }
    let log_secs = t.elapsed().as_secs_f64();
    log.close().expect("close the commit log");

    let mut raw = OpenOptions::new().create(true).append(true).open(dir.join("raw")).expect("create the raw file");
    let t = Instant::now();
    for _ in 0..frames {
        raw.write_all(&body).expect("write");
        raw.sync_data().expect("fdatasync");
    }
    let raw_secs = t.elapsed().as_secs_f64();
    (log_secs, raw_secs)
}
