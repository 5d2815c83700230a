//! Durable timers: the `schedule` side effect.
//!
//! A timer is written to the journal's timer store (synced) before it is armed,
//! delivered as a command to its target entity when due, then removed. Timers that
//! were due while the host was down are delivered at start.
//!
//! Architecture invariant: timers reach entities only through the [`Router`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::clock::now_ms;
use crate::journal::{Journal, Timer};
use crate::router::Router;

pub enum TimerMsg {
    Schedule(TimerRequest),
    Stop,
}

pub struct TimerRequest {
    pub delay_ms: u64,
    pub entity_type: String,
    pub entity_id: String,
    pub payload: Vec<u8>,
}

pub fn spawn(journal: Arc<dyn Journal>, router: Router, rx: Receiver<TimerMsg>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("mneme-timers".into())
        .spawn(move || run(journal, router, rx))
        .expect("spawn timer thread")
}

fn run(journal: Arc<dyn Journal>, router: Router, rx: Receiver<TimerMsg>) {
    let mut armed: BTreeMap<(u64, u64), Timer> = BTreeMap::new();
    match journal.timers() {
        Ok(ts) => armed.extend(ts.into_iter().map(|t| ((t.due_ms, t.id), t))),
        Err(e) => tracing::error!("cannot load stored timers: {e}"),
    }
    loop {
        let now = now_ms();
        while let Some(entry) = armed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            router.tell(t.entity_type, t.entity_id, t.payload);
            if let Err(e) = journal.remove_timer(t.id) {
                tracing::error!(timer = t.id, "cannot remove delivered timer: {e}");
            }
        }
        let wait = armed
            .keys()
            .next()
            .map_or(Duration::from_secs(3600), |(due, _)| Duration::from_millis(due.saturating_sub(now)));
        match rx.recv_timeout(wait) {
            Ok(TimerMsg::Stop) => return,
            Ok(TimerMsg::Schedule(req)) => {
                let stored = journal.next_timer_id().and_then(|id| {
                    let t = Timer {
                        id,
                        due_ms: now_ms() + req.delay_ms,
                        entity_type: req.entity_type,
                        entity_id: req.entity_id,
                        payload: req.payload,
                    };
                    journal.put_timer(&t).map(|_| t)
                });
                match stored {
                    Ok(t) => {
                        armed.insert((t.due_ms, t.id), t);
                    }
                    Err(e) => tracing::error!("cannot store timer, dropped: {e}"),
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
