//! Round trips, reopen, rolls, oversized frames, reads during appends, errors.

use std::sync::mpsc;

use super::*;
use crate::journal::log::format::{frame_len, SEGMENT_HEADER_LEN};
use crate::journal::log::writer::PREPARED_FILE;

#[test]
fn appended_frames_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, report) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!((report.segments, report.frames, report.end), (1, 0, Position::START));
    assert_eq!((report.torn_tail.clone(), report.committed), (None, None));
    let reader = log.reader();
    let mut expect = Vec::new();
    let mut end = log.end();
    for i in 0..40u64 {
        let b = body(i, (i as usize * 13) % 200);
        let a = log.append(1000 + i, &b).unwrap();
        assert_eq!((a.segment, a.frame_pos, a.body_pos, a.seq), (1, end.pos, end.pos + 32, i + 1));
        assert_eq!(a.end, Position { segment: 1, pos: end.pos + frame_len(b.len()) });
        assert_eq!(log.end(), a.end);
        assert_eq!(reader.end(), a.end);
        assert_eq!(*reader.read(a.segment, a.body_pos, b.len() as u32).unwrap(), b[..]);
        end = a.end;
        expect.push((1000 + i, b));
    }
    assert_eq!(frames(&reader), expect);
    let all: Vec<Frame> = reader.frames_from(Position::START).map(Result::unwrap).collect();
    assert_eq!(all.iter().map(|f| f.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].end == w[1].start));
    // From the middle, and from the end.
    let tail: Vec<_> = reader.frames_from(all[30].start).map(|f| f.unwrap().seq).collect();
    assert_eq!(tail, (31..=40).collect::<Vec<_>>());
    assert_eq!(reader.frames_from(end).count(), 0);
    log.close().unwrap();

    let (mut log, report) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!((report.segments, report.frames, report.end, report.committed), (1, 40, end, Some(end)));
    assert_eq!(report.torn_tail, None);
    assert_eq!(frames(&log.reader()), expect);
    let a = log.append(7, b"after reopen").unwrap();
    assert_eq!((a.seq, a.frame_pos), (41, end.pos));
    expect.push((7, b"after reopen".to_vec()));
    drop(log); // no close: as if the process were killed
    let (log, report) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!((report.frames, report.torn_tail), (41, None));
    assert_eq!(frames(&log.reader()), expect);
}

#[test]
fn small_segments_roll_and_chain_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 256).unwrap();
    let mut expect = Vec::new();
    let mut appended = Vec::new();
    for i in 0..50u64 {
        let b = body(i, 40 + (i as usize % 3) * 20);
        let a = log.append(i, &b).unwrap();
        assert!(a.end.pos <= 256, "a frame that fits a segment stays inside it");
        appended.push(a);
        expect.push((i, b));
    }
    let segments = appended.last().unwrap().segment;
    assert!(segments >= 10, "{segments} segments");
    assert!(appended
        .windows(2)
        .all(|w| w[1].segment == w[0].segment
            || (w[1].segment == w[0].segment + 1 && w[1].frame_pos == SEGMENT_HEADER_LEN)));
    for id in 1..=segments {
        assert_eq!(std::fs::metadata(segment_file(dir.path(), id)).unwrap().len(), 256, "segments are preallocated");
    }
    let reader = log.reader();
    assert_eq!(frames(&reader), expect);
    // Reading from the start of a later segment and from the end of an earlier one.
    let from = appended.iter().position(|a| a.segment == 3).unwrap();
    let seqs: Vec<u64> = reader.frames_from(Position { segment: 3, pos: 0 }).map(|f| f.unwrap().seq).collect();
    assert_eq!(seqs, (from as u64 + 1..=50).collect::<Vec<_>>());
    let seqs: Vec<u64> = reader.frames_from(appended[from - 1].end).map(|f| f.unwrap().seq).collect();
    assert_eq!(seqs.first(), Some(&(from as u64 + 1)));
    log.close().unwrap();
    let (log, report) = open(dir.path(), 256).unwrap();
    assert_eq!((report.segments as u64, report.frames), (segments, 50));
    assert_eq!(frames(&log.reader()), expect);
}

/// Append frame `i` (500 bytes) and keep it in `expect`.
fn append_kept(log: &mut CommitLog, expect: &mut Vec<(u64, Vec<u8>)>, i: u64) -> Appended {
    let b = body(i, 500);
    let a = log.append(i, &b).unwrap();
    expect.push((i, b));
    a
}

