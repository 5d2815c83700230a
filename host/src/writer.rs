//! The group-commit writer: one thread that merges whatever batches the shards
//! have handed in since its last write into one `Journal::write`, so one durable
//! write (one fsync) covers many commands of many entities.
//!
//! Each shard has at most one batch in flight, so the size of a group follows the
//! latency of the write: the slower the sync, the more each write carries.
//!
//! Architecture invariant: the writer knows nothing of shards or entities; it
//! writes batches and calls back with the result.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::watch;

use crate::journal::{Journal, WriteBatch};
use crate::metrics::Metrics;

/// Called with the outcome of the write that carried a batch.
pub type OnWritten = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A batch on its way to the journal.
pub struct WriteRequest {
    pub batch: WriteBatch,
    pub on_written: OnWritten,
}

pub enum WriterMsg {
    /// Boxed: a batch is large, and one allocation per batch is nothing.
    Write(Box<WriteRequest>),
    /// Write what is queued, then stop.
    Stop,
}

/// The writer's handle: where batches go.
pub type Writer = Sender<WriterMsg>;

/// The newest durable global offset, published after every write that made events
/// durable (readers that follow the journal live wait on it).
pub type Head = watch::Receiver<u64>;

/// `follow`: with several hosts on one journal, the others' writes move the head
/// too; the writer then also reads the journal's head this often while idle.
pub fn spawn(
    journal: Arc<dyn Journal>,
    metrics: Arc<Metrics>,
    follow: Option<Duration>,
) -> (Writer, Head, JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (head_tx, head) = watch::channel(journal.head());
    let thread = std::thread::Builder::new()
        .name("mneme-writer".into())
        .spawn(move || run(&*journal, &rx, &metrics, &head_tx, follow))
        .expect("spawn writer thread");
    (tx, head, thread)
}

/// Publish `now` unless the head is already past it (it only moves forward).
fn advance(head: &watch::Sender<u64>, now: u64) {
    head.send_if_modified(|h| {
        let moved = now > *h;
        *h = (*h).max(now);
        moved
    });
}

fn run(
    journal: &dyn Journal,
    rx: &Receiver<WriterMsg>,
    metrics: &Metrics,
    head: &watch::Sender<u64>,
    follow: Option<Duration>,
) {
    let mut stop = false;
    while !stop {
        let first = match follow {
            None => rx.recv().map_err(|_| ()),
            Some(every) => match rx.recv_timeout(every) {
                Ok(msg) => Ok(msg),
                Err(RecvTimeoutError::Timeout) => {
                    advance(head, journal.head());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Err(()),
            },
        };
        let Ok(first) = first else { return };
        let mut requests = Vec::new();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                WriterMsg::Write(r) => requests.push(r),
                WriterMsg::Stop => stop = true,
            }
        }
        let mut merged = WriteBatch::default();
        let mut callbacks = Vec::with_capacity(requests.len());
        for r in requests {
            merged.append(r.batch);
            callbacks.push(r.on_written);
        }
        let started = std::time::Instant::now();
        let result = journal.write(&merged).map_err(|e| e.to_string());
        metrics.journal_write_seconds.observe(started.elapsed());
        match &result {
            Ok(()) => {
                if !merged.events.is_empty() {
                    advance(head, journal.head());
                }
                metrics.journal_writes_total.fetch_add(1, Relaxed);
                metrics.events_persisted_total.fetch_add(merged.events.len() as u64, Relaxed);
                if !merged.events.is_empty() {
                    metrics.journal_write_events.observe(merged.events.len() as u64);
                }
                metrics.snapshots_total.fetch_add(merged.snapshots.len() as u64, Relaxed);
            }
            Err(e) => {
                metrics.journal_write_failures_total.fetch_add(1, Relaxed);
                tracing::error!(events = merged.events.len(), "journal write failed: {e}");
            }
        }
        for on_written in callbacks {
            on_written(result.clone());
        }
    }
}
