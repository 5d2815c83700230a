//! The outbox: delivers the commands entities `send` and `schedule`, at least
//! once, after the frame holding them is durable.
//!
//! ```text
//!  shard: events + entry (key K) ──► one frame ──► durable ──► Deliver(entry) ──► here
//!  here:  when due ──► target's shard, with origin {source, K}
//!  target shard: K applied before? ── yes ──► acknowledged, not applied again
//!                                   └─ no ───► handled; its events + "applied K" in one frame
//!  outcome ──► here: settled ──► "done K" (a frame of its own, group-committed)
//!                    or to try again (write failed, journal unavailable, ...) ──► backoff
//! ```
//!
//! Guarantees, and why:
//!
//! * **At least once.** An entry is in the journal before it is delivered, and
//!   stays pending until its done record is durable; pending entries are loaded
//!   and delivered again at start. A crash anywhere in between delivers again.
//! * **Applied at most once.** The target records the keys it applied in the
//!   same frame as the events (and outbox records) the command produced, and
//!   checks a command's key before handing it to the entity, so a redelivered
//!   command is acknowledged without being applied twice (`shard/command.rs`).
//!   A command that persists nothing and sends nothing leaves no record: handling
//!   it again changes nothing.
//! * **Settled or retried.** An outcome settles the entry (done) when handling it
//!   again would end the same way: any reply (an error reply too), `unhandled`, a
//!   malformed command, the journal's rejection (the last three logged as errors
//!   with the key). Anything that may pass is retried with a backoff from 100 ms
//!   to 30 s: a write that failed, the journal unavailable, a full stash, a stop,
//!   recovery failing, an entity type not (yet) deployed, and a guest fault (a
//!   deadline hit on a busy machine passes; a bug is fixed by deploying a new
//!   version, and the command then goes through instead of being lost; logged as
//!   an error at the 1st, 2nd, 4th, 8th, ... attempt).
//!
//! Not guaranteed: the order of deliveries across retries and restarts (a
//! command retried may arrive after a later one of the same sender). A command
//! stuck in its target's stash is not retried until a restart.
//!
//! **Several hosts.** An entry is delivered by the host that owns its target's
//! partition (`cluster/`): each host keeps only the entries whose target it owns,
//! and reads the journal's pending entries every [`RELOAD`] for those another
//! host wrote (or that it came to own by a failover). A delivery that finds its
//! target owned elsewhere is forgotten here, not settled: the owner delivers it.
//! The idempotency keys make a delivery by two hosts at once harmless.
//!
//! Timers stored by earlier versions (`Journal::timers`) are delivered when due
//! and removed, as before (without an idempotency key).
//!
//! Architecture invariant: the outbox reaches entities only through the
//! [`Router`], and the journal's writes only through the writer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock::now_ms;
use crate::cluster::Ownership;
use crate::error::{CommandError, CommandResult};
use crate::journal::{Journal, OutboxBatch, OutboxEntry, Timer, WriteBatch};
use crate::metrics::Metrics;
use crate::names::persistence_id;
use crate::router::{Envelope, Origin, Outcome, ReplyTo, Router};
use crate::telemetry;
use crate::writer::{WriteRequest, Writer, WriterMsg};

/// Deliveries waiting for their outcome at once, at most.
const MAX_IN_FLIGHT: usize = 4096;
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 30_000;
/// With several hosts: how often the pending entries are read again.
const RELOAD: Duration = Duration::from_millis(500);

pub enum OutboxMsg {
    /// Entries whose frame is durable: deliver them (when due).
    Deliver(Vec<OutboxEntry>),
    /// How a delivery ended, from the target's shard.
    Delivered { key: String, result: CommandResult<Outcome> },
    /// The write of done records finished.
    DoneWritten { keys: Vec<String>, result: Result<(), String> },
    /// Write the done records known so far, then stop.
    Stop,
}

