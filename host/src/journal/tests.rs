//! Tests every backend must pass: each is a function taking an opener, run once per
//! backend by `backend_tests!` (as `journal::tests::{sled,log,postgres}::NAME`; the
//! PostgreSQL ones on the server of `MNEME_TEST_POSTGRES_URL`, a database each).

use std::path::Path;

use super::*;

type Opener = fn(&Path) -> JournalResult<Box<dyn Journal>>;

/// sled releases its lock on `db` only when the last reference to its log is gone,
/// and jobs on sled's own thread pool can still hold one for a moment after the
/// `SledJournal` is dropped; so a reopen right after a drop may find the directory
/// still locked. Retry that for up to 2 s (a lock that is really held, as in
/// `opening_twice_at_once_fails`, still fails).
fn open_sled(dir: &Path) -> JournalResult<Box<dyn Journal>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match SledJournal::open(dir) {
            Err(JournalError::Storage(msg))
                if msg.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return Ok(Box::new(r?)),
        }
    }
}

fn open_log(dir: &Path) -> JournalResult<Box<dyn Journal>> {
    Ok(Box::new(LogJournal::open(dir, DataLock::acquire(dir)?)?))
}

/// A database of its own per directory on the test server (started by
/// `MNEME_TEST_POSTGRES_URL`, e.g. from `scripts/start-postgres.sh`; without it these
/// tests fail, saying so).
/// The database's writer lock is what refuses a second journal.
fn open_postgres(dir: &Path) -> JournalResult<Box<dyn Journal>> {
    Ok(Box::new(PostgresJournal::open(&crate::journal::postgres::testing::database_for(dir))?))
}

