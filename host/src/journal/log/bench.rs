//! A measurement for the project's benchmark (`mneme-bench`): durable appends
//! through the commit log next to the disk's raw limit, in the same run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::{CommitLog, LogOptions, StdIo};

/// Append `frames` frames of `frame_bytes` body bytes to a new commit log (of
/// `segment_bytes` segments) in `dir/log`, twice: in its first segment, made
/// with `fallocate` at open, and in its second, written ahead as every segment
/// after a server's first is (the rest of the first is filled untimed, and the
/// roll waits for the preparation). Then write the same bodies to a plain file
/// `dir/raw` (each one `write` + `fdatasync`). Each `append` is one `pwrite` +
/// `fdatasync`. Returns the seconds each took: `(first_secs, ahead_secs,
/// raw_secs)`. The raw file grows with every write, so its `fdatasync` also
/// writes the new size, while the log's segments are preallocated: the figure
/// compares what each design costs, not two identical syscall sequences.
pub fn bench_appends(dir: &Path, frames: usize, frame_bytes: usize, segment_bytes: u64) -> (f64, f64, f64) {
    let body: Vec<u8> = (0..frame_bytes).map(|i| (i % 251) as u8 + 1).collect();

    let (mut log, _) =
        CommitLog::open(&dir.join("log"), LogOptions { segment_bytes }, StdIo::new()).expect("open the commit log");
    let mut offset = 0u64;
    let timed = |log: &mut CommitLog, offset: &mut u64| {
        let t = Instant::now();
        for _ in 0..frames {
            log.append(*offset, &body).expect("append");
            *offset += 1;
        }
        t.elapsed().as_secs_f64()
    };
    let first_secs = timed(&mut log, &mut offset);
    assert_eq!(log.end().segment, 1, "the timed frames of the first segment fit in it");
    loop {
        let appended = log.append(offset, &body).expect("append");
        offset += 1;
        log.wait_prepared();
        if appended.segment > 1 {
            break;
        }
    }
    let ahead_secs = timed(&mut log, &mut offset);
    assert_eq!(log.end().segment, 2, "the timed frames of the second segment fit in it");
    log.close().expect("close the commit log");

    let mut raw = OpenOptions::new().create(true).append(true).open(dir.join("raw")).expect("create the raw file");
    let t = Instant::now();
    for _ in 0..frames {
        raw.write_all(&body).expect("write");
        raw.sync_data().expect("fdatasync");
    }
    let raw_secs = t.elapsed().as_secs_f64();
    (first_secs, ahead_secs, raw_secs)
}
