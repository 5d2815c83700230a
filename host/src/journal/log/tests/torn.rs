//! A torn last write, cut at every byte; and the damage that is corruption
//! instead (never cut).

use super::*;
use crate::journal::log::format::SEGMENT_HEADER_LEN;

#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The file ends after the kept bytes.
    Truncate,
    /// The bytes after the kept ones are zeros.
    Zero,
}

const COMMITTED: &str = "COMMITTED";

/// Append frames 1..N; keep `COMMITTED` as it was after frame N-1 and as it is
/// after frame N. Frame N starts a new segment if `new_segment`.
struct TornSetup {
    dir: tempfile::TempDir,
    segment_bytes: u64,
    before: Vec<(u64, Vec<u8>)>,
    last: Appended,
    last_body: Vec<u8>,
    committed_before: Vec<u8>,
    committed_after: Vec<u8>,
}

fn torn_setup(new_segment: bool) -> TornSetup {
    let dir = tempfile::tempdir().unwrap();
    // Three 72-byte frames fill 64 + 216 bytes; the fourth (96 bytes) fits 4096, not 304.
    let segment_bytes = if new_segment { 304 } else { 4096 };
    let (mut log, _) = open(dir.path(), segment_bytes).unwrap();
    let mut before = Vec::new();
    for i in 0..3 {
        let b = body(i, 40);
        log.append(i, &b).unwrap();
        before.push((i, b));
    }
    let committed_before = std::fs::read(dir.path().join(COMMITTED)).unwrap();
    let last_body = body(3, 61);
    let last = log.append(3, &last_body).unwrap();
    assert_eq!(last.segment, if new_segment { 2 } else { 1 });
    drop(log);
    let committed_after = std::fs::read(dir.path().join(COMMITTED)).unwrap();
    assert_ne!(committed_before, committed_after);
    TornSetup { dir, segment_bytes, before, last, last_body, committed_before, committed_after }
}

/// A copy of the setup's log with frame N cut after `keep` bytes and the given
/// `COMMITTED`.
fn torn_copy(s: &TornSetup, cut: Cut, keep: u64, committed: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let case = tempfile::tempdir().unwrap();
    copy_log(s.dir.path(), case.path());
    std::fs::write(case.path().join(COMMITTED), committed).unwrap();
    let seg = segment_file(case.path(), s.last.segment);
    let start = s.last.frame_pos;
    match cut {
        Cut::Truncate => truncate(&seg, start + keep),
        Cut::Zero => patch(&seg, start + keep, &vec![0u8; (32 + s.last_body.len()) - keep as usize]),
    }
    (case, seg)
}

fn torn_tail_is_cut_at_every_byte(new_segment: bool) {
    let s = torn_setup(new_segment);
    let frame_bytes = 32 + s.last_body.len() as u64;
    let mut cases = 0;
    for cut in [Cut::Truncate, Cut::Zero] {
        for keep in 1..frame_bytes {
            let (case, seg) = torn_copy(&s, cut, keep, &s.committed_before);
            let what = format!("{cut:?} after {keep} bytes of the last frame");
            let (mut log, report) = open(case.path(), s.segment_bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            let torn = report.torn_tail.clone().unwrap_or_else(|| panic!("{what}: no torn tail reported"));
            assert_eq!((torn.file, torn.offset), (seg.clone(), s.last.frame_pos), "{what}");
            assert!(torn.bytes >= 1 && torn.bytes <= keep, "{what}: {} bytes cut", torn.bytes);
            assert_eq!(report.frames, 3, "{what}");
            assert_eq!(report.end, Position { segment: s.last.segment, pos: s.last.frame_pos }, "{what}");
            assert_eq!(frames(&log.reader()), s.before, "{what}");
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), s.segment_bytes, "{what}: preallocation restored");
            // The cut is durable and clean: the log goes on from there.
            let a = log.append(9, b"next").unwrap();
            assert_eq!((a.seq, a.segment, a.frame_pos), (4, s.last.segment, s.last.frame_pos), "{what}");
            drop(log);
            let (log, report) = open(case.path(), s.segment_bytes).unwrap();
            assert_eq!((report.torn_tail, report.frames), (None, 4), "{what}");
            assert_eq!(frames(&log.reader())[3], (9, b"next".to_vec()), "{what}");
            cases += 1;
        }
    }
    assert_eq!(cases, 2 * (frame_bytes - 1));
}

fn committed_torn_tail_is_refused_at_every_byte(new_segment: bool) {
    let s = torn_setup(new_segment);
    let frame_bytes = 32 + s.last_body.len() as u64;
    for cut in [Cut::Truncate, Cut::Zero] {
        for keep in 0..frame_bytes {
            let (case, seg) = torn_copy(&s, cut, keep, &s.committed_after);
            let r = open(case.path(), s.segment_bytes);
            assert!(is_corrupt_in(&r, &seg), "{cut:?} after {keep} bytes: {:?}", r.as_ref().err());
            let text = r.err().unwrap().to_string();
            assert!(text.contains("acknowledged data missing"), "{text}");
            // Nothing was cut: the file is as the copy left it.
            let expect = match cut {
                Cut::Truncate => s.last.frame_pos + keep,
                Cut::Zero => s.segment_bytes,
            };
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), expect);
        }
    }
}