macro_rules! backend_tests {
    ($($test:ident),* $(,)?) => {
        mod sled {
            $( #[test] fn $test() { super::$test(super::open_sled) } )*
        }
        mod log {
            $( #[test] fn $test() { super::$test(super::open_log) } )*
        }
        mod postgres {
            $( #[test] fn $test() { super::$test(super::open_postgres) } )*
        }
    };
}

backend_tests!(
    batch_is_stored_with_offsets_tags_and_gapless_seq,
    snapshots_and_timers_persist,
    reopened_journal_sees_everything,
    timer_ids_are_unique_across_restarts,
    opening_twice_at_once_fails,
    head_is_the_newest_durable_offset,
    all_events_are_read_by_offset,
    outbox_parts_are_stored_atomically_with_their_batch,
    a_read_sees_every_write_that_returned_before_it,
    tagged_events_are_read_from_any_offset_with_any_limit,
    an_entitys_events_are_handed_out_in_place_from_any_seq_nr,
);

pub(crate) fn ev(pid: &str, seq: u64, tags: &[&str]) -> NewEvent {
    NewEvent {
        persistence_id: pid.into(),
        seq_nr: seq,
        timestamp_ms: 1,
        writer_id: "w1".into(),
        manifest: "M".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        payload: format!("{pid}-{seq}").into_bytes(),
    }
}

/// Read-your-writes while another thread keeps writing: whatever a `write` that
/// returned before a read began stored is in that read (the log journal indexes
/// beside the writes, so its reads wait for the frames written before them).
fn a_read_sees_every_write_that_returned_before_it(open: Opener) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let j: std::sync::Arc<dyn Journal> = open(dir.path()).unwrap().into();
    let written = AtomicU64::new(0);
    const BATCHES: u64 = 60;
    const PER_BATCH: u64 = 40;
    std::thread::scope(|s| {
        s.spawn(|| {
            for b in 1..=BATCHES {
                let events = (0..PER_BATCH).map(|i| ev(&format!("p|{i}"), b, &["all"])).collect();
                j.write(&WriteBatch { events, ..WriteBatch::default() }).unwrap();
                written.store(b, Ordering::Release);
            }
        });
        let mut reads = 0;
        loop {
            let b = written.load(Ordering::Acquire);
            let pid = format!("p|{}", reads % PER_BATCH);
            assert_eq!(j.highest_seq_nr(&pid).unwrap().min(b), b, "{pid} after {b} batches");
            let events = j.events(&pid, 1, usize::MAX).unwrap();
            assert!(events.len() as u64 >= b, "{pid}: {} events after {b} batches", events.len());
            let tagged = j.events_by_tag("all", 1, usize::MAX).unwrap();
            assert!(tagged.len() as u64 >= b * PER_BATCH, "{} tagged after {b} batches", tagged.len());
            assert!(tagged.windows(2).all(|w| w[0].offset < w[1].offset), "in offset order");
            reads += 1;
            if b == BATCHES {
                break;
            }
        }
        assert!(reads > 1);
    });
}

fn snap(pid: &str, seq_nr: u64, state: &[u8]) -> Snapshot {
    Snapshot { persistence_id: pid.into(), seq_nr, state_version: 2, timestamp_ms: 9, state: state.to_vec() }
}

fn batch_is_stored_with_offsets_tags_and_gapless_seq(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    let batch = WriteBatch {
        events: vec![ev("a|1", 1, &["x"]), ev("b|1", 1, &[]), ev("a|1", 2, &["x", "y"])],
        ..WriteBatch::default()
    };
    j.write(&batch).unwrap();
    assert_eq!(j.highest_seq_nr("a|1").unwrap(), 2);
    assert_eq!(j.highest_seq_nr("a|10").unwrap(), 0, "prefix of another id must not match");
    assert_eq!(j.highest_seq_nr("a|").unwrap(), 0);
    let a = j.events("a|1", 1, 100).unwrap();
    assert_eq!(a.iter().map(|e| (e.seq_nr, e.offset)).collect::<Vec<_>>(), vec![(1, 1), (2, 3)]);
    assert_eq!(a[1].tags, vec!["x", "y"]);
    assert_eq!(a[1].payload, b"a|1-2");
    assert_eq!(j.events("a|1", 2, 100).unwrap().len(), 1);
    assert_eq!(j.events("a|1", 0, 1).unwrap().len(), 1);
    assert!(j.events("a|1", 3, 100).unwrap().is_empty());
    let x = j.events_by_tag("x", 0, 100).unwrap();
    assert_eq!(x.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(j.events_by_tag("x", 2, 100).unwrap().len(), 1);
    assert_eq!(j.events_by_tag("x", 0, 1).unwrap().len(), 1);
    assert_eq!(j.events_by_tag("y", 0, 100).unwrap()[0].persistence_id, "a|1");
    // A gap or an overwrite is refused and stores nothing, snapshots included.
    let gap = WriteBatch {
        events: vec![ev("b|1", 2, &["x"]), ev("a|1", 4, &[])],
        snapshots: vec![snap("b|1", 2, b"s")],
        ..WriteBatch::default()
    };
    assert!(matches!(j.write(&gap), Err(JournalError::Invalid(_))));
    let dup = WriteBatch { events: vec![ev("a|1", 2, &[])], ..WriteBatch::default() };
    assert!(matches!(j.write(&dup), Err(JournalError::Invalid(_))));
    let skip = WriteBatch { events: vec![ev("c|1", 1, &[]), ev("c|1", 3, &[])], ..WriteBatch::default() };
    assert!(matches!(j.write(&skip), Err(JournalError::Invalid(_))));
    let zero = WriteBatch { events: vec![ev("c|1", 0, &[])], ..WriteBatch::default() };
    assert!(matches!(j.write(&zero), Err(JournalError::Invalid(_))));
    assert_eq!(j.highest_seq_nr("b|1").unwrap(), 1);
    assert_eq!(j.highest_seq_nr("c|1").unwrap(), 0);
    assert_eq!(j.load_snapshot("b|1").unwrap(), None);
    assert_eq!(j.events_by_tag("x", 0, 100).unwrap().len(), 2);
    // Refused batches use no offsets.
    j.write(&WriteBatch { events: vec![ev("c|1", 1, &["x"])], ..WriteBatch::default() }).unwrap();
    assert_eq!(j.events("c|1", 1, 1).unwrap()[0].offset, 4);
    drop(j);
    // Offsets continue after a reopen, and the reopened journal still refuses an
    // overwrite or a gap (it checks the store, not what it remembers).
    let j = open(dir.path()).unwrap();
    assert!(matches!(
        j.write(&WriteBatch { events: vec![ev("a|1", 2, &[])], ..WriteBatch::default() }),
        Err(JournalError::Invalid(_))
    ));
    assert!(matches!(
        j.write(&WriteBatch { events: vec![ev("b|1", 3, &[])], ..WriteBatch::default() }),
        Err(JournalError::Invalid(_))
    ));
    j.write(&WriteBatch { events: vec![ev("a|1", 3, &["x"])], ..WriteBatch::default() }).unwrap();
    assert_eq!(j.events("a|1", 3, 1).unwrap()[0].offset, 5);
    assert_eq!(j.events_by_tag("x", 0, 100).unwrap().iter().map(|e| e.offset).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
}

fn snapshots_and_timers_persist(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    let s = snap("a|1", 5, b"st");
    j.write(&WriteBatch { events: vec![], snapshots: vec![s.clone()], ..WriteBatch::default() }).unwrap();
    let id = j.next_timer_id().unwrap();
    let t = Timer { id, due_ms: 10, entity_type: "t".into(), entity_id: "1".into(), payload: b"{}".to_vec() };
    j.put_timer(&t).unwrap();
    drop(j);
    let j = open(dir.path()).unwrap();
    assert_eq!(j.load_snapshot("a|1").unwrap(), Some(s));
    assert_eq!(j.load_snapshot("a|").unwrap(), None);
    assert_eq!(j.timers().unwrap(), vec![t]);
    j.remove_timer(id).unwrap();
    assert!(j.timers().unwrap().is_empty());
    drop(j);
    let j = open(dir.path()).unwrap();
    assert!(j.timers().unwrap().is_empty(), "a removed timer stays removed after a reopen");
}

/// Everything the journal answers, for comparing before and after a reopen.
fn everything(j: &dyn Journal, pids: &[&str], tags: &[&str]) -> String {
    let mut out = String::new();
    for pid in pids {
        out += &format!("{pid} highest={}\n", j.highest_seq_nr(pid).unwrap());
        out += &format!("{pid} events={:?}\n", j.events(pid, 0, usize::MAX).unwrap());
        out += &format!("{pid} snapshot={:?}\n", j.load_snapshot(pid).unwrap());
    }
    for tag in tags {
        out += &format!("{tag} tagged={:?}\n", j.events_by_tag(tag, 0, usize::MAX).unwrap());
    }
    out += &format!("timers={:?}\n", j.timers().unwrap());
    out
}

fn reopened_journal_sees_everything(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let pids = ["acct|1", "acct|2", "acct|10", "blog|x", "big|1"];
    let tags = ["account", "even", "blog", "big"];
    let j = open(dir.path()).unwrap();
    let mut seq = std::collections::HashMap::new();
    for round in 0..50u64 {
        let mut batch = WriteBatch::default();
        for (i, pid) in pids[..4].iter().enumerate() {
            if (round + i as u64).is_multiple_of(3) {
                continue;
            }
            let s = seq.entry(*pid).or_insert(0u64);
            *s += 1;
            let mut tags = vec![if pid.starts_with("blog") { "blog" } else { "account" }];
            if *s % 2 == 0 {
                tags.push("even");
            }
            batch.events.push(ev(pid, *s, &tags));
            if *s % 7 == 0 {
                batch.snapshots.push(snap(pid, *s, format!("state of {pid} at {s}").as_bytes()));
            }
        }
        j.write(&batch).unwrap();
    }
    let mut big = ev("big|1", 1, &["big"]);
    big.payload = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    j.write(&WriteBatch {
        events: vec![big],
        snapshots: vec![snap("big|1", 1, &[1; 100_000])],
        ..WriteBatch::default()
    })
    .unwrap();
    let mut ids = Vec::new();
    for due in [30, 10, 20] {
        let id = j.next_timer_id().unwrap();
        ids.push(id);
        j.put_timer(&Timer {
            id,
            due_ms: due,
            entity_type: "t".into(),
            entity_id: format!("{due}"),
            payload: vec![due as u8],
        })
        .unwrap();
    }
    j.remove_timer(ids[0]).unwrap();
    assert_eq!(j.timers().unwrap().iter().map(|t| t.due_ms).collect::<Vec<_>>(), vec![10, 20]);
    let before = everything(&*j, &pids, &tags);
    let last_offset = j.events_by_tag("big", 0, 1).unwrap()[0].offset;
    drop(j);

    let j = open(dir.path()).unwrap();
    assert_eq!(everything(&*j, &pids, &tags), before);
    let s = seq["acct|1"] + 1;
    j.write(&WriteBatch { events: vec![ev("acct|1", s, &["account"])], ..WriteBatch::default() }).unwrap();
    assert_eq!(j.events("acct|1", s, 1).unwrap()[0].offset, last_offset + 1);
    let id = j.next_timer_id().unwrap();
    assert!(ids.iter().all(|old| id > *old), "timer id {id} after reopen, before: {ids:?}");
}

fn timer_ids_are_unique_across_restarts(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    for run in 0..3 {
        let j = open(dir.path()).unwrap();
        let mut last = 0;
        for _ in 0..1500 {
            let id = j.next_timer_id().unwrap();
            assert!(seen.insert(id), "timer id {id} handed out twice (run {run})");
            last = id;
        }
        // The highest id was stored and then removed: it must not come back.
        j.put_timer(&Timer { id: last, due_ms: 1, entity_type: "t".into(), entity_id: "1".into(), payload: vec![] })
            .unwrap();
        j.remove_timer(last).unwrap();
    }
}

fn opening_twice_at_once_fails(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &[])], ..WriteBatch::default() }).unwrap();
    match open(dir.path()) {
        Err(JournalError::Storage(msg) | JournalError::Locked(msg)) => {
            assert!(msg.contains("lock") || msg.contains("in use"), "unclear error: {msg}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second journal opened the same directory"),
    }
    // The first one is unaffected, and once it is gone the directory opens again.
    j.write(&WriteBatch { events: vec![ev("a|1", 2, &[])], ..WriteBatch::default() }).unwrap();
    drop(j);
    let j = open(dir.path()).unwrap();
    assert_eq!(j.highest_seq_nr("a|1").unwrap(), 2);
}

fn head_is_the_newest_durable_offset(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    assert_eq!(j.head(), 0);
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &[]), ev("a|1", 2, &[])], ..WriteBatch::default() }).unwrap();
    assert_eq!(j.head(), 2);
    let refused = WriteBatch { events: vec![ev("a|1", 9, &[])], ..WriteBatch::default() };
    assert!(j.write(&refused).is_err());
    assert_eq!(j.head(), 2, "a refused batch moves nothing");
    drop(j);
    let j = open(dir.path()).unwrap();
    assert_eq!(j.head(), 2);
    j.write(&WriteBatch { events: vec![ev("b|1", 1, &[])], ..WriteBatch::default() }).unwrap();
    assert_eq!(j.head(), 3);
}

