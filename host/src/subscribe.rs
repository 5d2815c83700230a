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
//! Pages are shared ([`Pages`]): subscribers that follow the same source from the
//! same position (typically all of those at the head, woken by the same write)
//! get one journal read and one encoding between them, not one each. A page is
//! kept as the bytes of its SSE messages, which every subscriber writes as they
//! are (one buffer per page, not one message each). A page is immutable once
//! read (the journal only appends), except that an empty page says only "nothing
//! yet at the head it was read at", so it is used only by a subscriber that has
//! not seen a newer head.
//!
//! Architecture invariant: subscriptions only read the journal; they never write.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::engine::Engine;
use crate::journal::{Journal, JournalResult, StoredEvent};

/// Events per journal read.
const PAGE: usize = 256;
/// Shared pages kept at most, and their encoded bytes at most: the oldest go first.
const PAGES_KEPT: usize = 64;
const PAGES_BYTES: usize = 32 << 20;
/// A comment line this often while there is nothing to send (default of
/// `--stream-keep-alive-secs`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// Events from one position of one source, encoded as the stream sends them.
struct Page {
    /// The SSE messages, in order: `id: <position>`, `data: <event JSON>`.
    sse: Bytes,
    /// The position of the last event; `None` for an empty page.
    last: Option<u64>,
    /// The durable head when the read began: an empty page is current up to it.
    head: u64,
}

/// Append one SSE message (`event` names its type; none for an event).
fn message(out: &mut Vec<u8>, event: Option<&str>, id: Option<u64>, data: &str) {
    use std::io::Write;
    debug_assert!(!data.contains(['\n', '\r']), "compact JSON has no line breaks");
    if let Some(event) = event {
        let _ = writeln!(out, "event: {event}");
    }
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = write!(out, "data: {data}\n\n");
}

type PageKey = (Arc<Source>, u64);
type PageCell = Arc<OnceCell<Arc<Page>>>;

/// The pages read for subscriptions, shared by all of them (module doc). Bounded
/// by count and bytes; a page still in use by a cursor stays alive through its
/// `Arc` after it leaves the cache.
#[derive(Default)]
pub struct Pages {
    inner: Mutex<PagesInner>,
}

#[derive(Default)]
struct PagesInner {
    cells: HashMap<PageKey, PageCell>,
    /// Keys in insertion order, with the bytes of their page once read.
    order: VecDeque<(PageKey, usize)>,
    bytes: usize,
}

impl Pages {
    /// The page of `source` from `from` on, read once for every subscriber that
    /// asks for it; `seen_head` is the newest durable head the caller has seen.
    async fn get(&self, engine: &Engine, source: &Arc<Source>, from: u64, seen_head: u64) -> Result<Arc<Page>, String> {
        let key = (source.clone(), from);
        loop {
            let cell = self.cell(&key);
            let page = cell.get_or_try_init(|| read_page(engine, source.clone(), from)).await?.clone();
            self.account(&key, page.sse.len());
            if page.last.is_some() || page.head >= seen_head {
                return Ok(page);
            }
            // Empty as of an older head than the caller saw: read again.
            self.forget(&key, &cell);
        }
    }

    fn cell(&self, key: &PageKey) -> PageCell {
        let mut inner = self.inner.lock().unwrap();
        if let Some(cell) = inner.cells.get(key) {
            return cell.clone();
        }
        let cell = PageCell::default();
        inner.cells.insert(key.clone(), cell.clone());
        inner.order.push_back((key.clone(), 0));
        while inner.order.len() > PAGES_KEPT {
            inner.evict_oldest();
        }
        cell
    }

    /// Count a page's bytes once it is read, and keep the total under its bound.
    fn account(&self, key: &PageKey, bytes: usize) {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        if let Some(entry) = inner.order.iter_mut().find(|(k, b)| *b == 0 && k == key) {
            entry.1 = bytes;
            inner.bytes += bytes;
        }
        while inner.bytes > PAGES_BYTES && inner.order.len() > 1 {
            inner.evict_oldest();
        }
    }

    fn forget(&self, key: &PageKey, cell: &PageCell) {
        let mut inner = self.inner.lock().unwrap();
        if inner.cells.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            inner.cells.remove(key);
            if let Some(i) = inner.order.iter().position(|(k, _)| k == key) {
                let (_, bytes) = inner.order.remove(i).unwrap();
                inner.bytes -= bytes;
            }
        }
    }
}

impl PagesInner {
    fn evict_oldest(&mut self) {
        if let Some((key, bytes)) = self.order.pop_front() {
            self.cells.remove(&key);
            self.bytes -= bytes;
        }
    }
}

/// Read and encode one page, off the async threads.
async fn read_page(engine: &Engine, source: Arc<Source>, from: u64) -> Result<Arc<Page>, String> {
    let head = *engine.durable_head().borrow();
    let journal = engine.journal().clone();
    let read = tokio::task::spawn_blocking(move || {
        let events = source.read(&*journal, from)?;
        let last = events.last().map(|e| source.position(e));
        let mut sse = Vec::with_capacity(events.iter().map(|e| e.payload.len() + 256).sum());
        for e in events {
            let id = source.position(&e);
            message(&mut sse, None, Some(id), &event_json(e).to_string());
        }
        JournalResult::Ok(Page { sse: sse.into(), last, head })
    });
    match read.await {
        Ok(Ok(page)) => Ok(Arc::new(page)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

struct Cursor {
    engine: Engine,
    pages: Arc<Pages>,
    source: Arc<Source>,
    /// The position of the next event to send.
    next: u64,
    keep_alive: Duration,
    done: bool,
}

/// The SSE response (`text/event-stream`) for `source` from position `from` on; a
/// `: keep-alive` comment after `keep_alive` without an event.
pub fn subscribe(engine: Engine, pages: Arc<Pages>, source: Source, from: u64, keep_alive: Duration) -> Response {
    let cursor = Cursor { engine, pages, source: Arc::new(source), next: from, keep_alive, done: false };
    let chunks = stream::unfold(cursor, |mut c| async move {
        let chunk = c.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), c))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(chunks))
        .into_response()
}

const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

impl Cursor {
    /// The next SSE messages to write (a page of events, a keep-alive comment or a
    /// final error); `None` ends the stream (after an error message, or when the
    /// engine stops).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let mut head = self.engine.durable_head();
            // Mark the current head as seen before reading, so a write that lands
            // after the read wakes the wait below.
            let seen = *head.borrow_and_update();
            match self.pages.get(&self.engine, &self.source, self.next, seen).await {
                Ok(page) => {
                    if let Some(last) = page.last {
                        self.next = last + 1;
                        return Some(page.sse.clone());
                    }
                }
                Err(e) => return Some(self.fail(e)),
            }
            match tokio::time::timeout(self.keep_alive, head.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => return Some(Bytes::from_static(KEEP_ALIVE_COMMENT)),
            }
        }
    }

    /// A final `error` message, then the end of the stream.
    fn fail(&mut self, why: String) -> Bytes {
        self.done = true;
        let mut out = Vec::new();
        message(&mut out, Some("error"), None, &serde_json::json!({ "error": why }).to_string());
        out.into()
    }
}
