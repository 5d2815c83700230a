//! Group-commit bookkeeping of one shard: the *open* batch that commands fill, and
//! at most one batch *in flight* at the writer.
//!
//! Pure data: nothing here talks to entities or channels. The shard asks
//! [`Batches`] what a finished or failed write means, then acts on the answer:
//! a [`DurableBatch`] releases its pending replies, a [`FailedBatch`] names the
//! entities to drop and the replies to fail.
//!
//! Rollback rule: when a write fails, every entity with events in it loses its
//! undurable work, so its events and snapshots are removed from the open batch too
//! (they were computed on top of the lost events) and its pending replies there
//! fail with the write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::component::bindings::mneme::entity::types::SideEffect;
use crate::error::CommandResult;
use crate::journal::{NewEvent, Snapshot, WriteBatch};
use crate::router::{Envelope, Outcome};

/// A command's reply and side effects, held until its batch is durable.
pub struct PendingReply {
    pub pid: String,
    pub envelope: Envelope,
    pub result: CommandResult<Outcome>,
    pub side_effects: Vec<SideEffect>,
}

/// An entity's newest sequence number and state within a batch.
pub type Touched = HashMap<String, (u64, Arc<[u8]>)>;

#[derive(Default)]
struct Batch {
    id: u64,
    write: WriteBatch,
    /// Entities with events in this batch, and their newest state in it.
    touched: Touched,
    replies: Vec<PendingReply>,
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
    /// Entities with events in the failed write: they recover from the journal.
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
            reply_to: ReplyTo::None,
        };
        PendingReply { pid: pid.into(), envelope, result: Ok(Outcome::NoReply), side_effects: vec![] }
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