fn all_events_are_read_by_offset(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    if let Err(e) = j.events_from(0, 10) {
        assert!(matches!(e, JournalError::Invalid(_)), "a backend without it says so: {e}");
        return;
    }
    for round in 1..=5u64 {
        let events = (0..round).map(|i| ev(&format!("p|{i}"), round - i, &[])).collect();
        j.write(&WriteBatch { events, ..WriteBatch::default() }).unwrap();
        let timer = Timer {
            id: j.next_timer_id().unwrap(),
            due_ms: 1,
            entity_type: "t".into(),
            entity_id: "1".into(),
            payload: vec![],
        };
        j.put_timer(&timer).unwrap();
    }
    let all = j.events_from(0, 100).unwrap();
    assert_eq!(all.iter().map(|e| e.offset).collect::<Vec<_>>(), (1..=15).collect::<Vec<_>>());
    for from in 1..=16 {
        for limit in [1, 2, 7, 100] {
            let page = j.events_from(from, limit).unwrap();
            let want: Vec<u64> = (from..=15).take(limit).collect();
            assert_eq!(page.iter().map(|e| e.offset).collect::<Vec<_>>(), want, "from {from} limit {limit}");
        }
    }
    drop(j);
    let j = open(dir.path()).unwrap();
    assert_eq!(j.events_from(14, 100).unwrap().len(), 2, "after a reopen");
}

