//! Live subscriptions: events as Server-Sent Events, from any position, catching up
//! from the journal and then following new durable events.
//!
//! A subscription is a cursor, not a buffer: it reads a page from the journal,
//! sends it, and reads the next page only when the client has taken the previous
//! one (the response body is pulled by the connection). At the journal's head it
//! waits for the writer to publish a newer durable offset (`Engine::durable_head`)
//! and reads again. So a subscriber sees only durable events, in order, each once;
//! a slow one costs the server one page of memory, never more, and simply reads
//! from further back in the journal (a client that stops reading altogether is
//! closed by the connection's idle timeout). A reconnect with `Last-Event-ID`
//! resumes right after that event.
//!
//! Architecture invariant: subscriptions only read the journal; they never write.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde_json::Value;

use crate::engine::Engine;
use crate::journal::{Journal, JournalResult, StoredEvent};

/// Events per journal read.
const PAGE: usize = 256;
/// A comment line this often while there is nothing to send (default of
/// `--stream-keep-alive-secs`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a subscription follows.
#[derive(Debug, Clone)]
pub enum Source {
    /// All events, or those carrying a tag; positions are global offsets.
    Offsets { tag: Option<String> },
    /// One entity's events; positions are its sequence numbers.
    Entity { pid: String },
}

impl Source {
    /// Events with position `>= from`.
    fn read(&self, journal: &dyn Journal, from: u64) -> JournalResult<Vec<StoredEvent>> {
        match self {
            Source::Offsets { tag: Some(tag) } => journal.events_by_tag(tag, from, PAGE),
            Source::Offsets { tag: None } => journal.events_from(from, PAGE),
            Source::Entity { pid } => journal.events(pid, from.max(1), PAGE),
        }
    }

    fn position(&self, e: &StoredEvent) -> u64 {
        match self {
            Source::Offsets { .. } => e.offset,
            Source::Entity { .. } => e.seq_nr,
        }
    }
}

/// Bytes as JSON when they are JSON, else as a hex string under `<field>_hex`.
pub fn bytes_field(obj: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            obj.insert(field.to_string(), v);
        }
        Err(_) => {
            obj.insert(format!("{field}_hex"), Value::String(hex::encode(bytes)));
        }
    }
}

/// An event as the API shows it (`GET /v1/events`, the streams).
pub fn event_json(e: StoredEvent) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("persistence_id".into(), e.persistence_id.into());
    o.insert("seq_nr".into(), e.seq_nr.into());
    o.insert("offset".into(), e.offset.into());
    o.insert("timestamp_ms".into(), e.timestamp_ms.into());
    o.insert("writer_id".into(), e.writer_id.into());
    o.insert("manifest".into(), e.manifest.into());
    o.insert("tags".into(), e.tags.into());
    bytes_field(&mut o, "payload", &e.payload);
    Value::Object(o)
}

struct Cursor {
    engine: Engine,
    source: Arc<Source>,
    /// The position of the next event to send.
    next: u64,
    page: VecDeque<StoredEvent>,
    done: bool,
}

/// The SSE response for `source` from position `from` on.
pub fn subscribe(
    engine: Engine,
    source: Source,
    from: u64,
    keep_alive: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    let cursor = Cursor { engine, source: Arc::new(source), next: from, page: VecDeque::new(), done: false };
    let events = stream::unfold(cursor, |mut c| async move {
        let event = c.next_event().await?;
        Some((Ok(event), c))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

impl Cursor {
    /// The next SSE message; `None` ends the stream (after an error message, or
    /// when the engine stops).
    async fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if let Some(e) = self.page.pop_front() {
                let id = self.source.position(&e);
                self.next = id + 1;
                return Some(Event::default().id(id.to_string()).data(event_json(e).to_string()));
            }
            let mut head = self.engine.durable_head();
            // Mark the current head as seen before reading, so a write that lands
            // after the read wakes the wait below.
            head.borrow_and_update();
            let (journal, source, from) = (self.engine.journal().clone(), self.source.clone(), self.next);
            let read = tokio::task::spawn_blocking(move || source.read(&*journal, from)).await;
            match read {
                Ok(Ok(events)) if !events.is_empty() => self.page.extend(events),
                Ok(Ok(_)) => {
                    if head.changed().await.is_err() {
                        return None;
                    }
                }
                Ok(Err(e)) => return Some(self.fail(e.to_string())),
                Err(e) => return Some(self.fail(e.to_string())),
            }
        }
    }

    /// A final `error` message, then the end of the stream.
    fn fail(&mut self, why: String) -> Event {
        self.done = true;
        Event::default().event("error").data(serde_json::json!({ "error": why }).to_string())
    }
}
