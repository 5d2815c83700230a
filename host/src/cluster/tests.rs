//! Leases and fencing on a real PostgreSQL server (`MNEME_TEST_POSTGRES_URL`):
//! hosts here are keepers and journals in one process, each with connections of
//! its own, as separate processes would have. `tests/tests/cluster.rs` runs whole
//! hosts.

use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::*;
use crate::journal::postgres::testing::database_for;
use crate::journal::tests::ev;
use crate::journal::{Journal, JournalError, PostgresJournal, WriteBatch};
use crate::names::partition_of;

const LEASE: Duration = Duration::from_millis(800);

fn config(node: &str) -> ClusterConfig {
    ClusterConfig { node: node.into(), advertise: format!("http://{node}.invalid"), lease: LEASE }
}

fn host(url: &str, node: &str) -> (PostgresJournal, Cluster) {
    let journal = PostgresJournal::open_shared(url).unwrap();
    let cluster = Cluster::start(journal.leases(), config(node)).unwrap();
    (journal, cluster)
}

/// Wait until `cond` holds (polling), or fail saying what was awaited.
fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn held(c: &Cluster) -> Vec<u32> {
    c.ownership().held().iter().map(|l| l.partition).collect()
}

/// A write of one event of `pid` at `seq` under the leases `cluster` holds now.
fn write(journal: &PostgresJournal, cluster: &Cluster, pid: &str, seq: u64, epoch: u64) -> Result<(), JournalError> {
    let fence = cluster.ownership().fence([(partition_of(pid), epoch)]);
    journal.write(&WriteBatch { events: vec![ev(pid, seq, &[])], fence: Some(fence), ..WriteBatch::default() })
}

#[test]
fn a_host_alone_holds_every_partition_and_a_second_takes_half() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let (_ja, a) = host(&url, "a");
    assert_eq!(held(&a).len(), PARTITIONS as usize, "a host alone owns every partition from its start");
    let (_jb, b) = host(&url, "b");
    eventually("the two hosts hold half each", Duration::from_secs(10), || {
        held(&a).len() == PARTITIONS as usize / 2 && held(&b).len() == PARTITIONS as usize / 2
    });
    let (ha, hb) = (held(&a), held(&b));
    assert!(ha.iter().all(|p| !hb.contains(p)), "no partition is held by both: {ha:?} {hb:?}");
    // Each host knows who holds the other's partitions, to forward to them.
    eventually("a knows b's partitions", Duration::from_secs(5), || {
        hb.iter().all(|&p| a.ownership().holder(p).is_some_and(|h| h.node == "b" && h.url == "http://b.invalid"))
    });
}

#[test]
fn a_dead_hosts_partitions_go_to_the_others_after_its_lease_and_a_clean_leave_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let (_ja, a) = host(&url, "a");
    let (_jb, b) = host(&url, "b");
    let (_jc, c) = host(&url, "c");
    // Fair share: at most ceil(64 / 3) = 22 each, so 22, 22 and 20.
    eventually("three hosts share the partitions", Duration::from_secs(10), || {
        let counts = [&a, &b, &c].map(|h| held(h).len());
        counts.iter().sum::<usize>() == PARTITIONS as usize && counts.iter().all(|n| (20..=22).contains(n))
    });
    let of_b = b.ownership().held();
    let died = Instant::now();
    b.halt();
    eventually("b's partitions are taken by a and c", Duration::from_secs(10), || {
        held(&a).len() + held(&c).len() == PARTITIONS as usize
    });
    assert!(died.elapsed() >= LEASE - LEASE / 5, "taken over only after b's lease ran out ({:?})", died.elapsed());
    for lease in &of_b {
        let now = a.ownership().epoch(lease.partition).or(c.ownership().epoch(lease.partition)).unwrap();
        assert!(now > lease.epoch, "partition {} taken over at a higher epoch", lease.partition);
    }
    let left = Instant::now();
    c.leave();
    eventually("a holds everything after c left", Duration::from_secs(5), || held(&a).len() == PARTITIONS as usize);
    assert!(left.elapsed() < LEASE, "a clean leave hands over without waiting for the lease ({:?})", left.elapsed());
}

#[test]
fn a_write_under_a_lost_lease_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let pid = "account|42";
    let p = partition_of(pid);
    let (ja, a) = host(&url, "a");
    let old = a.ownership().epoch(p).unwrap();
    write(&ja, &a, pid, 1, old).unwrap();
    // a stops renewing (a paused process); b takes the partition over.
    let stale_fence = a.ownership().fence([(p, old)]);
    a.halt();
    let (jb, b) = host(&url, "b");
    eventually("b holds the partition", Duration::from_secs(10), || b.ownership().epoch(p).is_some());
    let new = b.ownership().epoch(p).unwrap();
    assert!(new > old);
    // a wakes up and writes what it believes is the next event: refused.
    let stale = WriteBatch { events: vec![ev(pid, 2, &[])], fence: Some(stale_fence.clone()), ..WriteBatch::default() };
    match ja.write(&stale) {
        Err(JournalError::Fenced(why)) => {
            assert!(why.contains(&format!("partition {p} is held by b at epoch {new}")), "{why}")
        }
        other => panic!("a stale write must be fenced, got {other:?}"),
    }
    assert_eq!(ja.highest_seq_nr(pid).unwrap(), 1, "nothing of the fenced write is stored");
    // A fence must cover every entity the batch writes.
    let elsewhere = (0..).map(|i| format!("account|{i}")).find(|q| partition_of(q) != p).unwrap();
    let uncovered = WriteBatch {
        events: vec![ev(&elsewhere, 1, &[])],
        fence: Some(b.ownership().fence([(p, new)])),
        ..WriteBatch::default()
    };
    assert!(matches!(jb.write(&uncovered), Err(JournalError::Invalid(_))));
    // A shared journal refuses a write without leases.
    let unfenced = WriteBatch { events: vec![ev(pid, 2, &[])], ..WriteBatch::default() };
    assert!(matches!(jb.write(&unfenced), Err(JournalError::Invalid(_))));
    // The new owner continues the entity's history.
    write(&jb, &b, pid, 2, new).unwrap();
    let events = jb.events(pid, 1, 10).unwrap();
    assert_eq!(events.iter().map(|e| e.seq_nr).collect::<Vec<_>>(), vec![1, 2]);

    // Every event carries the epoch it was written under, and that epoch was
    // granted to the host that wrote it.
    let mut db = Client::connect(&url, NoTls).unwrap();
    let rows = db
        .query(
            "SELECT e.seq_nr, e.epoch, h.node_id FROM mneme.events e \
             LEFT JOIN mneme.lease_history h ON h.partition = $1 AND h.epoch = e.epoch \
             WHERE e.persistence_id = $2 ORDER BY e.seq_nr",
            &[&(p as i32), &pid],
        )
        .unwrap();
    let found: Vec<(i64, Option<i64>, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(found, vec![(1, Some(old as i64), Some("a".into())), (2, Some(new as i64), Some("b".into()))]);
}

#[test]
fn the_migration_makes_one_lease_row_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_for(dir.path());
    let _journal = PostgresJournal::open_shared(&url).unwrap();
    let mut db = Client::connect(&url, NoTls).unwrap();
    let row = db.query_one("SELECT count(*), min(partition), max(partition) FROM mneme.partitions", &[]).unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i32>(1), row.get::<_, i32>(2)),
        (PARTITIONS as i64, 0, PARTITIONS as i32 - 1)
    );
}