fn entry(key: &str, target_id: &str) -> OutboxEntry {
    OutboxEntry {
        key: key.into(),
        source: "a|1".into(),
        source_seq_nr: 1,
        due_ms: 0,
        created_ms: 5,
        target_type: "t".into(),
        target_id: target_id.into(),
        payload: format!("to {target_id}").into_bytes(),
    }
}

fn applied(pid: &str, key: &str) -> AppliedKey {
    AppliedKey { persistence_id: pid.into(), key: key.into(), source: "a|1".into(), seq_nr: 1 }
}

fn message(topic: &str, payload: &str) -> TopicMessage {
    TopicMessage { topic: topic.into(), source: "a|1".into(), timestamp_ms: 3, payload: payload.as_bytes().to_vec() }
}

fn positions(j: &dyn Journal, topic: &str) -> Vec<(u64, String)> {
    let messages = j.topic_messages(topic, 0, usize::MAX).unwrap();
    messages.into_iter().map(|m| (m.position, String::from_utf8(m.payload).unwrap())).collect()
}

fn outbox_parts_are_stored_atomically_with_their_batch(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    let outbox = OutboxBatch {
        entries: vec![entry("a|1#1.0", "2"), entry("a|1#1.1", "3")],
        done: vec![],
        applied: vec![applied("a|1", "z|9#4.0")],
        published: vec![message("news", "one"), message("other", "x"), message("news", "two")],
    };
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &[])], outbox, ..WriteBatch::default() }).unwrap();
    assert_eq!(j.outbox_pending().unwrap(), vec![entry("a|1#1.0", "2"), entry("a|1#1.1", "3")]);
    assert!(j.is_applied("a|1", "z|9#4.0").unwrap());
    assert!(!j.is_applied("a|1", "z|9#4.1").unwrap());
    assert!(!j.is_applied("a|10", "z|9#4.0").unwrap(), "applied keys are per entity");
    assert_eq!(positions(&*j, "news"), [(1, "one".into()), (2, "two".into())]);
    assert_eq!(positions(&*j, "other"), [(1, "x".into())]);
    assert_eq!((j.topic_head("news").unwrap(), j.topic_head("none").unwrap()), (2, 0));
    assert_eq!(j.topic_messages("news", 2, 10).unwrap().len(), 1);
    assert_eq!(j.topic_messages("news", 1, 1).unwrap()[0].position, 1);

    // A refused batch stores nothing of its outbox part and takes no position.
    let refused = WriteBatch {
        events: vec![ev("a|1", 5, &[])],
        outbox: OutboxBatch {
            entries: vec![entry("a|1#5.0", "4")],
            done: vec!["a|1#1.0".into()],
            applied: vec![applied("a|1", "z|9#5.0")],
            published: vec![message("news", "lost")],
        },
        ..WriteBatch::default()
    };
    assert!(matches!(j.write(&refused), Err(JournalError::Invalid(_))));
    assert_eq!(j.outbox_pending().unwrap().len(), 2);
    assert!(!j.is_applied("a|1", "z|9#5.0").unwrap());
    assert_eq!(j.topic_head("news").unwrap(), 2);

    // A batch of only outbox records: one delivery done, one more message.
    let done =
        OutboxBatch { done: vec!["a|1#1.0".into()], published: vec![message("news", "three")], ..Default::default() };
    j.write(&WriteBatch { outbox: done, ..WriteBatch::default() }).unwrap();
    assert_eq!(j.outbox_pending().unwrap(), vec![entry("a|1#1.1", "3")]);
    assert_eq!(j.head(), 1, "outbox records take no event offsets");
    drop(j);

    let j = open(dir.path()).unwrap();
    assert_eq!(j.outbox_pending().unwrap(), vec![entry("a|1#1.1", "3")], "pending survives a reopen, done too");
    assert!(j.is_applied("a|1", "z|9#4.0").unwrap());
    assert_eq!(positions(&*j, "news"), [(1, "one".into()), (2, "two".into()), (3, "three".into())]);
    let more = OutboxBatch { published: vec![message("news", "four")], ..Default::default() };
    j.write(&WriteBatch { outbox: more, ..WriteBatch::default() }).unwrap();
    assert_eq!(j.topic_head("news").unwrap(), 4, "positions continue after a reopen");
}

