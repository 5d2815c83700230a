//! Every single flipped byte of a small multi-segment log (headers, frames,
//! padding, the zeros after the frames, `COMMITTED`): `open` either refuses with
//! `Corrupt`, or every committed frame reads back identical. Never fewer frames
//! without an error.

use super::*;
use crate::journal::log::format::SEGMENT_HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `open` failed with `Corrupt` naming the flipped file.
    Refused,
    /// Opened, every frame identical, nothing to report.
    Intact,
    /// Opened, every frame identical, the flipped byte cut as a torn tail.
    IntactTornTailCut,
}

#[test]
fn every_flipped_byte_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    const SEGMENT: u64 = 320;
    let (mut log, _) = open(dir.path(), SEGMENT).unwrap();
    let mut expect = Vec::new();
    let mut appended = Vec::new();
    for i in 0..10u64 {
        // Lengths 0..=63: every padding length occurs.
        let b = body(i, (i as usize * 23) % 64);
        appended.push(log.append(i, &b).unwrap());
        expect.push((i, b));
    }
    log.close().unwrap();
    let segments = appended.last().unwrap().segment;
    assert!(segments >= 3, "{segments} segments");
    // Where the frames of each segment end.
    let frames_end =
        |id: u64| appended.iter().filter(|a| a.segment == id).map(|a| a.end.pos).max().unwrap_or(SEGMENT_HEADER_LEN);

    // Each file with the outcome expected for a flip at byte `b`.
    type Expected = Box<dyn Fn(u64) -> Outcome>;
    let mut files: Vec<(String, Expected)> = Vec::new();
    for id in 1..=segments {
        let end = frames_end(id);
        let last = id == segments;
        let name = segment_file(Path::new(""), id).to_str().unwrap().to_string();
        files.push((
            name,
            Box::new(move |b| {
                if b < end {
                    Outcome::Refused // header, frame, padding
                } else if last {
                    Outcome::IntactTornTailCut // zeros after the last frame
                } else {
                    Outcome::Intact // after prev_end: ignored
                }
            }),
        ));
    }
    files.push(("COMMITTED".to_string(), Box::new(|_| Outcome::Intact)));

    let mut tally = std::collections::BTreeMap::<&str, [u64; 3]>::new();
    let mut cases = 0;
    for (name, expected) in &files {
        let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
        for b in 0..len {
            for mask in [0x01u8, 0x80, 0xff] {
                let case = tempfile::tempdir().unwrap();
                copy_log(dir.path(), case.path());
                let path = case.path().join(name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[b as usize] ^= mask;
                std::fs::write(&path, &bytes).unwrap();
                let outcome = match open(case.path(), SEGMENT) {
                    Err(LogError::Corrupt { file, .. }) if file == path => Outcome::Refused,
                    Err(e) => panic!("{name} byte {b} ^ {mask:#x}: unexpected error {e}"),
                    Ok((log, report)) => {
                        assert_eq!(
                            frames(&log.reader()),
                            expect,
                            "{name} byte {b} ^ {mask:#x}: frames changed without an error"
                        );
                        assert_eq!(report.removed_segment, None);
                        match report.torn_tail {
                            None => Outcome::Intact,
                            Some(t) => {
                                assert_eq!((t.file, t.offset), (path.clone(), frames_end(segments)));
                                drop(log);
                                let (log, again) = open(case.path(), SEGMENT).unwrap();
                                assert_eq!(again.torn_tail, None, "the cut is durable");
                                assert_eq!(frames(&log.reader()), expect);
                                Outcome::IntactTornTailCut
                            }
                        }
                    }
                };
                assert_eq!(outcome, expected(b), "{name} byte {b} ^ {mask:#x}");
                let region = match (name.as_str(), outcome) {
                    ("COMMITTED", _) => "COMMITTED",
                    (_, Outcome::Refused) if b < SEGMENT_HEADER_LEN => "segment headers",
                    (_, Outcome::Refused) => "frames (header, body, padding)",
                    (_, Outcome::Intact) => "after prev_end of earlier segments",
                    (_, Outcome::IntactTornTailCut) => "zeros after the last frame",
                };
                tally.entry(region).or_default()[outcome as usize] += 1;
                cases += 1;
            }
        }
    }
    let total = tally.values().fold([0u64; 3], |a, t| [a[0] + t[0], a[1] + t[1], a[2] + t[2]]);
    println!("flipped-byte tally ({cases} flips: every byte of {} files x masks 0x01, 0x80, 0xff):", files.len());
    for (region, [refused, intact, cut]) in &tally {
        println!("  {region:<36} refused {refused:>5}  intact {intact:>5}  intact+torn-tail-cut {cut:>5}");
    }
    println!(
        "  {:<36} refused {:>5}  intact {:>5}  intact+torn-tail-cut {:>5}  lost 0",
        "total", total[0], total[1], total[2]
    );
    assert_eq!(total.iter().sum::<u64>(), cases);
    assert!(total.iter().all(|&n| n > 0));
}