/// Start the outbox: the entries pending in the journal (and the timers stored by
/// earlier versions) are loaded here, before any shard can add new ones, and
/// delivered first.
pub fn spawn(
    journal: Arc<dyn Journal>,
    router: Router,
    writer: Writer,
    metrics: Arc<Metrics>,
    ownership: Option<Arc<Ownership>>,
) -> (Sender<OutboxMsg>, std::thread::JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut outbox = Outbox {
        journal,
        router,
        writer,
        metrics,
        ownership,
        next_reload: 0,
        me: tx.clone(),
        entries: HashMap::new(),
        queue: BTreeMap::new(),
        order: 0,
        in_flight: 0,
        done: Vec::new(),
        writing_done: false,
        done_retry_at: 0,
        timers: BTreeMap::new(),
    };
    outbox.load();
    let thread = std::thread::Builder::new()
        .name("mneme-outbox".into())
        .spawn(move || outbox.run(rx))
        .expect("spawn outbox thread");
    (tx, thread)
}

struct Pending {
    entry: OutboxEntry,
    /// Deliveries tried so far.
    attempts: u32,
}

struct Outbox {
    journal: Arc<dyn Journal>,
    router: Router,
    writer: Writer,
    metrics: Arc<Metrics>,
    /// With several hosts: what this host owns.
    ownership: Option<Arc<Ownership>>,
    /// With several hosts: when to read the pending entries again.
    next_reload: u64,
    me: Sender<OutboxMsg>,
    /// Entries not settled yet (waiting or in flight), by key.
    entries: HashMap<String, Pending>,
    /// Entries waiting, by when to deliver them (then arrival order).
    queue: BTreeMap<(u64, u64), String>,
    order: u64,
    in_flight: usize,
    /// Keys settled, whose done records are still to be written.
    done: Vec<String>,
    writing_done: bool,
    /// After a failed write of done records, not before this time.
    done_retry_at: u64,
    /// Timers stored by earlier versions, by due time and id.
    timers: BTreeMap<(u64, u64), Timer>,
}

impl Outbox {
    fn load(&mut self) {
        match self.journal.outbox_pending() {
            Ok(entries) => {
                if !entries.is_empty() {
                    tracing::info!(entries = entries.len(), "outbox: delivering the entries pending at start");
                }
                self.metrics.outbox_recovered_total.fetch_add(entries.len() as u64, Relaxed);
                self.add(entries);
            }
            Err(e) => tracing::error!("outbox: cannot load the pending entries (delivered after a restart): {e}"),
        }
        match self.journal.timers() {
            Ok(ts) => self.timers.extend(ts.into_iter().map(|t| ((t.due_ms, t.id), t))),
            Err(e) => tracing::error!("outbox: cannot load stored timers: {e}"),
        }
    }