#[test]
fn the_next_segment_is_prepared_ahead_and_taken_by_the_roll() {
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join(PREPARED_FILE);
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let mut expect = Vec::new();
    // Half of segment 1 written: its successor is being prepared.
    let mut i = 0;
    while append_kept(&mut log, &mut expect, i).end.pos <= 2048 {
        i += 1;
    }
    assert!(log.wait_prepared(), "a thread prepares the next segment");
    assert_eq!(std::fs::read(&prepared).unwrap(), vec![0u8; 4096], "zeros, the segment's length");
    // The roll takes it: linked as segment 2, the prepared name gone.
    loop {
        i += 1;
        if append_kept(&mut log, &mut expect, i).segment == 2 {
            break;
        }
    }
    assert!(!prepared.exists(), "the prepared file became segment 2");
    let seg2 = std::fs::read(segment_file(dir.path(), 2)).unwrap();
    assert_eq!(seg2.len(), 4096);
    let end = log.end().pos as usize;
    assert!(seg2[end..].iter().all(|&b| b == 0), "zeros after the last frame");
    assert_eq!(frames(&log.reader()), expect);
    log.close().unwrap();
    let (log, report) = open(dir.path(), 4096).unwrap();
    assert_eq!((report.segments, report.torn_tail, report.removed_segment), (2, None, None));
    assert_eq!(frames(&log.reader()), expect);
}

#[test]
fn a_prepared_segment_waits_out_an_oversized_frame_for_the_next_roll() {
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join(PREPARED_FILE);
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let mut i = 0;
    while log.append(i, &body(i, 500)).unwrap().end.pos <= 2048 {
        i += 1;
    }
    assert!(log.wait_prepared());
    // Segment 2 is sized for the big frame: the prepared file does not fit it.
    let big = log.append(100, &body(100, 10_000)).unwrap();
    assert_eq!(big.segment, 2);
    assert!(prepared.exists(), "kept");
    // Segment 3 is of the usual size: the roll takes the prepared file.
    assert_eq!(log.append(101, &body(101, 500)).unwrap().segment, 3);
    assert!(!prepared.exists(), "the prepared file became segment 3");
    assert_eq!(std::fs::metadata(segment_file(dir.path(), 3)).unwrap().len(), 4096);
}

#[test]
fn a_roll_without_its_prepared_file_creates_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let (mut expect, mut removed) = (Vec::new(), false);
    for i in 0.. {
        let a = append_kept(&mut log, &mut expect, i);
        if log.wait_prepared() {
            // Ready, then gone before the roll takes it (removed by hand).
            std::fs::remove_file(dir.path().join(PREPARED_FILE)).unwrap();
            removed = true;
        }
        if a.segment == 2 {
            break;
        }
    }
    assert!(removed, "the roll found its prepared file gone");
    assert_eq!(std::fs::metadata(segment_file(dir.path(), 2)).unwrap().len(), 4096);
    drop(log);
    let (log, report) = open(dir.path(), 4096).unwrap();
    assert_eq!((report.segments, report.removed_segment), (2, None));
    assert_eq!(frames(&log.reader()), expect);
}

#[test]
fn a_prepared_name_left_on_a_segment_is_removed_never_truncated() {
    // Killed between linking the prepared file as a segment and removing its
    // prepared name: both names are one file, which holds acknowledged frames.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let mut expect = Vec::new();
    for i in 0..3 {
        append_kept(&mut log, &mut expect, i);
    }
    drop(log);
    let prepared = dir.path().join(PREPARED_FILE);
    std::fs::hard_link(segment_file(dir.path(), 1), &prepared).unwrap();
    let (mut log, report) = open(dir.path(), 4096).unwrap();
    assert_eq!(report.frames, 3, "recovery reads segments only");
    for i in 3..6 {
        append_kept(&mut log, &mut expect, i);
    }
    assert!(log.wait_prepared());
    assert_eq!(std::fs::read(&prepared).unwrap(), vec![0u8; 4096], "a new file under the prepared name");
    drop(log);
    let (log, _) = open(dir.path(), 4096).unwrap();
    assert_eq!(frames(&log.reader()), expect);
}

#[test]
fn oversized_frame_gets_a_segment_sized_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 256).unwrap();
    log.append(1, &body(1, 50)).unwrap();
    let big = body(2, 3000);
    let a = log.append(2, &big).unwrap();
    assert_eq!((a.segment, a.frame_pos), (2, SEGMENT_HEADER_LEN));
    let len = std::fs::metadata(segment_file(dir.path(), 2)).unwrap().len();
    assert!(len >= SEGMENT_HEADER_LEN + frame_len(3000), "{len}");
    let c = log.append(3, &body(3, 10)).unwrap();
    assert_eq!(c.segment, 3, "the oversized segment is full");
    assert_eq!(*log.reader().read(2, a.body_pos, 3000).unwrap(), big[..]);
    drop(log);
    let (log, report) = open(dir.path(), 256).unwrap();
    assert_eq!((report.segments, report.frames), (3, 3));
    assert_eq!(frames(&log.reader())[1], (2, big));
}

