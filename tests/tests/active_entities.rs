//! The memory bound on live entities, through the real binary: `--max-active-entities`
//! passivates the least recently used idle entities, state queries of entities that
//! were never created keep nothing, and every entity still answers afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mneme_tests::{agent, components_dir, example, metric, Server};

#[test]
fn live_entities_stay_within_the_bound_and_all_still_answer() {
    const BOUND: u64 = 100;
    const IDS: usize = 10_000;
    const CLIENTS: usize = 4;
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &["--max-active-entities", "100", "--shards", "2"]);
    let metrics = |server: &Server| server.request("GET", "/metrics", b"").1;
    assert_eq!(metric::<u64>(&metrics(&server), "mneme_active_entities"), 0);

    // Sample the gauge while 10,000 distinct entities are created.
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, peak, url) = (stop.clone(), peak.clone(), server.url.clone());
        std::thread::spawn(move || {
            let agent = agent(None);
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let text = agent.get(format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
                peak.fetch_max(metric(&text, "mneme_active_entities"), Ordering::SeqCst);
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = server.url.clone();
            std::thread::spawn(move || {
                let agent = agent(None);
                for i in (c..IDS).step_by(CLIENTS) {
                    let r = agent
                        .post(format!("{url}/v1/entities/bank-account/e{i}"))
                        .send(r#"{"type":"CreateAccount"}"#.as_bytes())
                        .unwrap();
                    assert_eq!(r.status(), 200, "e{i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // State queries of entities that were never created keep nothing in memory.
    let live = metric::<u64>(&metrics(&server), "mneme_active_entities");
    for i in 0..1000 {
        let (s, state) = server.get(&format!("/v1/entities/bank-account/never-{i}/state"));
        assert_eq!((s, state["seq_nr"].as_u64()), (200, Some(0)), "never-{i}");
    }
    assert_eq!(metric::<u64>(&metrics(&server), "mneme_active_entities"), live, "queries of unknown ids kept entities");
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(samples > 10, "the gauge was sampled only {samples} times");
    assert!(peak <= BOUND, "{peak} entities were live at once, the bound is {BOUND}");
    assert!((BOUND / 2..=BOUND).contains(&live), "{live} live after the run");
    let text = metrics(&server);
    let passivated = metric::<u64>(&text, "mneme_passivations_total");
    assert!(passivated >= IDS as u64 - BOUND, "only {passivated} passivations");

    // Every entity recovers and answers correctly, the first ones (passivated
    // long ago) as well as the last ones (maybe still live).
    let sample: std::collections::BTreeSet<usize> = (0..IDS).step_by(97).chain(IDS - 20..IDS).collect();
    for i in sample {
        let (s, reply) = server.send("bank-account", &format!("e{i}"), r#"{"type":"Deposit","amount":5}"#);
        assert_eq!((s, reply["balance"].as_u64()), (200, Some(5)), "e{i}");
        let (s, state) = server.get(&format!("/v1/entities/bank-account/e{i}/state"));
        assert_eq!((s, state["seq_nr"].as_u64()), (200, Some(2)), "e{i}");
    }
    assert!(metric::<u64>(&metrics(&server), "mneme_active_entities") <= BOUND);
    // A never-created entity can still be created after being queried.
    assert_eq!(server.send("bank-account", "never-1", r#"{"type":"CreateAccount"}"#).0, 200);
}