/// Reading by tag from every offset with every limit, over batches holding several
/// events of one tag (the log journal keeps one tag list per batch and tag), gives
/// the tagged events in offset order, each once (an event may name a tag twice).
fn tagged_events_are_read_from_any_offset_with_any_limit(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    let tags_of = |i: u64| -> Vec<&'static str> {
        let mut t = Vec::new();
        if i.is_multiple_of(2) {
            t.push("even");
        }
        if i.is_multiple_of(3) {
            t.extend(["three", "three"]);
        }
        t.push("all");
        t
    };
    let mut i = 0;
    for size in [1, 5, 2, 7, 1, 4] {
        let events = (0..size)
            .map(|_| {
                i += 1;
                ev(&format!("a|{i}"), 1, &tags_of(i))
            })
            .collect();
        j.write(&WriteBatch { events, ..WriteBatch::default() }).unwrap();
    }
    for tag in ["even", "three", "all", "none"] {
        let all: Vec<u64> = (1..=i).filter(|&o| tags_of(o).contains(&tag)).collect();
        for from in 0..=i + 1 {
            for limit in [1, 2, 3, 100] {
                let want: Vec<u64> = all.iter().copied().filter(|&o| o >= from).take(limit).collect();
                let got: Vec<u64> = j.events_by_tag(tag, from, limit).unwrap().iter().map(|e| e.offset).collect();
                assert_eq!(got, want, "tag {tag} from {from} limit {limit}");
            }
        }
    }
    let e = &j.events_by_tag("three", 3, 1).unwrap()[0];
    assert_eq!(
        (e.persistence_id.as_str(), e.tags.as_slice()),
        ("a|3", &["three", "three", "all"].map(String::from)[..])
    );
}

/// Recovery's read (`for_each_event`, borrowed from the read buffer) hands out
/// the same events as `events`, from every sequence number with every limit, over
/// batches that hold several events of one entity between others' events.
fn an_entitys_events_are_handed_out_in_place_from_any_seq_nr(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path()).unwrap();
    let mut seq = 0;
    for (i, size) in [3, 1, 4, 2].into_iter().enumerate() {
        let mut events = vec![ev(&format!("b|{i}"), 1, &[])];
        for _ in 0..size {
            seq += 1;
            let mut e = ev("a|1", seq, &["t"]);
            e.manifest = format!("M{seq}");
            events.push(e);
        }
        j.write(&WriteBatch { events, ..WriteBatch::default() }).unwrap();
    }
    for from in 0..=seq + 1 {
        for limit in [1, 2, 5, 100] {
            let want: Vec<(u64, String, Vec<u8>)> =
                j.events("a|1", from, limit).unwrap().into_iter().map(|e| (e.seq_nr, e.manifest, e.payload)).collect();
            assert_eq!(want.len(), (seq + 1 - from.clamp(1, seq + 1)).min(limit as u64) as usize);
            let mut got = Vec::new();
            let n = j
                .for_each_event("a|1", from, limit, &mut |e| {
                    got.push((e.seq_nr, e.manifest.to_string(), e.payload.to_vec()))
                })
                .unwrap();
            assert_eq!((n, got), (want.len(), want), "from {from} limit {limit}");
        }
    }
    assert_eq!(j.for_each_event("none|1", 1, 10, &mut |_| panic!("no event")).unwrap(), 0);
}

