//! Counters, gauges and histograms for `GET /metrics` (Prometheus text format).
//!
//! Plain atomics bumped by the shards and the writer: cheap enough for the command
//! path, and enough to answer "how many commands, how many were unhandled, how many
//! durable writes carried them, how many entities are in memory".

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::CommandError;

macro_rules! metrics {
    (counters { $($name:ident: $help:literal,)* } gauges { $($gauge:ident: $ghelp:literal,)* }) => {
        #[derive(Default)]
        pub struct Metrics {
            $(pub $name: AtomicU64,)*
            $(pub $gauge: AtomicU64,)*
            /// How long entity recoveries took (snapshot load, replay and
            /// `on-recovery-completed`).
            pub recovery_seconds: Histogram,
        }

        impl Metrics {
            /// Prometheus exposition of every counter, gauge and histogram.
            pub fn render(&self) -> String {
                let mut out = String::new();
                self.recovery_seconds.render(
                    &mut out,
                    "recovery_seconds",
                    "Time an entity recovery took (snapshot load, event replay, on-recovery-completed).",
                );
                $(
                    let _ = writeln!(out, "# HELP mneme_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE mneme_{} counter", stringify!($name));
                    let _ = writeln!(out, "mneme_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
                $(
                    let _ = writeln!(out, "# HELP mneme_{} {}", stringify!($gauge), $ghelp);
                    let _ = writeln!(out, "# TYPE mneme_{} gauge", stringify!($gauge));
                    let _ = writeln!(out, "mneme_{} {}", stringify!($gauge), self.$gauge.load(Relaxed));
                )*
                out
            }
        }
    };
}

metrics! {
counters {
    commands_total: "Commands that got an outcome (any).",
    commands_failed_total: "Commands that failed (any error, including unhandled).",
    unhandled_total: "Commands an entity did not handle in its state.",
    malformed_total: "Commands the guest could not decode.",
    guest_faults_total: "Guest traps, deadline or memory-cap hits.",
    write_failures_total: "Commands failed because a journal write failed.",
    stash_overflows_total: "Commands refused because a stash was full.",
    events_persisted_total: "Events made durable.",
    journal_writes_total: "Durable journal writes (group commits).",
    journal_write_failures_total: "Journal writes that failed (nothing of them was stored).",
    snapshots_total: "Snapshots written.",
    recoveries_total: "Entity recoveries.",
    recoveries_from_snapshot_total: "Entity recoveries that started from a snapshot (the rest replayed every event).",
    recovery_snapshots_ignored_total: "Snapshots not used by a recovery because their state version differs from the component's (rebuilt from events).",
    recovery_events_replayed_total: "Events replayed by recoveries (after the snapshot, if one was used).",
    passivations_total: "Entities passivated (stop, idle, restart, memory bound).",
    projection_events_total: "Events handed to projections.",
    projection_batches_total: "Projection batches stored (view updates and offset, one atomic write each).",
    projection_faults_total: "Projection calls that faulted (trap, error, limit); the projection pauses.",
    outbox_entries_total: "Commands sent or scheduled by entities, made durable (outbox entries).",
    outbox_deliveries_total: "Deliveries of outbox entries tried (first tries, retries and redeliveries after a start).",
    outbox_retries_total: "Deliveries tried again after a failure that may pass (write failed, unknown type, ...).",
    outbox_recovered_total: "Outbox entries found pending at start and delivered again.",
    outbox_duplicates_total: "Delivered commands whose idempotency key the target had applied: acknowledged, not applied again.",
    outbox_failed_total: "Delivered commands that failed for good (unhandled, malformed, rejected by the journal): not retried.",
    topic_messages_total: "Messages published to topics, made durable.",
}
gauges {
    active_entities: "Entities in memory now, over all shards (bounded by --max-active-entities).",
    outbox_pending: "Outbox entries of this process not delivered yet (waiting, in flight or retrying).",
}
}

/// Upper bounds of the histogram buckets, in seconds (from 1 ms to 10 s).
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0];

/// A Prometheus histogram of durations: a count per bucket, the sum and the count,
/// all atomics (no lock on the recording path).
#[derive(Default)]
pub struct Histogram {
    /// Observations at most `BUCKETS[i]` (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP mneme_{name} {help}");
        let _ = writeln!(out, "# TYPE mneme_{name} histogram");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "mneme_{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "mneme_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "mneme_{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "mneme_{name}_count {count}");
    }
}

impl Metrics {
    /// Move a gauge from `before` to `now` (each shard adds its own share).
    pub fn adjust(gauge: &AtomicU64, before: usize, now: usize) {
        if now > before {
            gauge.fetch_add((now - before) as u64, Relaxed);
        } else if before > now {
            gauge.fetch_sub((before - now) as u64, Relaxed);
        }
    }

    pub fn count_outcome<T>(&self, result: &Result<T, CommandError>) {
        self.commands_total.fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.commands_failed_total.fetch_add(1, Relaxed);
            let c = match e {
                CommandError::Unhandled { .. } => &self.unhandled_total,
                CommandError::Malformed(_) => &self.malformed_total,
                CommandError::GuestFault { .. } => &self.guest_faults_total,
                CommandError::WriteFailed(_) => &self.write_failures_total,
                CommandError::StashFull(..) => &self.stash_overflows_total,
                _ => return,
            };
            c.fetch_add(1, Relaxed);
        }
    }
}