    /// Whether this host delivers `entry`: alone, every entry; with several
    /// hosts, those whose target's partition it owns.
    fn delivers(&self, entry: &OutboxEntry) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|o| o.epoch_of(&persistence_id(&entry.target_type, &entry.target_id)).is_some())
    }

    /// With several hosts: the pending entries another host wrote for targets this
    /// host owns.
    fn reload(&mut self, now: u64) {
        if self.ownership.is_none() || now < self.next_reload {
            return;
        }
        self.next_reload = now + RELOAD.as_millis() as u64;
        match self.journal.outbox_pending() {
            Ok(entries) => self.add(entries),
            Err(e) => tracing::warn!("outbox: cannot read the pending entries: {e}"),
        }
    }

    fn add(&mut self, entries: Vec<OutboxEntry>) {
        for entry in entries {
            if self.entries.contains_key(&entry.key) || !self.delivers(&entry) {
                continue;
            }
            self.enqueue(entry.key.clone(), entry.due_ms);
            self.entries.insert(entry.key.clone(), Pending { entry, attempts: 0 });
        }
        self.report_pending();
    }

    fn enqueue(&mut self, key: String, at_ms: u64) {
        self.order += 1;
        self.queue.insert((at_ms, self.order), key);
    }

    fn report_pending(&self) {
        self.metrics.outbox_pending.store(self.entries.len() as u64, Relaxed);
    }

    fn run(mut self, rx: Receiver<OutboxMsg>) {
        loop {
            let now = now_ms();
            self.reload(now);
            self.deliver_due(now);
            self.fire_timers(now);
            self.write_done(now);
            let next = [
                self.queue.keys().next().map(|(at, _)| *at).filter(|_| self.in_flight < MAX_IN_FLIGHT),
                self.timers.keys().next().map(|(due, _)| *due),
                (!self.done.is_empty() && !self.writing_done).then_some(self.done_retry_at),
                self.ownership.is_some().then_some(self.next_reload),
            ];
            let wait = next
                .into_iter()
                .flatten()
                .min()
                .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now)));
            let msg = match rx.recv_timeout(wait) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            for msg in std::iter::once(msg).chain(rx.try_iter()) {
                match msg {
                    OutboxMsg::Deliver(entries) => self.add(entries),
                    OutboxMsg::Delivered { key, result } => self.delivered(key, result),
                    OutboxMsg::DoneWritten { keys, result } => {
                        self.writing_done = false;
                        if let Err(e) = result {
                            tracing::warn!(entries = keys.len(), "outbox: writing done records failed, retrying: {e}");
                            self.done.extend(keys);
                            self.done_retry_at = now_ms() + FIRST_BACKOFF_MS;
                        }
                    }
                    OutboxMsg::Stop => {
                        // Settled deliveries are recorded if the writer can still
                        // take them; any other is delivered again after the restart.
                        self.write_done(0);
                        return;
                    }
                }
            }
        }
    }

    /// Hand every due entry to its target, up to [`MAX_IN_FLIGHT`] at once.
    fn deliver_due(&mut self, now: u64) {
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(entry) = self.queue.first_entry() else { return };
            if entry.key().0 > now {
                return;
            }
            let key = entry.remove();
            let Some(pending) = self.entries.get_mut(&key) else { continue };
            pending.attempts += 1;
            let e = &pending.entry;
            let answer = Answer { key: Some(key.clone()), me: self.me.clone() };
            let env = Envelope {
                entity_type: e.target_type.clone(),
                entity_id: e.target_id.clone(),
                manifest: String::new(),
                payload: e.payload.clone(),
                accepted_ms: now,
                accepted: std::time::Instant::now(),
                reply_to: ReplyTo::Callback(Box::new(move |result| answer.send(result))),
                span: telemetry::command_span(&tracing::Span::none(), &e.target_type, &e.target_id, Some(key.as_str())),
                origin: Some(Origin { source: e.source.clone(), key: key.clone() }),
            };
            self.metrics.outbox_deliveries_total.fetch_add(1, Relaxed);
            self.in_flight += 1;
            if self.router.deliver(env).is_err() {
                // The shards have stopped (shutting down): the envelope, dropped,
                // answers that it must be tried again; the journal keeps it pending.
                return;
            }
        }
    }

    fn delivered(&mut self, key: String, result: CommandResult<Outcome>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(pending) = self.entries.get(&key) else { return };
        match result {
            Ok(_) => self.settle(key),
            Err(CommandError::NotOwner { .. }) => {
                // Another host owns the target now: it delivers the entry.
                self.entries.remove(&key);
                self.report_pending();
            }
            Err(e) if settles(&e) => {
                tracing::error!(key, "outbox: delivered command failed for good, not retried: {e}");
                self.metrics.outbox_failed_total.fetch_add(1, Relaxed);
                self.settle(key);
            }
            Err(e) => {
                let attempts = pending.attempts;
                let backoff = FIRST_BACKOFF_MS.saturating_mul(1 << attempts.min(16)).min(MAX_BACKOFF_MS);
                let lasting = matches!(e, CommandError::UnknownType(_) | CommandError::GuestFault { .. });
                if lasting && attempts.is_power_of_two() {
                    tracing::error!(key, attempts, "outbox: delivery failed, retrying in {backoff} ms: {e}");
                } else if attempts == 1 {
                    tracing::warn!(key, attempts, "outbox: delivery failed, retrying in {backoff} ms: {e}");
                } else {
                    tracing::debug!(key, attempts, "outbox: delivery failed, retrying in {backoff} ms: {e}");
                }
                self.metrics.outbox_retries_total.fetch_add(1, Relaxed);
                self.enqueue(key, now_ms() + backoff);
            }
        }
    }

    fn settle(&mut self, key: String) {
        self.entries.remove(&key);
        self.done.push(key);
        self.report_pending();
    }

    /// Write the done records of settled entries: one write at a time, so they
    /// group like the shards' batches do.
    fn write_done(&mut self, now: u64) {
        if self.done.is_empty() || self.writing_done || now < self.done_retry_at {
            return;
        }
        let keys = std::mem::take(&mut self.done);
        let batch =
            WriteBatch { outbox: OutboxBatch { done: keys.clone(), ..OutboxBatch::default() }, ..Default::default() };
        let me = self.me.clone();
        let on_written = Box::new(move |result| {
            let _ = me.send(OutboxMsg::DoneWritten { keys, result });
        });
        self.writing_done = true;
        if self.writer.send(WriterMsg::Write(Box::new(WriteRequest { batch, on_written }))).is_err() {
            // The writer has stopped: these are delivered again after the restart.
            self.writing_done = false;
        }
    }

    /// Timers stored by earlier versions: delivered when due, then removed.
    fn fire_timers(&mut self, now: u64) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                return;
            }
            let t = entry.remove();
            let env = Envelope {
                span: telemetry::command_span(&tracing::Span::none(), &t.entity_type, &t.entity_id, None),
                entity_type: t.entity_type,
                entity_id: t.entity_id,
                manifest: String::new(),
                payload: t.payload,
                accepted_ms: now,
                accepted: std::time::Instant::now(),
                reply_to: ReplyTo::None,
                origin: None,
            };
            let _ = self.router.deliver(env);
            if let Err(e) = self.journal.remove_timer(t.id) {
                tracing::error!(timer = t.id, "cannot remove delivered timer: {e}");
            }
        }
    }
}