/// Open the index of the journal in `data` as fjall sees it, let `edit` read or
/// change its entries, and sync what it changed.
fn edit_index(data: &std::path::Path, edit: impl FnOnce(&fjall::Keyspace)) {
    let db = fjall::Database::builder(log_journal::index_dir(data)).open().unwrap();
    let ks = db.keyspace("index", fjall::KeyspaceCreateOptions::default).unwrap();
    edit(&ks);
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// An index entry that points at another event than the one it names is
/// corruption, for both reads of an entity's events, reported with its place.
#[test]
fn an_index_entry_pointing_at_another_event_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &[]), ev("a|2", 1, &[])], ..WriteBatch::default() }).unwrap();
    drop(j);
    edit_index(dir.path(), |ks| {
        let other = ks.get(index::event_key("a|2", 1)).unwrap().unwrap();
        ks.insert(index::event_key("a|1", 1), other).unwrap();
    });
    let j = open_log(dir.path()).unwrap();
    let want = "index entry of a|1#1 points at event a|2#1 (commit log segment";
    let err = j.events("a|1", 1, 10).unwrap_err().to_string();
    assert!(err.contains(want), "{err}");
    let err = j.for_each_event("a|1", 1, 10, &mut |_| panic!("nothing handed out")).unwrap_err().to_string();
    assert!(err.contains(want), "{err}");
}

/// An entity's events of one frame are one index entry (an event run): reads
/// start inside a run and cross runs, and the entity's highest sequence number
/// and the writer's sequence check read runs.
#[test]
fn an_entitys_events_of_one_frame_are_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    let events = |pid: &str, seqs: std::ops::RangeInclusive<u64>| seqs.map(|s| ev(pid, s, &[])).collect::<Vec<_>>();
    // a|1 1..=5 and b|1 1..=2 interleaved in one frame; then a|1 6..=7.
    let mut first = events("a|1", 1..=3);
    first.extend(events("b|1", 1..=2));
    first.extend(events("a|1", 4..=5));
    j.write(&WriteBatch { events: first, ..WriteBatch::default() }).unwrap();
    j.write(&WriteBatch { events: events("a|1", 6..=7), ..WriteBatch::default() }).unwrap();
    drop(j);
    edit_index(dir.path(), |ks| {
        let runs: Vec<Vec<u8>> = ks.prefix(index::event_prefix("a|1")).map(|g| g.key().unwrap().to_vec()).collect();
        assert_eq!(runs, vec![index::event_key("a|1", 1), index::event_key("a|1", 6)], "one run per frame");
    });
    let j = open_log(dir.path()).unwrap();
    assert_eq!(j.highest_seq_nr("a|1").unwrap(), 7);
    assert_eq!(j.highest_seq_nr("b|1").unwrap(), 2);
    for from in 0..=8 {
        for limit in [1, 2, 3, 10] {
            let got: Vec<u64> = j.events("a|1", from, limit).unwrap().iter().map(|e| e.seq_nr).collect();
            let want: Vec<u64> = (from.max(1)..=7).take(limit).collect();
            assert_eq!(got, want, "from {from} limit {limit}");
        }
    }
    // A sequence number inside a run is stored; the next one follows.
    let again = j.write(&WriteBatch { events: vec![ev("a|1", 3, &[])], ..WriteBatch::default() });
    assert!(again.is_err(), "a stored sequence number is refused");
    j.write(&WriteBatch { events: vec![ev("a|1", 8, &[])], ..WriteBatch::default() }).unwrap();
    drop(j);
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 10);
}

/// `mneme journal verify` finds an event run that is missing, that points
/// elsewhere or that the log does not have.
#[test]
fn verify_checks_event_runs_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    j.write(&WriteBatch {
        events: vec![ev("a|1", 1, &[]), ev("a|1", 2, &[]), ev("a|2", 1, &[])],
        ..WriteBatch::default()
    })
    .unwrap();
    drop(j);
    edit_index(dir.path(), |ks| {
        ks.remove(index::event_key("a|2", 1)).unwrap();
        let mut run = ks.get(index::event_key("a|1", 1)).unwrap().unwrap().to_vec();
        run[8 + 12] ^= 1; // the second event's position
        ks.insert(index::event_key("a|1", 1), run.clone()).unwrap();
        ks.insert(index::event_key("z|1", 1), run.clone()).unwrap();
        ks.insert(index::event_key("z|2", 1), run).unwrap();
    });
    let problems = verify::verify(dir.path()).unwrap().problems.join("\n");
    assert!(problems.contains("index has no entry for events a|2#1 to #1"), "{problems}");
    assert!(problems.contains("event run of a|1#1 holds"), "{problems}");
    assert!(problems.contains("index holds 3 event run entries, the log's indexed frames 2"), "{problems}");
}

