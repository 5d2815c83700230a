//! Failing writes, short writes, failing `fdatasync` and `ENOSPC` at segment
//! creation, injected by `FaultyIo` while appending: the failing append returns
//! `Err`, every `Ok` frame is readable, appends succeed once the fault clears,
//! and after a restart exactly the `Ok` frames are there.

use super::*;

fn eio(e: &LogError, op: &str) {
    match e {
        LogError::Io { op: o, source, .. } => {
            assert_eq!((*o, source.raw_os_error()), (op, Some(libc::EIO)), "{e}");
        }
        other => panic!("expected an Io error from {op}, got {other}"),
    }
}

#[test]
fn a_failed_write_leaves_nothing_and_the_next_append_works() {
    let mut run = Run::new(1 << 16);
    run.io.fail_writes(When::Nth(3));
    for i in 0..10 {
        let r = run.append(50);
        if i == 2 {
            eio(&r.unwrap_err(), "write");
        } else {
            r.unwrap();
        }
    }
    assert_eq!((run.ok.len(), run.io.injected()), (9, 1));
    assert_eq!(run.log().end().segment, 1, "a failed write does not give up the segment");
    run.check();
    let report = run.restart();
    assert_eq!(report.torn_tail, None);
}

#[test]
fn a_short_write_is_cut_back_and_the_next_append_works() {
    let mut run = Run::new(1 << 16);
    for keep in [1, 10, 31, 32, 40] {
        run.append(30).unwrap();
        run.io.short_writes(When::Nth(1), keep);
        let before = run.log().end();
        eio(&run.append(60).unwrap_err(), "write");
        assert_eq!(run.log().end(), before, "the visible end is unchanged");
        // The cut-back is on disk: nothing of the failed frame is left.
        assert!(!run.on_disk(&run.failed.last().unwrap()[..8]));
        run.append(20).unwrap();
    }
    run.check();
    run.restart();
    assert_eq!(run.ok.len(), 10);
}

#[test]
fn a_failed_fdatasync_voids_the_frame_even_when_it_is_on_disk() {
    let mut run = Run::new(1 << 16);
    run.append(40).unwrap();
    let before = run.append(40).unwrap();
    run.io.fail_syncs(When::Nth(1));
    eio(&run.append(77).unwrap_err(), "fdatasync");
    let failed = run.failed.last().unwrap().clone();
    // The frame reached the disk (the injected failure comes after a real sync).
    assert!(run.on_disk(&failed));
    // The log moved on to a new segment whose prev_end excludes it.
    assert_eq!(run.log().end(), Position { segment: 2, pos: 64 });
    for _ in 0..5 {
        run.append(40).unwrap();
    }
    assert_eq!(run.log().end().segment, 2);
    run.check();
    // Whole on disk, header included (the log zeroed the header in the page
    // cache; say that never reached the disk): still void after a restart.
    let mut frame = Vec::new();
    crate::journal::log::format::encode_frame(&mut frame, 3, 2, &failed);
    patch(&segment_file(run.dir.path(), 1), before.end.pos, &frame);
    let report = run.restart();
    assert_eq!(report.torn_tail, None);
    assert!(run.on_disk(&frame), "the void frame is still there, and ignored");
}

#[test]
fn appends_fail_while_every_fdatasync_fails_and_succeed_once_it_clears() {
    let mut run = Run::new(4096);
    run.append(10).unwrap();
    run.io.fail_syncs(When::Every);
    for _ in 0..4 {
        eio(&run.append(10).unwrap_err(), "fdatasync");
    }
    run.check();
    run.io.clear();
    for _ in 0..3 {
        run.append(10).unwrap();
    }
    run.check();
    run.restart();
    assert_eq!(run.ok.len(), 4);
}

#[test]
fn no_space_at_segment_creation_fails_only_that_append() {
    let mut run = Run::new(256);
    // 72-byte frames: the fourth does not fit a 256-byte segment.
    for _ in 0..2 {
        while run.log().end().pos + 72 <= 256 {
            run.append(40).unwrap();
        }
        let end = run.log().end();
        run.io.no_space(When::Nth(1));
        let e = run.append(40).unwrap_err();
        match &e {
            LogError::Io { op: "create", source, file } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
                assert!(!file.exists(), "the partial segment was removed");
                assert!(e.to_string().contains("No space left on device"), "{e}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(run.log().end(), end);
        run.append(40).unwrap();
        assert_eq!(run.log().end().segment, end.segment + 1);
    }
    run.check();
    let report = run.restart();
    assert_eq!((report.segments, report.torn_tail), (3, None));
}

#[test]
fn a_failed_fdatasync_without_space_to_roll_fails_appends_until_a_roll_succeeds() {
    let mut run = Run::new(1 << 16);
    run.append(40).unwrap();
    run.io.fail_syncs(When::Nth(1));
    run.io.no_space(When::Every);
    eio(&run.append(40).unwrap_err(), "fdatasync");
    for _ in 0..3 {
        // Never acknowledged in the segment whose sync failed.
        match run.append(40).unwrap_err() {
            LogError::Io { op: "create", source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
            other => panic!("{other}"),
        }
        assert_eq!(run.log().end().segment, 1);
    }
    run.io.clear();
    run.append(40).unwrap();
    assert_eq!(run.log().end().segment, 2);
    run.check();
    run.restart();
    assert_eq!(run.ok.len(), 2);
}

#[test]
fn killed_after_a_failed_fdatasync_and_a_failed_roll_restarts_without_the_frame() {
    let mut run = Run::new(1 << 16);
    run.append(40).unwrap();
    run.append(40).unwrap();
    run.io.fail_syncs(When::Nth(1));
    run.io.no_space(When::Every);
    eio(&run.append(60).unwrap_err(), "fdatasync");
    // Killed now: the failed frame is in the last segment, after the committed
    // end, with its header zeroed; the restart cuts it as a torn tail.
    let report = run.restart();
    let torn = report.torn_tail.expect("the void frame is cut");
    assert_eq!((torn.file, torn.offset), (segment_file(run.dir.path(), 1), run.log().end().pos));
    assert!(!run.on_disk(run.failed.last().unwrap()));
    run.append(40).unwrap();
    run.restart();
}

#[test]
fn failed_writes_while_rolling_leave_no_segment_behind() {
    let mut run = Run::new(256);
    run.append(40).unwrap();
    run.append(40).unwrap();
    // The roll's header write fails (the 1st write), then the retry works.
    run.io.fail_writes(When::Nth(1));
    eio(&run.append(40).unwrap_err(), "write");
    assert!(!segment_file(run.dir.path(), 2).exists());
    run.append(40).unwrap();
    assert_eq!(run.log().end().segment, 2);
    // Every write fails: undoing the frame fails too, so the segment is given up.
    run.io.fail_writes(When::Every);
    eio(&run.append(40).unwrap_err(), "write");
    eio(&run.append(40).unwrap_err(), "write");
    run.io.clear();
    run.append(40).unwrap();
    run.check();
    run.restart();
    assert_eq!(run.ok.len(), 4);
}
