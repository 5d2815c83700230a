//! Group-commit bookkeeping of one shard: the *open* batch that commands fill, and
//! at most one batch *in flight* at the writer.
//!
//! Pure data: nothing here talks to entities or channels. The shard asks
//! [`Batches`] what a finished or failed write means, then acts on the answer:
//! a [`DurableBatch`] releases its pending replies, a [`FailedBatch`] names the
//! entities to drop and the replies to fail.
//!
//! Rollback rule: when a write fails, every entity with anything in it (events,
//! or outbox records of a command that persisted none) loses its undurable work,
//! so its events, snapshots and outbox records are removed from the open batch
//! too (they were computed on top of the lost work) and its pending replies there
//! fail with the write.
//!
//! A batch also remembers the idempotency keys its commands applied, so a command
//! delivered again while the first delivery is not durable yet is recognised.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::CommandResult;
use crate::journal::{AppliedKey, NewEvent, OutboxBatch, Snapshot, WriteBatch};
use crate::router::{Envelope, Outcome};
use crate::side_effects::Released;

/// A command's reply and side effects, held until its batch is durable. Without
/// an envelope: side effects only (those of a recovery).
pub struct PendingReply {
    pub pid: String,
    pub envelope: Option<Envelope>,
    pub result: CommandResult<Outcome>,
    pub side_effects: Released,
}

/// An entity's newest sequence number and state within a batch.
pub type Touched = foldhash::HashMap<String, (u64, Arc<[u8]>)>;

#[derive(Default)]
struct Batch {
    id: u64,
    write: WriteBatch,
    /// Entities with events or outbox records in this batch, and their newest
    /// state in it.
    touched: Touched,
    replies: Vec<PendingReply>,
    /// Idempotency keys applied in this batch: (persistence id, key).
    applied: HashSet<(String, String)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.write.is_empty() && self.replies.is_empty()
    }
}

/// A batch whose events are durable: its entities' durable state advances and its
/// replies are released.
pub struct DurableBatch {
    pub id: u64,
    pub touched: Touched,
    pub replies: Vec<PendingReply>,
}

/// A batch whose write failed.
pub struct FailedBatch {
    pub id: u64,
    /// Entities with anything in the failed write: they recover from the journal.
    pub dropped: HashSet<String>,
    /// The replies of the failed batch, and those of the dropped entities that
    /// were waiting in the open batch: all fail.
    pub replies: Vec<PendingReply>,
}

/// What flushing the open batch gives the shard to do.
pub enum Flush {
    /// The open batch held only replies, whose events are already durable.
    Durable(DurableBatch),
    /// Hand this to the writer.
    Write { batch_id: u64, batch: WriteBatch },
}

pub struct Batches {
    open: Batch,
    in_flight: Option<Batch>,
    next_id: u64,
}

impl Batches {
    pub fn new() -> Self {
        Batches { open: Batch { id: 1, ..Batch::default() }, in_flight: None, next_id: 2 }
    }

