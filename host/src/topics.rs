//! Topics: the durable streams the `publish` side effect writes to.
//!
//! A published message is stored in the journal with the events of the command
//! that published it (a topic message record, `journal/outbox.rs`), at the
//! topic's next position (gapless from 1), so a reader can resume from any
//! position after a restart (`GET /v1/topics/{topic}`, `.../stream`). This module
//! is what live readers wait on: [`Topics::published`] is called once messages are
//! durable, and wakes every [`Topics::subscribe`]r.
//!
//! Retention: readers are served the newest `retention` messages of a topic
//! ([`readable_from`]); older positions are not served. The commit log keeps them
//! (it is append-only, like the events).

use tokio::sync::watch;

/// Wakes readers of topics when messages become durable, and tells them when the
/// server shuts down (so open streams end instead of holding the shutdown).
pub struct Topics {
    /// Counts messages made durable since start; its changes are what readers wait for.
    durable: watch::Sender<u64>,
    closed: watch::Sender<bool>,
}

impl Default for Topics {
    fn default() -> Self {
        Topics { durable: watch::channel(0).0, closed: watch::channel(false).0 }
    }
}

impl Topics {
    /// `n` messages are durable: wake the readers.
    pub fn published(&self, n: u64) {
        if n > 0 {
            self.durable.send_modify(|count| *count += n);
        }
    }

    /// Wake the readers to look again: with several hosts, other hosts publish too,
    /// and their messages are found by reading.
    pub fn nudge(&self) {
        self.durable.send_modify(|_| {});
    }

    /// Changes when messages of any topic become durable (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The server is shutting down: readers stop following.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// `true` once [`Topics::close`] was called (`wait_for(|c| *c)` to wait for it).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

/// The oldest position served of a topic whose newest is `head`, keeping the
/// newest `retention` messages (0: all).
pub fn readable_from(head: u64, retention: u64) -> u64 {
    if retention == 0 {
        1
    } else {
        head.saturating_sub(retention) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_messages() {
        assert_eq!(readable_from(0, 10), 1);
        assert_eq!(readable_from(10, 10), 1);
        assert_eq!(readable_from(11, 10), 2);
        assert_eq!(readable_from(1000, 0), 1, "0 keeps everything");
    }

    #[test]
    fn readers_are_woken_when_messages_are_durable() {
        let topics = Topics::default();
        let mut rx = topics.subscribe();
        topics.published(0);
        assert!(!rx.has_changed().unwrap(), "nothing published");
        topics.published(2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        let closing = topics.closing();
        assert!(!*closing.borrow());
        topics.close();
        assert!(*closing.borrow());
    }
}