#[test]
fn readers_see_every_frame_while_the_writer_appends() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 1024).unwrap();
    let reader = log.reader();
    let (tx, rx) = mpsc::channel::<Appended>();
    // One reader reads each frame's body by position as soon as it is acknowledged.
    let by_position = {
        let reader = reader.clone();
        std::thread::spawn(move || {
            for (i, a) in rx.into_iter().enumerate() {
                let b = body(i as u64, (i * 7) % 300);
                assert_eq!(*reader.read(a.segment, a.body_pos, b.len() as u32).unwrap(), b[..], "frame {i}");
            }
        })
    };
    // Another follows the log with `frames_from`, resuming where it stopped.
    let follower = std::thread::spawn(move || {
        let mut at = Position::START;
        let mut seen = 0u64;
        while seen < N {
            for f in reader.frames_from(at) {
                let f = f.unwrap();
                assert_eq!(f.seq, seen + 1);
                assert_eq!(f.body, body(seen, (seen as usize * 7) % 300));
                at = f.end;
                seen += 1;
            }
            std::thread::yield_now();
        }
        seen
    });
    for i in 0..N {
        let a = log.append(i, &body(i, (i as usize * 7) % 300)).unwrap();
        tx.send(a).unwrap();
    }
    drop(tx);
    by_position.join().unwrap();
    assert_eq!(follower.join().unwrap(), N);
    assert!(log.end().segment > 100, "the readers crossed many rolls");
}

#[test]
fn reads_at_or_past_the_durable_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let a = log.append(1, b"abc").unwrap();
    let r = log.reader();
    assert_eq!(*r.read(1, a.body_pos, 3).unwrap(), *b"abc");
    assert!(matches!(r.read(1, a.body_pos, 100), Err(LogError::OutOfRange { .. })));
    assert!(matches!(r.read(1, a.end.pos, 1), Err(LogError::OutOfRange { .. })));
    assert!(matches!(r.read(2, 64, 1), Err(LogError::OutOfRange { .. })));
    assert!(matches!(r.read(0, 64, 1), Err(LogError::OutOfRange { .. })));
    let mut it = r.frames_from(Position { segment: 1, pos: a.end.pos + 8 });
    assert!(matches!(it.next(), Some(Err(LogError::OutOfRange { .. }))));
    assert!(it.next().is_none());
    // Not at a frame start: the frame check fails.
    let mut it = r.frames_from(Position { segment: 1, pos: a.frame_pos + 8 });
    assert!(matches!(it.next(), Some(Err(LogError::Corrupt { .. }))));
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096).unwrap();
    let err = open(dir.path(), 4096).err().unwrap();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked by another process"), "{err}");
    drop(log);
    open(dir.path(), 4096).unwrap();
}

#[test]
fn errors_tell_the_operator_what_and_where() {
    let corrupt = LogError::corrupt("/data/log/00000000000000000003.log", 4160, "frame checksum mismatch");
    let text = corrupt.to_string();
    for part in [
        "/data/log/00000000000000000003.log",
        "byte 4160",
        "frame checksum mismatch",
        "backup",
        "mneme journal verify DATA",
    ] {
        assert!(text.contains(part), "{text}");
    }
    assert!(!text.contains("another process"), "{text}");
    let io =
        LogError::io("create", "/data/log/00000000000000000004.log", std::io::Error::from_raw_os_error(libc::ENOSPC));
    let text = io.to_string();
    assert!(
        text.contains("No space left on device")
            && text.contains("00000000000000000004.log")
            && text.contains("create"),
        "{text}"
    );
    assert!(LogError::TooLarge { len: usize::MAX }.to_string().contains("larger than the maximum"));
}

#[test]
fn bench_appends_measures_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (first_secs, ahead_secs, raw_secs) = bench_appends(dir.path(), 5, 100, 4096);
    assert!(first_secs > 0.0 && ahead_secs > 0.0 && raw_secs > 0.0);
    let (log, report) = open(&dir.path().join("log"), 4096).unwrap();
    assert_eq!(report.segments, 2, "the second timed frames went to the second segment, prepared ahead");
    assert!(!dir.path().join("log").join(PREPARED_FILE).exists(), "the roll took the prepared segment");
    let all = frames(&log.reader());
    assert!(all.len() > 10 + 3000 / 200, "{} frames: the first segment filled untimed", all.len());
    assert!(all.iter().enumerate().all(|(i, (offset, _))| *offset == i as u64));
    assert_eq!(std::fs::metadata(dir.path().join("raw")).unwrap().len(), 500);
}

#[test]
fn the_writer_is_send_and_readers_are_shared_between_threads() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync + Clone>() {}
    send::<CommitLog>();
    send::<Frames>();
    shared::<LogReader>();
}