/// Brings a delivery's outcome back to the outbox; one dropped unanswered (its
/// command lost on the way, e.g. in a stopping shard's queue) answers that it
/// must be tried again, so no delivery stays in flight for good.
struct Answer {
    key: Option<String>,
    me: Sender<OutboxMsg>,
}

impl Answer {
    fn send(mut self, result: CommandResult<Outcome>) {
        if let Some(key) = self.key.take() {
            let _ = self.me.send(OutboxMsg::Delivered { key, result });
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let lost = CommandError::Dropped("the delivered command was dropped unanswered".into());
            let _ = self.me.send(OutboxMsg::Delivered { key, result: Err(lost) });
        }
    }
}

/// Whether a delivery that failed with `e` is settled: handling it again would
/// end the same way (see the module docs).
fn settles(e: &CommandError) -> bool {
    match e {
        CommandError::Unhandled { .. }
        | CommandError::Malformed(_)
        | CommandError::Rejected(_)
        | CommandError::InvalidId(_) => true,
        CommandError::GuestFault { .. }
        | CommandError::UnknownType(_)
        | CommandError::NotReady { .. }
        | CommandError::StashFull(..)
        | CommandError::WriteFailed(_)
        | CommandError::JournalUnavailable(_)
        | CommandError::JournalCorrupt(_)
        | CommandError::RecoveryFailed { .. }
        | CommandError::Dropped(_)
        | CommandError::NotOwner { .. }
        | CommandError::ShuttingDown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_dropped_unanswered_is_answered_to_be_tried_again() {
        let (tx, rx) = crossbeam_channel::unbounded();
        drop(Answer { key: Some("k".into()), me: tx.clone() });
        match rx.try_recv() {
            Ok(OutboxMsg::Delivered { key, result: Err(e) }) => assert!(key == "k" && !settles(&e)),
            _ => panic!("expected an answer"),
        }
        Answer { key: Some("k".into()), me: tx }.send(Ok(Outcome::NoReply));
        assert!(matches!(rx.try_recv(), Ok(OutboxMsg::Delivered { result: Ok(_), .. })));
        assert!(rx.try_recv().is_err(), "answered once");
    }

    #[test]
    fn failures_that_may_pass_are_retried_the_others_settle() {
        assert!(settles(&CommandError::Unhandled { entity_type: "t".into(), reason: None }));
        assert!(settles(&CommandError::Malformed("m".into())));
        assert!(!settles(&CommandError::GuestFault { entity_type: "t".into(), reason: "deadline".into() }));
        assert!(!settles(&CommandError::WriteFailed("disk".into())));
        assert!(!settles(&CommandError::JournalUnavailable("disk".into())));
        assert!(!settles(&CommandError::UnknownType("t".into())));
        assert!(!settles(&CommandError::StashFull("t|1".into(), 1)));
        assert!(!settles(&CommandError::ShuttingDown));
    }
}