    /// Nothing open, nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.open.is_empty()
    }

    /// Add an entity's events to the open batch, with its newest sequence number
    /// and state after them, and a snapshot of that state if one is due (it
    /// replaces an earlier snapshot of the entity in the same batch).
    pub fn add_events(
        &mut self,
        pid: &str,
        events: impl IntoIterator<Item = NewEvent>,
        seq_nr: u64,
        state: Arc<[u8]>,
        snapshot: Option<Snapshot>,
    ) -> u64 {
        self.open.write.events.extend(events);
        if let Some(s) = snapshot {
            self.open.write.snapshots.retain(|old| old.persistence_id != pid);
            self.open.write.snapshots.push(s);
        }
        self.open.touched.insert(pid.to_string(), (seq_nr, state));
        self.open.id
    }

    /// Add a command's outbox records (and the idempotency key it applied, if an
    /// entity sent it) to the open batch. `seq_nr` and `state` are the entity's
    /// newest, as with [`Batches::add_events`].
    pub fn add_outbox(
        &mut self,
        pid: &str,
        records: OutboxBatch,
        applied: Option<AppliedKey>,
        seq_nr: u64,
        state: Arc<[u8]>,
    ) -> u64 {
        if records.is_empty() && applied.is_none() {
            return self.open.id;
        }
        if let Some(a) = applied {
            self.open.applied.insert((a.persistence_id.clone(), a.key.clone()));
            self.open.write.outbox.applied.push(a);
        }
        self.open.write.outbox.append(records);
        self.open.touched.insert(pid.to_string(), (seq_nr, state));
        self.open.id
    }

    /// Whether `pid` applied `key` in a batch not yet durable.
    pub fn has_applied(&self, pid: &str, key: &str) -> bool {
        let probe = (pid.to_string(), key.to_string());
        self.open.applied.contains(&probe) || self.in_flight.as_ref().is_some_and(|b| b.applied.contains(&probe))
    }

    /// Hold a reply until the open batch is durable.
    pub fn hold_reply(&mut self, reply: PendingReply) -> u64 {
        self.open.replies.push(reply);
        self.open.id
    }

    /// Start the next write, unless one is in flight or nothing is open.
    pub fn take_for_write(&mut self) -> Option<Flush> {
        if self.in_flight.is_some() || self.open.is_empty() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut batch = std::mem::replace(&mut self.open, Batch { id, ..Batch::default() });
        // The next batch is likely the size of this one: grow its lists once.
        self.open.write.events.reserve(batch.write.events.len());
        self.open.replies.reserve(batch.replies.len());
        self.open.touched.reserve(batch.touched.len());
        if batch.write.is_empty() {
            return Some(Flush::Durable(DurableBatch { id: batch.id, touched: batch.touched, replies: batch.replies }));
        }
        let write = std::mem::take(&mut batch.write);
        let batch_id = batch.id;
        self.in_flight = Some(batch);
        Some(Flush::Write { batch_id, batch: write })
    }

    /// The in-flight batch is durable.
    pub fn written(&mut self, batch_id: u64) -> Option<DurableBatch> {
        let batch = self.in_flight.take()?;
        debug_assert_eq!(batch.id, batch_id);
        Some(DurableBatch { id: batch.id, touched: batch.touched, replies: batch.replies })
    }

    /// The in-flight batch failed: nothing of it is stored. Roll back the open
    /// batch's work of the same entities (see the module docs).
    pub fn failed(&mut self, batch_id: u64) -> Option<FailedBatch> {
        let batch = self.in_flight.take()?;
        debug_assert_eq!(batch.id, batch_id);
        let dropped: HashSet<String> = batch.touched.into_keys().collect();
        let open = &mut self.open;
        open.write.events.retain(|e| !dropped.contains(&e.persistence_id));
        open.write.snapshots.retain(|s| !dropped.contains(&s.persistence_id));
        let outbox = &mut open.write.outbox;
        outbox.entries.retain(|e| !dropped.contains(&e.source));
        outbox.published.retain(|m| !dropped.contains(&m.source));
        outbox.applied.retain(|a| !dropped.contains(&a.persistence_id));
        open.applied.retain(|(pid, _)| !dropped.contains(pid));
        open.touched.retain(|pid, _| !dropped.contains(pid));
        let (lost, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut open.replies).into_iter().partition(|r| dropped.contains(&r.pid));
        open.replies = kept;
        let mut replies = batch.replies;
        replies.extend(lost);
        Some(FailedBatch { id: batch.id, dropped, replies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ReplyTo;

    fn event(pid: &str, seq_nr: u64) -> NewEvent {
        NewEvent {
            persistence_id: pid.into(),
            seq_nr,
            timestamp_ms: 0,
            writer_id: "w".into(),
            manifest: "E".into(),
            tags: vec![],
            payload: vec![],
        }
    }

    fn reply(pid: &str) -> PendingReply {
        let envelope = Envelope {
            entity_type: "t".into(),
            entity_id: pid.into(),
            manifest: String::new(),
            payload: vec![],
            accepted_ms: 0,
            accepted: std::time::Instant::now(),
            reply_to: ReplyTo::None,
            origin: None,
            span: tracing::Span::none(),
        };
        PendingReply {
            pid: pid.into(),
            envelope: Some(envelope),
            result: Ok(Outcome::NoReply),
            side_effects: Released::default(),
        }
    }

    fn state(s: &str) -> Arc<[u8]> {
        s.as_bytes().into()
    }

    fn pids(replies: &[PendingReply]) -> Vec<&str> {
        replies.iter().map(|r| r.pid.as_str()).collect()
    }

    #[test]
    fn a_write_carries_the_open_batch_and_the_next_waits_for_it() {
        let mut b = Batches::new();
        assert!(b.is_idle() && b.take_for_write().is_none());
        let first = b.add_events("a", vec![event("a", 1)], 1, state("a1"), None);
        b.hold_reply(reply("a"));
        let Some(Flush::Write { batch_id, batch }) = b.take_for_write() else { panic!("expected a write") };
        assert_eq!((batch_id, batch.events.len()), (first, 1));
        // While it is in flight, new work goes into the next batch and waits.
        let second = b.add_events("a", vec![event("a", 2)], 2, state("a2"), None);
        assert_ne!(second, first);
        assert!(b.take_for_write().is_none(), "one write in flight at a time");
        let durable = b.written(first).unwrap();
        assert_eq!(pids(&durable.replies), ["a"]);
        assert_eq!(durable.touched["a"].0, 1);
        let Some(Flush::Write { batch, .. }) = b.take_for_write() else { panic!("expected the second write") };
        assert_eq!(batch.events[0].seq_nr, 2);
        b.written(second).unwrap();
        assert!(b.is_idle());
    }

    #[test]
    fn a_batch_of_held_replies_only_is_released_without_a_write() {
        let mut b = Batches::new();
        b.hold_reply(reply("a"));
        match b.take_for_write() {
            Some(Flush::Durable(d)) => assert_eq!(pids(&d.replies), ["a"]),
            _ => panic!("replies whose events are durable need no write"),
        }
        assert!(b.is_idle());
    }

    #[test]
    fn a_failed_write_rolls_back_the_open_work_of_its_entities_only() {
        let mut b = Batches::new();
        b.add_events("a", vec![event("a", 1)], 1, state("a1"), None);
        b.hold_reply(reply("a"));
        let Some(Flush::Write { batch_id, .. }) = b.take_for_write() else { panic!() };
        // Built on top of the in-flight events of `a`, and unrelated work of `b`.
        let snap = |pid: &str| Snapshot {
            persistence_id: pid.into(),
            seq_nr: 2,
            state_version: 1,
            timestamp_ms: 0,
            state: vec![],
        };
        b.add_events("a", vec![event("a", 2)], 2, state("a2"), Some(snap("a")));
        b.hold_reply(reply("a"));
        b.add_events("b", vec![event("b", 1)], 1, state("b1"), Some(snap("b")));
        b.hold_reply(reply("b"));

        let failed = b.failed(batch_id).unwrap();
        assert_eq!(failed.dropped, HashSet::from(["a".to_string()]));
        assert_eq!(pids(&failed.replies), ["a", "a"], "the failed batch's reply and the one built on it");
        let Some(Flush::Write { batch, .. }) = b.take_for_write() else { panic!("b's work is still to be written") };
        let events: Vec<_> = batch.events.iter().map(|e| (e.persistence_id.as_str(), e.seq_nr)).collect();
        assert_eq!(events, [("b", 1)]);
        assert_eq!(batch.snapshots.len(), 1);
        assert_eq!(batch.snapshots[0].persistence_id, "b");
    }

    fn entry(source: &str, key: &str) -> crate::journal::OutboxEntry {
        crate::journal::OutboxEntry {
            key: key.into(),
            source: source.into(),
            source_seq_nr: 1,
            due_ms: 0,
            created_ms: 0,
            target_type: "t".into(),
            target_id: "x".into(),
            payload: vec![],
        }
    }

    fn applied(pid: &str, key: &str) -> AppliedKey {
        AppliedKey { persistence_id: pid.into(), key: key.into(), source: "s|1".into(), seq_nr: 1 }
    }

    #[test]
    fn outbox_records_travel_with_the_events_and_roll_back_with_them() {
        let mut b = Batches::new();
        b.add_events("a", vec![event("a", 1)], 1, state("a1"), None);
        let records = OutboxBatch { entries: vec![entry("a", "a#1.0")], ..OutboxBatch::default() };
        b.add_outbox("a", records, Some(applied("a", "s#1.0")), 1, state("a1"));
        b.hold_reply(reply("a"));
        assert!(b.has_applied("a", "s#1.0") && !b.has_applied("b", "s#1.0"));
        let Some(Flush::Write { batch_id, batch }) = b.take_for_write() else { panic!() };
        assert_eq!((batch.events.len(), batch.outbox.entries.len(), batch.outbox.applied.len()), (1, 1, 1));
        assert!(b.has_applied("a", "s#1.0"), "in flight, not durable yet");
        // Built on the in-flight batch: a's outbox-only work, and b's.
        let records = OutboxBatch { entries: vec![entry("a", "a#1.0~w-0")], ..OutboxBatch::default() };
        b.add_outbox("a", records, Some(applied("a", "s#2.0")), 1, state("a1"));
        b.hold_reply(reply("a"));
        let records = OutboxBatch { entries: vec![entry("b", "b#0.0~w-1")], ..OutboxBatch::default() };
        b.add_outbox("b", records, None, 0, state("b0"));
        b.hold_reply(reply("b"));
        let failed = b.failed(batch_id).unwrap();
        assert_eq!(failed.dropped, HashSet::from(["a".to_string()]));
        assert_eq!(pids(&failed.replies), ["a", "a"]);
        assert!(!b.has_applied("a", "s#1.0") && !b.has_applied("a", "s#2.0"), "nothing of a is applied");
        let Some(Flush::Write { batch, .. }) = b.take_for_write() else { panic!("b's work is still to be written") };
        let keys: Vec<&str> = batch.outbox.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["b#0.0~w-1"]);
        assert!(batch.outbox.applied.is_empty());
    }

    #[test]
    fn a_later_snapshot_of_an_entity_replaces_the_earlier_one_in_the_same_batch() {
        let mut b = Batches::new();
        let snap =
            |seq_nr| Snapshot { persistence_id: "a".into(), seq_nr, state_version: 1, timestamp_ms: 0, state: vec![] };
        b.add_events("a", vec![event("a", 1)], 1, state("1"), Some(snap(1)));
        b.add_events("a", vec![event("a", 2)], 2, state("2"), Some(snap(2)));
        let Some(Flush::Write { batch, .. }) = b.take_for_write() else { panic!() };
        assert_eq!(batch.snapshots.iter().map(|s| s.seq_nr).collect::<Vec<_>>(), [2]);
    }
}
