use std::path::Path;

use super::*;
use crate::journal::log::LogOptions;
use crate::journal::tests::ev;
use crate::journal::{open, verify, Backend, DataLock, Journal, LogJournal, WriteBatch};

const SEGMENT: u64 = 1 << 20;

fn open_log(dir: &Path) -> LogJournal {
    let lock = DataLock::acquire(dir).unwrap();
    LogJournal::open_with(
        dir,
        lock,
        LogOptions { segment_bytes: SEGMENT },
        std::sync::Arc::new(crate::journal::log::StdIo),
    )
    .unwrap()
}

fn offset(generation: u32, offset: u64, live: bool) -> ProjectionOffset {
    ProjectionOffset { projection: "balances".into(), generation, offset, view_version: 1, component_version: 1, live }
}

fn put(key: &str, value: &str) -> ViewUpdate {
    ViewUpdate::Put { key: key.into(), value: value.as_bytes().to_vec() }
}

fn batch(generation: u32, previous_offset: u64, to: u64, updates: Vec<ViewUpdate>) -> ProjectionBatch {
    ProjectionBatch { offset: offset(generation, to, true), previous_offset, updates, fence: None }
}

fn scan(j: &dyn Journal, generation: u32, prefix: &str, from: &str, limit: usize) -> Vec<(String, String)> {
    j.view_scan("balances", generation, prefix, from, limit)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_batch_stores_its_updates_and_offset_and_is_never_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path());
    j.write(&WriteBatch {
        events: vec![ev("a|1", 1, &["t"]), ev("a|1", 2, &["t"])],
        snapshots: vec![],
        ..Default::default()
    })
    .unwrap();
    let head = j.head();
    assert_eq!(j.projection_offsets("balances").unwrap(), vec![]);
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), None);

    j.write_projection(&batch(1, 0, 1, vec![put("alice", "1"), put("bob", "2"), put("ali", "3")])).unwrap();
    assert_eq!(j.head(), head, "a projection frame holds no events");
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"1".to_vec()));
    assert_eq!(j.view_get("balances", 2, "alice").unwrap(), None, "generations are apart");
    assert_eq!(j.projection_offsets("balances").unwrap(), vec![offset(1, 1, true)]);

    // The same batch again (e.g. computed again after a crash) is refused: the
    // generation's offset is no longer 0.
    let again = j.write_projection(&batch(1, 0, 1, vec![put("alice", "1")])).unwrap_err();
    assert!(matches!(&again, JournalError::Invalid(m) if m.contains("is at offset 1")), "{again}");
    let ahead = j.write_projection(&batch(1, 2, 3, vec![])).unwrap_err();
    assert!(matches!(ahead, JournalError::Invalid(_)), "a batch must continue from the stored offset");

    j.write_projection(&batch(1, 1, 2, vec![put("alice", "4"), ViewUpdate::Delete { key: "bob".into() }])).unwrap();
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"4".to_vec()));
    assert_eq!(j.view_get("balances", 1, "bob").unwrap(), None);
    assert_eq!(scan(&j, 1, "", "", 10), pairs(&[("ali", "3"), ("alice", "4")]));
    assert_eq!(scan(&j, 1, "ali", "", 10), pairs(&[("ali", "3"), ("alice", "4")]));
    assert_eq!(scan(&j, 1, "alic", "", 10), pairs(&[("alice", "4")]));
    assert_eq!(scan(&j, 1, "", "alia", 10), pairs(&[("alice", "4")]), "from_key, in key order");
    assert_eq!(scan(&j, 1, "", "alice", 10), pairs(&[("alice", "4")]), "from_key is inclusive");
    assert_eq!(scan(&j, 1, "", "", 1), pairs(&[("ali", "3")]));
    assert_eq!(scan(&j, 1, "b", "", 10), vec![]);

    // A second generation beside the first; a projection with a longer name apart.
    j.write_projection(&batch(2, 0, 2, vec![put("alice", "x")])).unwrap();
    let mut other = batch(1, 0, 2, vec![put("alice", "other")]);
    other.offset.projection = "balances2".into();
    j.write_projection(&other).unwrap();
    assert_eq!(scan(&j, 1, "", "", 10), pairs(&[("ali", "3"), ("alice", "4")]));
    assert_eq!(scan(&j, 2, "", "", 10), pairs(&[("alice", "x")]));
    let gens: Vec<u32> = j.projection_offsets("balances").unwrap().iter().map(|o| o.generation).collect();
    assert_eq!(gens, vec![1, 2]);
    assert_eq!(j.projection_offsets("balances2").unwrap().len(), 1);
}

