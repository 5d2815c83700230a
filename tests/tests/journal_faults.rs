//! A disk that fails under the engine, for real: the commit log's I/O layer
//! injects real OS errors (`EIO` on `pwrite`, short writes, a failed
//! `fdatasync`, `ENOSPC` when a segment is created) on a schedule while clients
//! send commands. Nothing acknowledged may be lost, nothing that failed may
//! become visible (now or after a restart), and the writer serves again once the
//! faults stop, without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use mneme::component::{sandbox::Runtime, Registry, SandboxLimits};
use mneme::journal::log::{FaultyIo, LogIo, LogOptions, StdIo, When};
use mneme::journal::{DataLock, Journal, LogJournal};
use mneme::{CommandError, Engine, EngineConfig, Outcome};
use mneme_tests::example;

const ACCOUNTS: u64 = 8;

fn start_engine(data: &Path, io: Arc<dyn LogIo>) -> (Engine, Arc<dyn Journal>) {
    let options = LogOptions { segment_bytes: 64 << 10 };
    let journal: Arc<dyn Journal> =
        Arc::new(LogJournal::open_with(data, DataLock::acquire(data).unwrap(), options, io).unwrap());
    let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), data).unwrap());
    registry.deploy("bank-account", &std::fs::read(example("bank-account")).unwrap()).unwrap();
    let config = EngineConfig { shards: 2, ..EngineConfig::default() };
    (Engine::start(config, journal.clone(), registry), journal)
}

/// Deposits sent by one client thread, each with a unique amount.
#[derive(Default)]
struct Outcomes {
    acknowledged: BTreeMap<String, BTreeSet<u64>>,
    failed: BTreeMap<String, BTreeSet<u64>>,
}

/// `rounds` deposits to every account from several threads at once.
fn send_round(engine: &Engine, round: u64, out: &mut Outcomes) {
    let results: Vec<_> = (0..ACCOUNTS)
        .map(|a| {
            let amount = round * 1000 + a + 1;
            let cmd = format!(r#"{{"type":"Deposit","amount":{amount}}}"#);
            let rx = engine.submit("bank-account", &format!("a{a}"), String::new(), cmd.into_bytes()).unwrap();
            (format!("a{a}"), amount, rx)
        })
        .collect();
    for (id, amount, rx) in results {
        match rx.blocking_recv().unwrap() {
            Ok(Outcome::Reply(_)) => out.acknowledged.entry(id).or_default().insert(amount),
            Err(CommandError::WriteFailed(_)) | Err(CommandError::JournalUnavailable(_)) => {
                out.failed.entry(id).or_default().insert(amount)
            }
            other => panic!("deposit {amount} to {id}: {other:?}"),
        };
    }
}

/// The deposited amounts stored per account, checking seq nrs are gapless.
fn stored(journal: &dyn Journal) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    for a in 0..ACCOUNTS {
        let events = journal.events(&format!("bank-account|a{a}"), 1, usize::MAX).unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq_nr, i as u64 + 1, "a{a}: gap in sequence numbers");
        }
        let amounts = events
            .iter()
            .filter(|e| e.manifest == "Deposited")
            .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["amount"].as_u64().unwrap())
            .collect();
        out.insert(format!("a{a}"), amounts);
    }
    out
}

fn check(stored: &BTreeMap<String, Vec<u64>>, out: &Outcomes, when: &str) {
    for (id, amounts) in stored {
        let set: BTreeSet<u64> = amounts.iter().copied().collect();
        assert_eq!(set.len(), amounts.len(), "{when}: {id} has a deposit stored twice");
        let acked = out.acknowledged.get(id).cloned().unwrap_or_default();
        assert!(acked.is_subset(&set), "{when}: {id} lost acknowledged deposits {:?}", acked.difference(&set));
        let failed = out.failed.get(id).cloned().unwrap_or_default();
        assert!(set.is_disjoint(&failed), "{when}: {id} shows failed deposits {:?}", set.intersection(&failed));
        assert_eq!(set, acked, "{when}: {id} stores exactly the acknowledged deposits");
    }
}

#[test]
fn injected_disk_faults_lose_nothing_acknowledged_show_nothing_failed_and_heal_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyIo::new();
    let (engine, journal) = start_engine(dir.path(), faulty.clone());
    for a in 0..ACCOUNTS {
        engine.send_blocking("bank-account", &format!("a{a}"), br#"{"type":"CreateAccount"}"#.to_vec()).unwrap();
    }
    let mut out = Outcomes::default();
    let mut round = 0;
    // (what, arm it, whether it lasts until cleared)
    type Arm<'a> = (&'a str, Box<dyn Fn() + 'a>, bool);
    let arm: Vec<Arm> = vec![
        ("failed pwrite", Box::new(|| faulty.fail_writes(When::Nth(2))), false),
        ("short write", Box::new(|| faulty.short_writes(When::Nth(1), 17)), false),
        ("failed fdatasync", Box::new(|| faulty.fail_syncs(When::Nth(1))), false),
        ("every fdatasync fails", Box::new(|| faulty.fail_syncs(When::Every)), true),
        ("no space for a new segment", Box::new(|| faulty.no_space(When::Every)), true),
        ("every pwrite fails", Box::new(|| faulty.fail_writes(When::Every)), true),
    ];
    for (what, fault, lasting) in &arm {
        fault();
        let failed_before = out.failed.values().map(BTreeSet::len).sum::<usize>();
        // Enough rounds to fill a 64 KiB segment, so a new one is needed.
        for _ in 0..60 {
            round += 1;
            send_round(&engine, round, &mut out);
        }
        let failed_now = out.failed.values().map(BTreeSet::len).sum::<usize>();
        assert!(failed_now > failed_before, "{what}: no command failed, so the fault was not injected");
        if *lasting {
            assert!(engine.journal().health().is_err(), "{what}: /health must report the failing journal");
        }
        faulty.clear();
        // The same engine serves again: a round fully acknowledged.
        let mut healed = false;
        for _ in 0..50 {
            round += 1;
            let mut probe = Outcomes::default();
            send_round(&engine, round, &mut probe);
            let all_ok = probe.failed.is_empty();
            for (id, a) in probe.acknowledged {
                out.acknowledged.entry(id).or_default().extend(a);
            }
            for (id, a) in probe.failed {
                out.failed.entry(id).or_default().extend(a);
            }
            if all_ok {
                healed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(healed, "{what}: the journal did not serve again after the fault stopped");
        assert!(engine.journal().health().is_ok(), "{what}: healthy again");
        check(&stored(&*journal), &out, what);
    }
    assert!(faulty.injected() > 0);
    engine.shutdown();
    drop((engine, journal));
    // After a restart on a healthy disk: exactly the acknowledged deposits.
    let (engine, journal) = start_engine(dir.path(), Arc::new(StdIo));
    check(&stored(&*journal), &out, "after a restart");
    let acked: usize = out.acknowledged.values().map(BTreeSet::len).sum();
    let failed: usize = out.failed.values().map(BTreeSet::len).sum();
    println!(
        "{acked} deposits acknowledged and stored, {failed} failed and absent, {} faults injected",
        faulty.injected()
    );
    engine.shutdown();
}
