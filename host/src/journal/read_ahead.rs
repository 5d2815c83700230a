//! A reader thread: while its owner works on one batch of a journal read, the
//! thread reads the next one.
//!
//! Used where a read and the guest's work on what was read take turns: a
//! projection worker (a read by tag first waits for the index to take in every
//! frame written before it; following heavy load that wait came to milliseconds
//! per batch, a third of a worker's time) and the replay of a long history
//! (reading a batch costs about half of what the guest's fold of it does).
//!
//! What is read does not depend on the owner's work, so a batch read ahead is the
//! batch the owner would have read itself, provided it starts where the owner is:
//! one read from another position (a projection worker that started over from its
//! stored offset after a failed write) is dropped and read again.

use crossbeam_channel::{Receiver, Sender};

use super::JournalError;

/// Reads the batch after a position.
pub type Read<T> = Box<dyn Fn(u64) -> T + Send>;

pub struct ReadAhead<T> {
    positions: Sender<u64>,
    batches: Receiver<(u64, T)>,
    /// The position of the read in progress (or done, not yet taken).
    asked: Option<u64>,
}

impl<T: Send + 'static> ReadAhead<T> {
    /// Starts the thread `name`; it ends when the `ReadAhead` is dropped (after
    /// the read in progress).
    pub fn spawn(name: String, read: Read<T>) -> std::io::Result<ReadAhead<T>> {
        let (positions, rx) = crossbeam_channel::bounded::<u64>(1);
        let (tx, batches) = crossbeam_channel::bounded(1);
        std::thread::Builder::new().name(name).spawn(move || {
            for position in rx {
                if tx.send((position, read(position))).is_err() {
                    return;
                }
            }
        })?;
        Ok(ReadAhead { positions, batches, asked: None })
    }

    /// Start reading the batch after `position`, unless a read is in progress
    /// (the owner takes that one first).
    pub fn ask(&mut self, position: u64) {
        if self.asked.is_none() && self.positions.send(position).is_ok() {
            self.asked = Some(position);
        }
    }

    /// The batch after `position`: the one read ahead if it starts there, else read
    /// now. An error only when the thread is gone (it panicked): trying again would
    /// not help.
    pub fn take(&mut self, position: u64) -> Result<T, JournalError> {
        if let Some(asked) = self.asked.take() {
            let (from, batch) = self.receive()?;
            debug_assert_eq!(from, asked);
            if from == position {
                return Ok(batch);
            }
        }
        self.ask(position);
        self.asked = None;
        Ok(self.receive()?.1)
    }

    fn receive(&self) -> Result<(u64, T), JournalError> {
        self.batches.recv().map_err(|_| JournalError::Invalid("a journal reader thread panicked".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::journal::JournalResult;

    /// A reader whose batch after `p` ends at `p + 10`, counting its reads.
    fn counting() -> (ReadAhead<u64>, Arc<AtomicU64>) {
        let reads = Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let read = move |position| {
            r.fetch_add(1, Ordering::SeqCst);
            position + 10
        };
        (ReadAhead::spawn("test".into(), Box::new(read)).unwrap(), reads)
    }

    #[test]
    fn a_batch_read_ahead_is_taken_once_and_only_from_its_position() {
        let (mut reader, reads) = counting();
        assert_eq!(reader.take(0).unwrap(), 10, "nothing asked: read now");
        reader.ask(10);
        reader.ask(99); // one read at a time: ignored while the first is out
        assert_eq!(reader.take(10).unwrap(), 20);
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the batch read ahead was used");

        // The owner started over elsewhere: the batch read ahead is dropped.
        reader.ask(20);
        assert_eq!(reader.take(5).unwrap(), 15);
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        assert_eq!(reader.take(15).unwrap(), 25, "nothing left over from before");
    }

    #[test]
    fn a_failed_read_is_handed_to_the_owner() {
        let read = |_| -> JournalResult<()> { Err(JournalError::Storage("disk gone".into())) };
        let mut reader = ReadAhead::spawn("test".into(), Box::new(read)).unwrap();
        reader.ask(0);
        assert!(matches!(reader.take(0), Ok(Err(JournalError::Storage(m))) if m == "disk gone"));
    }
}