#[test]
fn views_survive_a_reopen_and_a_rebuilt_index_and_verify_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open_log(dir.path());
        j.write(&WriteBatch { events: vec![ev("a|1", 1, &["t"])], snapshots: vec![], ..Default::default() }).unwrap();
        j.write_projection(&batch(1, 0, 1, vec![put("alice", "1"), put("bob", "2")])).unwrap();
        j.write(&WriteBatch { events: vec![ev("a|1", 2, &["t"])], snapshots: vec![], ..Default::default() }).unwrap();
        j.write_projection(&batch(1, 1, 2, vec![ViewUpdate::Delete { key: "bob".into() }])).unwrap();
    }
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.projection_records, report.view_keys), (5, 1));
    crate::journal::log_journal::reindex(dir.path()).unwrap();
    let j = open(dir.path(), Backend::Log).unwrap();
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"1".to_vec()));
    assert_eq!(j.view_get("balances", 1, "bob").unwrap(), None);
    assert_eq!(j.projection_offsets("balances").unwrap(), vec![offset(1, 2, true)]);
    // Writing continues from the stored offset after the reopen.
    j.write_projection(&batch(1, 2, 2, vec![put("carol", "3")])).unwrap();
    drop(j);

    // An index entry that points at another record is found by verify, and by a read.
    let lock = DataLock::acquire(dir.path()).unwrap();
    drop(lock);
    let index = crate::journal::index::Index::open(&crate::journal::log_journal::index_dir(dir.path())).unwrap();
    let alice = index.get(&view_key("balances", 1, "alice")).unwrap().unwrap();
    let mut b = index_batch_moving(&view_key("balances", 1, "carol"), alice);
    let through = index.through().unwrap().unwrap();
    index.apply(std::mem::take(&mut b), through).unwrap();
    drop(index);
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.iter().any(|p| p.contains("view key")), "{:?}", report.problems);
    let j = open(dir.path(), Backend::Log).unwrap();
    let err = j.view_get("balances", 1, "carol").unwrap_err();
    assert!(matches!(err, JournalError::Corrupt(_)), "{err}");
}

/// An index batch that points `key` at `loc`.
fn index_batch_moving(key: &[u8], loc: crate::journal::index::Loc) -> crate::journal::index::IndexBatch {
    let mut batch = crate::journal::index::IndexBatch::default();
    batch.put(key.to_vec(), loc);
    batch
}

#[test]
fn a_torn_projection_frame_leaves_neither_its_updates_nor_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let committed = dir.path().join("log").join("COMMITTED");
    let committed_before;
    {
        let j = open_log(dir.path());
        j.write(&WriteBatch {
            events: vec![ev("a|1", 1, &["t"]), ev("a|1", 2, &["t"])],
            snapshots: vec![],
            ..Default::default()
        })
        .unwrap();
        j.write_projection(&batch(1, 0, 1, vec![put("alice", "1")])).unwrap();
        committed_before = std::fs::read(&committed).unwrap();
        let big = "v".repeat(4000);
        j.write_projection(&batch(1, 1, 2, vec![put("alice", "2"), put("bob", &big)])).unwrap();
    }
    // The last frame was being written when the machine stopped: its tail never
    // reached the disk and it was never acknowledged.
    std::fs::write(&committed, &committed_before).unwrap();
    let segment = dir.path().join("log").join(format!("{:020}.log", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let last_frame = bytes.windows(4).rposition(|w| w == b"MNFR").unwrap();
    let torn_from = last_frame + 100;
    bytes[torn_from..last_frame + 4200].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    // The index is written without a sync: after the crash it had not taken the
    // frame in either (a clean close had flushed it: drop it, it is derived).
    std::fs::remove_dir_all(crate::journal::log_journal::index_dir(dir.path())).unwrap();

    let j = open_log(dir.path());
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"1".to_vec()));
    assert_eq!(j.view_get("balances", 1, "bob").unwrap(), None);
    assert_eq!(j.projection_offsets("balances").unwrap(), vec![offset(1, 1, true)]);
    // The batch is computed again from offset 1 and stored once.
    j.write_projection(&batch(1, 1, 2, vec![put("alice", "2")])).unwrap();
    assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn the_sled_journal_says_projections_need_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), Backend::Sled).unwrap();
    for err in [
        j.write_projection(&batch(1, 0, 1, vec![])).unwrap_err(),
        j.projection_offsets("balances").unwrap_err(),
        j.view_get("balances", 1, "k").unwrap_err(),
    ] {
        assert!(err.to_string().contains("--journal log"), "{err}");
    }
}
