//! A worker's reader thread: while the worker hands one batch to its component,
//! this thread reads the next one.
//!
//! Why: a read by tag first waits for the index to take in every frame written
//! before it. Following heavy load that wait came to milliseconds per batch and
//! about a third of a worker's time, spent idle between two guest calls. Read
//! ahead, it overlaps the guest's work instead.
//!
//! Events do not depend on the view, so a batch read ahead is the batch the
//! worker would have read itself, provided it starts where the worker is: one
//! read from another position (the worker started over from its stored offset
//! after a failed write) is dropped and read again. The batch ends at the durable
//! head as the thread sees it when it reads.

use crossbeam_channel::{Receiver, Sender};

use super::batch::Feed;
use crate::journal::{JournalError, JournalResult};

/// Reads the batch after a position (`next_batch` up to the current head).
pub type Read = Box<dyn Fn(u64) -> JournalResult<Feed> + Send>;

pub struct ReadAhead {
    positions: Sender<u64>,
    feeds: Receiver<(u64, JournalResult<Feed>)>,
    /// The position of the read in progress (or done, not yet taken).
    asked: Option<u64>,
}

impl ReadAhead {
    /// The thread ends when the `ReadAhead` is dropped (after the read in progress).
    pub fn spawn(name: &str, read: Read) -> ReadAhead {
        let (positions, rx) = crossbeam_channel::bounded::<u64>(1);
        let (tx, feeds) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name(format!("mneme-projection-{name}-read"))
            .spawn(move || {
                for position in rx {
                    if tx.send((position, read(position))).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn projection reader thread");
        ReadAhead { positions, feeds, asked: None }
    }

    /// Start reading the batch after `position`, unless a read is in progress
    /// (the worker takes that one first).
    pub fn ask(&mut self, position: u64) {
        if self.asked.is_none() && self.positions.send(position).is_ok() {
            self.asked = Some(position);
        }
    }

    /// The batch after `position`: the one read ahead if it starts there, else read now.
    pub fn take(&mut self, position: u64) -> JournalResult<Feed> {
        if let Some(asked) = self.asked.take() {
            let (from, feed) = self.receive()?;
            debug_assert_eq!(from, asked);
            if from == position {
                return feed;
            }
        }
        self.ask(position);
        self.asked = None;
        self.receive()?.1
    }

    /// A reader thread that is gone panicked: the worker fails (trying again would not help).
    fn receive(&self) -> JournalResult<(u64, JournalResult<Feed>)> {
        self.feeds.recv().map_err(|_| JournalError::Invalid("the projection's reader thread panicked".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A reader whose batch after `p` ends at `p + 10`, counting its reads.
    fn counting() -> (ReadAhead, Arc<AtomicU64>) {
        let reads = Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let read = move |position| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(Feed { events: Vec::new(), through: position + 10 })
        };
        (ReadAhead::spawn("test", Box::new(read)), reads)
    }

    #[test]
    fn a_batch_read_ahead_is_taken_once_and_only_from_its_position() {
        let (mut reader, reads) = counting();
        assert_eq!(reader.take(0).unwrap().through, 10, "nothing asked: read now");
        reader.ask(10);
        reader.ask(99); // one read at a time: ignored while the first is out
        assert_eq!(reader.take(10).unwrap().through, 20);
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the batch read ahead was used");

        // The worker started over elsewhere: the batch read ahead is dropped.
        reader.ask(20);
        assert_eq!(reader.take(5).unwrap().through, 15);
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        assert_eq!(reader.take(15).unwrap().through, 25, "nothing left over from before");
    }

    #[test]
    fn a_failed_read_is_handed_to_the_worker() {
        let read = |_| Err(JournalError::Storage("disk gone".into()));
        let mut reader = ReadAhead::spawn("test", Box::new(read));
        reader.ask(0);
        assert!(matches!(reader.take(0), Err(JournalError::Storage(m)) if m == "disk gone"));
    }
}