#[test]
fn torn_last_frame_is_cut_at_every_byte_when_not_committed() {
    torn_tail_is_cut_at_every_byte(false);
}

#[test]
fn torn_first_frame_of_a_new_segment_is_cut_at_every_byte_when_not_committed() {
    torn_tail_is_cut_at_every_byte(true);
}

#[test]
fn torn_last_frame_is_refused_at_every_byte_when_committed() {
    committed_torn_tail_is_refused_at_every_byte(false);
}

#[test]
fn torn_first_frame_of_a_new_segment_is_refused_at_every_byte_when_committed() {
    committed_torn_tail_is_refused_at_every_byte(true);
}

/// A log of 12 frames over several 256-byte segments, closed.
fn closed_log(dir: &Path) -> Vec<Appended> {
    let (mut log, _) = open(dir, 256).unwrap();
    let appended = (0..12).map(|i| log.append(i, &body(i, 40)).unwrap()).collect();
    log.close().unwrap();
    appended
}

#[test]
fn garbage_after_the_last_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let last = a.last().unwrap();
    let seg = segment_file(dir.path(), last.segment);
    patch(&seg, last.end.pos + 8, b"not a frame");
    let (log, report) = open(dir.path(), 256).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.file, torn.offset, torn.bytes), (seg, last.end.pos, 8 + 11));
    assert_eq!(frames(&log.reader()).len(), 12);
}

#[test]
fn a_valid_frame_after_a_damaged_one_is_corruption_even_without_committed() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    std::fs::remove_file(dir.path().join(COMMITTED)).unwrap();
    // The second to last frame of the last segment is damaged; the last is intact.
    let last = a.last().unwrap();
    let victim = a.iter().rev().nth(1).unwrap();
    assert_eq!(victim.segment, last.segment);
    let seg = segment_file(dir.path(), victim.segment);
    patch(&seg, victim.body_pos + 3, b"\0");
    match open(dir.path(), 256) {
        Err(LogError::Corrupt { file, offset, what }) => {
            assert_eq!((file, offset), (seg, victim.frame_pos));
            assert!(what.contains("a valid frame"), "{what}");
        }
        other => panic!("{:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn lost_committed_keeps_every_valid_frame() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path());
    for committed in [None, Some(&b"short"[..]), Some(&[0u8; 44][..])] {
        match committed {
            None => std::fs::remove_file(dir.path().join(COMMITTED)).unwrap(),
            Some(bytes) => std::fs::write(dir.path().join(COMMITTED), bytes).unwrap(),
        }
        let (log, report) = open(dir.path(), 256).unwrap();
        assert_eq!((report.committed, report.torn_tail, report.frames), (None, None, 12));
        assert_eq!(frames(&log.reader()).len(), 12);
    }
}

#[test]
fn torn_segment_creation_is_removed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let last = a.last().unwrap().segment;
    // A header half written (then zeros), a file created but never extended, a
    // file extended but without its header.
    for content in [[&b"MNEMELOG"[..], &[1, 0, 0, 0, 0, 0, 0, 0, 9]].concat(), Vec::new(), vec![0u8; 256]] {
        let case = tempfile::tempdir().unwrap();
        copy_log(dir.path(), case.path());
        let next = segment_file(case.path(), last + 1);
        std::fs::write(&next, &content).unwrap();
        let (mut log, report) = open(case.path(), 256).unwrap();
        let removed = report.removed_segment.unwrap();
        assert_eq!(removed.file, next);
        assert!(!next.exists());
        assert_eq!((report.segments as u64, report.frames, report.torn_tail), (last, 12, None));
        // The log rolls into that id again when it needs to.
        for i in 0..4 {
            log.append(100 + i, &body(i, 40)).unwrap();
        }
        assert!(next.exists());
        drop(log);
        let (log, report) = open(case.path(), 256).unwrap();
        assert_eq!((report.removed_segment, report.frames), (None, 16));
        assert_eq!(frames(&log.reader()).len(), 16);
    }
}

#[test]
fn damaged_header_of_the_last_segment_holding_frames_is_corruption_without_committed() {
    // Not a torn creation: frames were written to it, so its header was durable.
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    std::fs::remove_file(dir.path().join(COMMITTED)).unwrap();
    let seg = segment_file(dir.path(), a.last().unwrap().segment);
    patch(&seg, 0, b"X");
    let r = open(dir.path(), 256);
    assert!(is_corrupt_in(&r, &seg), "{:?}", r.err());
}

#[test]
fn damaged_header_of_a_segment_holding_frames_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let last = a.last().unwrap().segment;
    for id in [1, 2, last] {
        let case = tempfile::tempdir().unwrap();
        copy_log(dir.path(), case.path());
        let seg = segment_file(case.path(), id);
        patch(&seg, 20, b"\x7f");
        let r = open(case.path(), 256);
        assert!(is_corrupt_in(&r, &seg), "segment {id}: {:?}", r.err());
    }
}