/// An index of an older layout (format 1 had one tag entry per event and no
/// format key) is rebuilt from the log when the journal opens, and then read.
#[test]
fn an_index_of_another_format_is_rebuilt_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &["x"]), ev("a|1", 2, &["x"])], ..WriteBatch::default() }).unwrap();
    drop(j);
    edit_index(dir.path(), |ks| {
        assert!(ks.get(b"\0format").unwrap().is_some(), "a new index says its format");
        ks.remove(b"\0format").unwrap();
        // Format 1's tag entry for offset 2: one location, which this format cannot read.
        ks.insert(keys::tag_key("x", 2), [7u8; 20]).unwrap();
    });
    let err = index::Index::open(&log_journal::index_dir(dir.path())).err().expect("another format is refused");
    assert!(err.to_string().contains(&format!("format 1, this mneme keeps format {}", index::FORMAT)), "{err}");
    let j = open_log(dir.path()).unwrap();
    assert_eq!(j.events_by_tag("x", 0, 10).unwrap().iter().map(|e| e.seq_nr).collect::<Vec<_>>(), vec![1, 2]);
    drop(j);
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// `mneme journal verify` finds a tag list that is missing, that points elsewhere
/// or that the log does not have.
#[test]
fn verify_checks_tag_lists_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &["x"]), ev("a|2", 1, &["x", "y"])], ..WriteBatch::default() })
        .unwrap();
    j.write(&WriteBatch { events: vec![ev("a|1", 2, &["x"])], ..WriteBatch::default() }).unwrap();
    drop(j);
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    edit_index(dir.path(), |ks| {
        ks.remove(keys::tag_key("y", 2)).unwrap();
        let mut list = ks.get(keys::tag_key("x", 3)).unwrap().unwrap().to_vec();
        list[16] ^= 1; // the event's position
        ks.insert(keys::tag_key("x", 3), list).unwrap();
        let copy = ks.get(keys::tag_key("x", 1)).unwrap().unwrap();
        ks.insert(keys::tag_key("z", 1), copy.clone()).unwrap();
        ks.insert(keys::tag_key("w", 1), copy).unwrap();
    });
    let problems = verify::verify(dir.path()).unwrap().problems.join("\n");
    assert!(problems.contains("index has no tag list of `y` from offset 2"), "{problems}");
    assert!(problems.contains("tag list of `x` from offset 3 holds"), "{problems}");
    assert!(problems.contains("index holds 4 tag entries, the log's indexed frames 3"), "{problems}");
}

/// `mneme journal verify` checks the outbox's records and index entries, and
/// `mneme journal reindex` rebuilds them from the log.
#[test]
fn verify_and_reindex_cover_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let j = open_log(dir.path()).unwrap();
    let outbox = OutboxBatch {
        entries: vec![entry("a|1#1.0", "2"), entry("a|1#1.1", "3")],
        applied: vec![applied("a|1", "z|9#4.0")],
        published: vec![message("news", "one"), message("news", "two")],
        ..Default::default()
    };
    j.write(&WriteBatch { events: vec![ev("a|1", 1, &[])], outbox, ..WriteBatch::default() }).unwrap();
    j.write(&WriteBatch {
        outbox: OutboxBatch { done: vec!["a|1#1.1".into()], ..Default::default() },
        ..WriteBatch::default()
    })
    .unwrap();
    drop(j);
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let counts = (report.outbox_entries, report.outbox_pending, report.applied_keys, report.topic_messages);
    assert_eq!(counts, (2, 1, 1, 2));

    log_journal::reindex(dir.path()).unwrap();
    let j = open_log(dir.path()).unwrap();
    assert_eq!(j.outbox_pending().unwrap(), vec![entry("a|1#1.0", "2")]);
    assert!(j.is_applied("a|1", "z|9#4.0").unwrap());
    assert_eq!(j.topic_head("news").unwrap(), 2);

    // What the journal does not refuse but must never happen: a key applied twice
    // by one entity, a done record of an entry that is not pending.
    let twice =
        OutboxBatch { applied: vec![applied("a|1", "z|9#4.0")], done: vec!["never-sent".into()], ..Default::default() };
    j.write(&WriteBatch { outbox: twice, ..WriteBatch::default() }).unwrap();
    drop(j);
    let report = verify::verify(dir.path()).unwrap();
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("idempotency key `z|9#4.0` applied by a|1") && problems.contains("applied twice"),
        "{problems}"
    );
    assert!(problems.contains("done record") && problems.contains("`never-sent`, which is not pending"), "{problems}");
}

/// Projections on the journals that store them (the commit log and PostgreSQL;
/// sled refuses them, `views_tests.rs`).
mod projections {
    use super::*;

    #[test]
    fn log() {
        batches_are_stored_once_with_their_offset_and_survive_a_reopen(super::open_log)
    }

    #[test]
    fn postgres() {
        batches_are_stored_once_with_their_offset_and_survive_a_reopen(super::open_postgres)
    }

    fn offset(projection: &str, generation: u32, offset: u64, live: bool) -> ProjectionOffset {
        ProjectionOffset {
            projection: projection.into(),
            generation,
            offset,
            view_version: 3,
            component_version: u64::MAX - 1,
            live,
        }
    }

    fn put(key: &str, value: &str) -> ViewUpdate {
        ViewUpdate::Put { key: key.into(), value: value.as_bytes().to_vec() }
    }

    fn batch(generation: u32, previous_offset: u64, to: u64, updates: Vec<ViewUpdate>) -> ProjectionBatch {
        ProjectionBatch { offset: offset("balances", generation, to, true), previous_offset, updates, fence: None }
    }

