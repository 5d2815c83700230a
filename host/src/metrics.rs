//! Counters, gauges and histograms for `GET /metrics` (Prometheus text format).
//!
//! Plain atomics bumped by the shards and the writer: cheap enough for the command
//! path, and enough to answer "how many commands, how many were unhandled, how many
//! durable writes carried them, how many entities are in memory", and, as
//! histograms, where a command's time goes: in the guest, waiting for the group
//! commit, in the journal's sync. Per entity type where a type is known.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
            /// How long each journal write took: append and sync of one group commit.
            pub journal_write_seconds: Histogram,
            /// How long each command waited between being accepted and its shard
            /// taking it up (the shard's queue): the part of a command's time
            /// that is neither its guest call nor the wait for its write.
            pub command_queue_seconds: Histogram,
            /// Events per journal write (the group commit's size).
            pub journal_write_events: CountHistogram,
            /// What is counted per entity type.
            types: RwLock<BTreeMap<String, Arc<TypeMetrics>>>,
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
                self.journal_write_seconds.render(
                    &mut out,
                    "journal_write_seconds",
                    "Time a journal write took: append and sync of one group commit (the fsync time).",
                );
                self.command_queue_seconds.render(
                    &mut out,
                    "command_queue_seconds",
                    "Time a command waited between being accepted and its shard taking it up (the shard's queue).",
                );
                self.journal_write_events.0.render(
                    &mut out,
                    "journal_write_events",
                    "Events per journal write that carried events (the group commit's size).",
                );
                self.render_types(&mut out);
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
    projection_faults_total: "Projection calls that faulted (trap, error, limit); the projection fails and stops.",
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

/// Upper bounds of the duration buckets, in seconds (from 100 µs to 10 s); 15 and
/// 20 ms tell a sync or a command just under 20 ms from one over it.
const SECONDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];
/// Upper bounds of the size buckets (events per write).
const COUNTS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// A Prometheus histogram: a count per bucket, the sum and the count, all atomics
/// (no lock on the recording path). Durations by default; [`CountHistogram`] for
/// sizes.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most `bounds[i]` (not cumulative; summed when rendered).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, in millionths of the unit (microseconds for durations).
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&SECONDS)
    }
}

/// A histogram of sizes (events per write).
pub struct CountHistogram(pub Histogram);

impl Default for CountHistogram {
    fn default() -> Self {
        CountHistogram(Histogram::with_bounds(&COUNTS))
    }
}

impl CountHistogram {
    pub fn observe(&self, n: u64) {
        self.0.record(n as f64, n.saturating_mul(1_000_000));
    }
}

impl Histogram {
    fn with_bounds(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.record(d.as_secs_f64(), d.as_micros() as u64);
    }

    fn record(&self, value: f64, micros: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP mneme_{name} {help}");
        let _ = writeln!(out, "# TYPE mneme_{name} histogram");
        self.render_samples(out, name, "");
    }

    /// The samples alone, each with `labels` (`key="value",` pairs, comma-ended).
    fn render_samples(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "mneme_{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "mneme_{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "mneme_{name}_sum{braces} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "mneme_{name}_count{braces} {count}");
    }
}

/// What is counted per entity type, labelled `entity_type` in `/metrics`. Only
/// types that have a component get one (a command to an unknown type is counted
/// in the totals alone), so the label's values stay as few as the deployed types.
#[derive(Default)]
pub struct TypeMetrics {
    pub commands_total: AtomicU64,
    pub commands_failed_total: AtomicU64,
    /// From the engine accepting a command to its outcome (a reply waits for its
    /// events to be durable).
    pub command_seconds: Histogram,
    /// Time in the guest: `handle-command` and `apply-events` calls.
    pub guest_call_seconds: Histogram,
    pub active_entities: AtomicU64,
    pub stashed_commands: AtomicU64,
}

/// A family of per-type samples: name, kind, help, and how to render one type's.
type Family = (&'static str, &'static str, &'static str, fn(&TypeMetrics, &mut String, &str));

const TYPE_FAMILIES: [Family; 6] = [
    ("entity_commands_total", "counter", "Commands of this entity type that got an outcome.", |m, out, l| {
        let _ = writeln!(out, "mneme_entity_commands_total{{{l}}} {}", m.commands_total.load(Relaxed));
    }),
    (
        "entity_commands_failed_total",
        "counter",
        "Commands of this entity type that failed (any error).",
        |m, out, l| {
            let _ =
                writeln!(out, "mneme_entity_commands_failed_total{{{l}}} {}", m.commands_failed_total.load(Relaxed));
        },
    ),
    (
        "command_seconds",
        "histogram",
        "Time from accepting a command to its outcome, the wait for its events to be durable included.",
        |m, out, l| m.command_seconds.render_samples(out, "command_seconds", &format!("{l},")),
    ),
    (
        "guest_call_seconds",
        "histogram",
        "Time of one call into the entity's component (handle-command or apply-events).",
        |m, out, l| m.guest_call_seconds.render_samples(out, "guest_call_seconds", &format!("{l},")),
    ),
    ("entity_active", "gauge", "Entities of this type in memory now.", |m, out, l| {
        let _ = writeln!(out, "mneme_entity_active{{{l}}} {}", m.active_entities.load(Relaxed));
    }),
    ("stashed_commands", "gauge", "Commands stashed by entities of this type now.", |m, out, l| {
        let _ = writeln!(out, "mneme_stashed_commands{{{l}}} {}", m.stashed_commands.load(Relaxed));
    }),
];

/// One gauge with its help, for values the metrics do not hold (the journal's size).
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP mneme_{name} {help}");
    let _ = writeln!(out, "# TYPE mneme_{name} gauge");
    let _ = writeln!(out, "mneme_{name} {value}");
}

impl Metrics {
    /// The metrics of `entity_type` (created on first use: call it only for types
    /// that have a component, see [`TypeMetrics`]).
    pub fn of_type(&self, entity_type: &str) -> Arc<TypeMetrics> {
        if let Some(m) = self.types.read().unwrap().get(entity_type) {
            return m.clone();
        }
        self.types.write().unwrap().entry(entity_type.to_string()).or_default().clone()
    }

    fn render_types(&self, out: &mut String) {
        let types = self.types.read().unwrap();
        if types.is_empty() {
            return;
        }
        for (name, kind, help, render) in TYPE_FAMILIES {
            let _ = writeln!(out, "# HELP mneme_{name} {help}");
            let _ = writeln!(out, "# TYPE mneme_{name} {kind}");
            for (t, m) in types.iter() {
                render(m, out, &format!("entity_type=\"{t}\""));
            }
        }
    }

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