#[test]
fn missing_segments_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let last = a.last().unwrap().segment;
    assert!(last >= 3);
    // In the middle; at the end (COMMITTED names it); all of them (COMMITTED
    // names the last).
    for (gone, named) in [(vec![2], 2), (vec![last], last), ((1..=last).collect::<Vec<_>>(), last)] {
        let case = tempfile::tempdir().unwrap();
        copy_log(dir.path(), case.path());
        for id in &gone {
            std::fs::remove_file(segment_file(case.path(), *id)).unwrap();
        }
        let r = open(case.path(), 256);
        assert!(is_corrupt_in(&r, &segment_file(case.path(), named)), "{gone:?}: {:?}", r.err());
    }
}

#[test]
fn a_truncated_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let first = segment_file(dir.path(), 1);
    let end_of_first = a.iter().filter(|a| a.segment == 1).map(|a| a.end.pos).max().unwrap();
    truncate(&first, end_of_first - 10);
    match open(dir.path(), 256) {
        Err(LogError::Corrupt { file, what, .. }) => {
            assert_eq!(file, first);
            assert!(what.contains("acknowledged data missing"), "{what}");
        }
        other => panic!("{:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn bytes_after_the_end_of_an_earlier_segment_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let end_of_first = a.iter().filter(|a| a.segment == 1).map(|a| a.end.pos).max().unwrap();
    assert!(end_of_first < 256);
    patch(&segment_file(dir.path(), 1), end_of_first, b"MNFR from a failed sync");
    let (log, report) = open(dir.path(), 256).unwrap();
    assert_eq!((report.torn_tail, report.frames), (None, 12));
    assert_eq!(frames(&log.reader()).len(), 12);
}

#[test]
fn a_fresh_directory_with_committed_but_no_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    closed_log(fresh.path());
    std::fs::copy(fresh.path().join(COMMITTED), dir.path().join(COMMITTED)).unwrap();
    let r = open(dir.path(), 256);
    assert!(matches!(r, Err(LogError::Corrupt { .. })), "{:?}", r.err());
    assert!(!segment_file(dir.path(), 1).exists(), "no new segment is made over missing data");
}

#[test]
fn new_segment_header_is_synced_before_its_first_frame() {
    // The segment made for the first frame of a fresh log has a valid header
    // before anything is appended (creation is durable on its own).
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 512).unwrap();
    let bytes = std::fs::read(segment_file(dir.path(), 1)).unwrap();
    let h = crate::journal::log::format::SegmentHeader::decode(&bytes).unwrap();
    assert_eq!((h.id, h.prev_end, h.first_seq, h.capacity), (1, 0, 1, 512));
    assert!(bytes[SEGMENT_HEADER_LEN as usize..].iter().all(|&b| b == 0));
    drop(log);
}

#[test]
fn a_valid_frame_in_the_wrong_place_is_corruption() {
    // A misdirected or duplicated write: frame k's bytes (CRCs intact) where
    // frame k+1 belongs. Its sequence number gives it away, with or without
    // COMMITTED, in an earlier segment and in the last one.
    let dir = tempfile::tempdir().unwrap();
    let a = closed_log(dir.path());
    let last = a.last().unwrap().segment;
    for segment in [1, last] {
        for committed in [true, false] {
            let case = tempfile::tempdir().unwrap();
            copy_log(dir.path(), case.path());
            if !committed {
                std::fs::remove_file(case.path().join(COMMITTED)).unwrap();
            }
            let here: Vec<&Appended> = a.iter().filter(|x| x.segment == segment).collect();
            let (k, k1) = (here[0], here[1]);
            let seg = segment_file(case.path(), segment);
            let bytes = std::fs::read(&seg).unwrap();
            patch(&seg, k1.frame_pos, &bytes[k.frame_pos as usize..k.end.pos as usize]);
            match open(case.path(), 256) {
                Err(LogError::Corrupt { file, offset, what }) => {
                    assert_eq!(file, seg);
                    assert!(offset <= k1.frame_pos, "{offset}");
                    assert!(!what.is_empty());
                }
                other => panic!("segment {segment}, committed {committed}: {:?}", other.map(|(_, r)| r)),
            }
        }
    }
}

#[test]
fn damage_after_open_is_reported_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096).unwrap();
    let a: Vec<Appended> = (0..5).map(|i| log.append(i, &body(i, 30)).unwrap()).collect();
    patch(&segment_file(dir.path(), 1), a[2].body_pos + 1, b"\0");
    let got: Vec<Result<Frame, LogError>> = log.reader().frames_from(Position::START).collect();
    assert_eq!(got.len(), 3, "two frames, then the error, then nothing");
    assert!(got[0].is_ok() && got[1].is_ok());
    match &got[2] {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, *offset), (&segment_file(dir.path(), 1), a[2].frame_pos))
        }
        other => panic!("{other:?}"),
    }
}