    fn scan(j: &dyn Journal, generation: u32, prefix: &str, from: &str, limit: usize) -> Vec<(String, String)> {
        let page = j.view_scan("balances", generation, prefix, from, limit).unwrap();
        page.into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn batches_are_stored_once_with_their_offset_and_survive_a_reopen(open: Opener) {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path()).unwrap();
        j.write(&WriteBatch { events: vec![ev("a|1", 1, &["t"]), ev("a|1", 2, &["t"])], ..WriteBatch::default() })
            .unwrap();
        let head = j.head();
        assert_eq!(j.projection_offsets("balances").unwrap(), vec![]);
        assert_eq!(j.view_get("balances", 1, "alice").unwrap(), None);

        j.write_projection(&batch(1, 0, 1, vec![put("alice", "1"), put("bob", "2"), put("ali", "3")])).unwrap();
        assert_eq!(j.head(), head, "a projection batch holds no events");
        assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"1".to_vec()));
        assert_eq!(j.view_get("balances", 2, "alice").unwrap(), None, "generations are apart");
        assert_eq!(j.projection_offsets("balances").unwrap(), vec![offset("balances", 1, 1, true)]);

        // The same batch again (computed again after a crash) is refused, and so
        // is one that does not continue from the stored offset; neither changes
        // anything.
        let again = j.write_projection(&batch(1, 0, 1, vec![put("alice", "9")])).unwrap_err();
        assert!(matches!(&again, JournalError::Invalid(m) if m.contains("is at offset 1")), "{again}");
        let ahead = j.write_projection(&batch(1, 2, 3, vec![put("alice", "9")])).unwrap_err();
        assert!(matches!(ahead, JournalError::Invalid(_)), "a batch must continue from the stored offset");
        assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"1".to_vec()));
        let bad = j.write_projection(&batch(1, 1, 2, vec![put("alice", "1"), put("alice", "2")])).unwrap_err();
        assert!(matches!(&bad, JournalError::Invalid(m) if m.contains("twice")), "{bad}");

        j.write_projection(&batch(1, 1, 2, vec![put("alice", "4"), ViewUpdate::Delete { key: "bob".into() }])).unwrap();
        assert_eq!(j.view_get("balances", 1, "alice").unwrap(), Some(b"4".to_vec()));
        assert_eq!(j.view_get("balances", 1, "bob").unwrap(), None);
        assert_eq!(scan(&*j, 1, "", "", 10), pairs(&[("ali", "3"), ("alice", "4")]));
        assert_eq!(scan(&*j, 1, "ali", "", 10), pairs(&[("ali", "3"), ("alice", "4")]));
        assert_eq!(scan(&*j, 1, "alic", "", 10), pairs(&[("alice", "4")]));
        assert_eq!(scan(&*j, 1, "", "alia", 10), pairs(&[("alice", "4")]), "from_key, in key order");
        assert_eq!(scan(&*j, 1, "", "alice", 10), pairs(&[("alice", "4")]), "from_key is inclusive");
        assert_eq!(scan(&*j, 1, "", "", 1), pairs(&[("ali", "3")]));
        assert_eq!(scan(&*j, 1, "b", "", 10), vec![]);

        // Bytewise key order, whatever the database's collation.
        j.write_projection(&batch(1, 2, 2, vec![put("Zed", "z"), put("alice\u{e9}", "e"), put("alicE", "E")])).unwrap();
        let keys: Vec<String> = scan(&*j, 1, "", "", 10).into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["Zed", "ali", "alicE", "alice", "alice\u{e9}"]);
        assert_eq!(scan(&*j, 1, "alice", "", 10), pairs(&[("alice", "4"), ("alice\u{e9}", "e")]));

        // A second generation beside the first; a projection whose name starts
        // with the first's stays apart.
        j.write_projection(&batch(2, 0, 2, vec![put("alice", "x")])).unwrap();
        let mut other = batch(1, 0, 2, vec![put("alice", "other")]);
        other.offset.projection = "balances2".into();
        j.write_projection(&other).unwrap();
        assert_eq!(scan(&*j, 2, "", "", 10), pairs(&[("alice", "x")]));
        let gens: Vec<u32> = j.projection_offsets("balances").unwrap().iter().map(|o| o.generation).collect();
        assert_eq!(gens, vec![1, 2]);
        assert_eq!(j.projection_offsets("balances2").unwrap(), vec![offset("balances2", 1, 2, true)]);

        // Everything is there after a reopen, and writing continues from the
        // stored offset.
        drop(j);
        let j = open(dir.path()).unwrap();
        assert_eq!(scan(&*j, 1, "ali", "", 10).len(), 4);
        assert_eq!(j.projection_offsets("balances").unwrap()[0], offset("balances", 1, 2, true));
        let stale = j.write_projection(&batch(1, 1, 2, vec![put("carol", "9")])).unwrap_err();
        assert!(matches!(&stale, JournalError::Invalid(m) if m.contains("is at offset 2")), "{stale}");
        j.write_projection(&batch(1, 2, 2, vec![put("carol", "3")])).unwrap();
        assert_eq!(j.view_get("balances", 1, "carol").unwrap(), Some(b"3".to_vec()));
    }
}
