//! Projections: read models built from the journal's events (`wit/projection.wit`).
//!
//! A projection reads the events carrying its tags, in global offset order, and
//! keeps a *view*: string keys to values (JSON here). mneme stores each batch's
//! view changes together with the projection's offset in one atomic write, so
//! the view is the fold of every event exactly once, whatever crashes.
//!
//! ```
//! use mneme_sdk::projection::{EventEnvelope, Projection, StoredEvent, TestView, View};
//! use serde::{Deserialize, Serialize};
//!
//! pub struct Deposits;
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type")]
//! pub enum Event {
//!     Deposited { amount: u64 },
//!     #[serde(other)]
//!     Other,
//! }
//!
//! impl Projection for Deposits {
//!     type Event = Event;
//!     const NAME: &'static str = "deposits";
//!     const TAGS: &'static [&'static str] = &["account"];
//!
//!     fn handle(view: &mut View, e: &EventEnvelope<Event>) -> Result<(), String> {
//!         if let Event::Deposited { amount } = e.event {
//!             // Read-modify-write: `update` reads the current value (with this
//!             // batch's earlier changes), changes it, and puts it back.
//!             view.update(e.entity_id(), |total: &mut u64| *total += amount)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! mneme_sdk::export_projection!(Deposits);
//!
//! // Natively, feed events to an in-memory view:
//! let mut view = TestView::default();
//! let deposit = serde_json::json!({"type": "Deposited", "amount": 5});
//! view.apply::<Deposits>(&[
//!     StoredEvent::json("bank-account|alice", 1, 1, &deposit),
//!     StoredEvent::json("bank-account|alice", 2, 2, &deposit),
//! ]).unwrap();
//! assert_eq!(view.json("alice"), Some(serde_json::json!(10)));
//! ```

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use foldhash::fast::FixedState;
use serde::{de::DeserializeOwned, Serialize};

use crate::runtime::field;

/// A projection: folds events into a view.
///
/// `handle` must be pure and deterministic, like an entity's `apply`: a view
/// rebuilt from offset 0 must come out the same.
pub trait Projection {
    /// The events this projection reads, decoded from their JSON payload by
    /// [`Projection::decode`].
    type Event: DeserializeOwned;

    /// The projection's name, e.g. `account-balances` (informational: mneme names
    /// a projection after the name it is deployed under).
    const NAME: &'static str;
    /// The tags whose events it receives (at least one).
    const TAGS: &'static [&'static str];
    /// Version of the view's format. A new component version with another
    /// `VIEW_VERSION` gets a new view rebuilt from offset 0 (the old one serves
    /// queries until the new one has caught up); the same version continues the
    /// existing view from its offset.
    const VIEW_VERSION: u32 = 1;

    /// Fold one event into the view. `Err` fails the projection with the message;
    /// nothing of the event is stored.
    fn handle(view: &mut View, event: &EventEnvelope<Self::Event>) -> Result<(), String>;

    /// Decode an event. The default decodes the payload as JSON. Override it to
    /// upcast old schemas by `manifest`, or to skip events (`Ok(None)`).
    fn decode(manifest: &str, payload: &[u8]) -> Result<Option<Self::Event>, String> {
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|e| format!("event with manifest `{manifest}` could not be decoded: {e}"))
    }
}

/// An event as stored in the journal: the raw form handed to a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// `{entity-type}|{entity-id}`.
    pub persistence_id: String,
    pub seq_nr: u64,
    /// The global offset: events arrive in this order.
    pub offset: u64,
    pub timestamp_ms: u64,
    pub manifest: String,
    pub tags: Vec<String>,
    pub payload: Vec<u8>,
}

impl StoredEvent {
    /// An event with a JSON payload and the manifest an entity would give it
    /// (the `"type"` field), for native tests.
    pub fn json(persistence_id: &str, seq_nr: u64, offset: u64, event: &impl Serialize) -> StoredEvent {
        StoredEvent {
            persistence_id: persistence_id.to_string(),
            seq_nr,
            offset,
            timestamp_ms: 0,
            manifest: crate::codec::default_manifest(event),
            tags: Vec::new(),
            payload: crate::codec::to_json(event, "event"),
        }
    }
}

/// A decoded event with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope<E> {
    pub persistence_id: String,
    pub seq_nr: u64,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub manifest: String,
    pub tags: Vec<String>,
    pub event: E,
}

impl<E> EventEnvelope<E> {
    /// The entity type: the part of the persistence id before `|`.
    pub fn entity_type(&self) -> &str {
        self.persistence_id.split_once('|').map_or("", |(t, _)| t)
    }

    /// The entity id: the part of the persistence id after `|`.
    pub fn entity_id(&self) -> &str {
        self.persistence_id.split_once('|').map_or(&self.persistence_id, |(_, id)| id)
    }
}

/// One change to the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewUpdate {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// The view during a batch: reads go to the changes made so far, then to the
/// host; writes are collected and returned to the host at the end of the batch.
pub struct View<'a> {
    read: &'a mut dyn FnMut(&str) -> Option<Vec<u8>>,
    /// Every key read or written in this batch.
    /// Hashed, not ordered: a batch reads and writes each key many times, and in
    /// Wasm a string compared byte by byte on every step of an ordered lookup was
    /// a sixth of a projection's time. The seed is fixed (a guest has no
    /// randomness), and the changes are sorted once at the end.
    entries: HashMap<String, Entry, FixedState>,
}

/// One key of the view during a batch.
struct Entry {
    /// The value as JSON (none: absent); out of date while `typed` holds a value.
    bytes: Option<Vec<u8>>,
    /// The value the last [`View::update`] left, decoded: the next `update` of
    /// the same type changes it in place, so a key updated by every event (a
    /// running total) is decoded and encoded once per batch, not once per event.
    /// Encoded into `bytes` before anything reads them, and at the end of the batch.
    typed: Option<Box<dyn Typed>>,
    /// Changed in this batch: returned to the host.
    changed: bool,
}

impl Entry {
    /// Bring `bytes` up to date with `typed`.
    fn settle(&mut self) {
        if let Some(typed) = self.typed.take() {
            self.bytes = Some(typed.encode());
        }
    }
}

/// A decoded view value that can be encoded again.
trait Typed: Any {
    fn encode(&self) -> Vec<u8>;
}

impl<T: Serialize + Any> Typed for T {
    fn encode(&self) -> Vec<u8> {
        crate::codec::to_json(self, "view value")
    }
}

impl<'a> View<'a> {
    /// A view that reads what it has not seen yet through `read`.
    pub fn new(read: &'a mut dyn FnMut(&str) -> Option<Vec<u8>>) -> View<'a> {
        View { read, entries: HashMap::default() }
    }

    /// The current value of `key`, with this batch's changes.
    pub fn get_bytes(&mut self, key: &str) -> Option<Vec<u8>> {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.settle();
            return entry.bytes.clone();
        }
        let value = (self.read)(key);
        self.entries.insert(key.to_string(), Entry { bytes: value.clone(), typed: None, changed: false });
        value
    }

    /// The current value of `key`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.get_bytes(key) {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("the view's value of key `{key}` could not be decoded: {e}")),
            None => Ok(None),
        }
    }

    pub fn put_bytes(&mut self, key: impl Into<String>, value: Vec<u8>) {
        self.entries.insert(key.into(), Entry { bytes: Some(value), typed: None, changed: true });
    }

    /// Store `value` (as JSON) under `key`.
    pub fn put<T: Serialize>(&mut self, key: impl Into<String>, value: &T) {
        self.put_bytes(key, crate::codec::to_json(value, "view value"));
    }

    pub fn delete(&mut self, key: impl Into<String>) {
        self.entries.insert(key.into(), Entry { bytes: None, typed: None, changed: true });
    }

    /// Read-modify-write: the current value of `key` (or `T::default()`), changed
    /// by `f`, stored back as JSON. Within a batch the value stays decoded between
    /// updates of the same type, so updating one key for every event costs one
    /// decode and one encode per batch.
    pub fn update<T: DeserializeOwned + Serialize + Default + 'static>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut T),
    ) -> Result<(), String> {
        if let Some(entry) = self.entries.get_mut(key) {
            let typed = entry.typed.as_deref_mut().map(|t| t as &mut dyn Any);
            if let Some(value) = typed.and_then(|t| t.downcast_mut::<T>()) {
                f(value);
                entry.changed = true;
                return Ok(());
            }
        }
        let mut value = self.get::<T>(key)?.unwrap_or_default();
        f(&mut value);
        let entry = self.entries.get_mut(key).expect("`get` keeps every key it reads");
        entry.typed = Some(Box::new(value));
        entry.changed = true;
        Ok(())
    }

    /// The changes, one per key, in key order.
    pub fn into_updates(self) -> Vec<ViewUpdate> {
        let mut changed: Vec<_> = self.entries.into_iter().filter(|(_, entry)| entry.changed).collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changed
            .into_iter()
            .map(|(key, mut entry)| {
                entry.settle();
                match entry.bytes {
                    Some(value) => ViewUpdate::Put { key, value },
                    None => ViewUpdate::Delete { key },
                }
            })
            .collect()
    }
}

/// The `handle-events` protocol in plain Rust: decode each event, fold it into
/// the view, return the changes. `read` is the host's `get`.
pub fn handle_events<P: Projection>(
    events: impl IntoIterator<Item = StoredEvent>,
    read: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<ViewUpdate>, String> {
    let mut view = View::new(read);
    let mut at = Current::default();
    for e in events {
        at.persistence_id = e.persistence_id;
        at.manifest = e.manifest;
        at.tags = e.tags;
        (at.seq_nr, at.offset, at.timestamp_ms) = (e.seq_nr, e.offset, e.timestamp_ms);
        fold_one::<P>(&mut view, &mut at, &e.payload)?;
    }
    Ok(view.into_updates())
}

/// [`handle_events`] over the packed batch of `feed.handle-event-batch`
/// (`wit/projection.wit`), read in place: the payload is decoded where it lies,
/// and the envelope's strings are reused from event to event, so an event
/// costs no allocation of its own.
pub fn handle_event_batch<P: Projection>(
    batch: &[u8],
    read: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<ViewUpdate>, String> {
    let mut view = View::new(read);
    let mut at = Current::default();
    let mut rest = batch;
    while !rest.is_empty() {
        let payload = unpack_one(&mut rest, &mut at)?;
        fold_one::<P>(&mut view, &mut at, payload)?;
    }
    Ok(view.into_updates())
}

/// The event being folded, but its payload: what its envelope is built from.
#[derive(Default)]
struct Current {
    persistence_id: String,
    seq_nr: u64,
    offset: u64,
    timestamp_ms: u64,
    manifest: String,
    tags: Vec<String>,
}

/// Decode one event and hand it to `P`; `at`'s strings are lent to the
/// envelope and taken back.
fn fold_one<P: Projection>(view: &mut View, at: &mut Current, payload: &[u8]) -> Result<(), String> {
    let failed = |at: &Current, err: String| {
        format!("event at offset {} ({}#{}): {err}", at.offset, at.persistence_id, at.seq_nr)
    };
    let Some(event) = P::decode(&at.manifest, payload).map_err(|err| failed(at, err))? else {
        return Ok(());
    };
    let envelope = EventEnvelope {
        persistence_id: std::mem::take(&mut at.persistence_id),
        seq_nr: at.seq_nr,
        offset: at.offset,
        timestamp_ms: at.timestamp_ms,
        manifest: std::mem::take(&mut at.manifest),
        tags: std::mem::take(&mut at.tags),
        event,
    };
    let handled = P::handle(view, &envelope);
    at.persistence_id = envelope.persistence_id;
    at.manifest = envelope.manifest;
    at.tags = envelope.tags;
    handled.map_err(|err| failed(at, err))
}

/// Events packed as `feed.handle-event-batch` receives them (`wit/projection.wit`):
/// per event its persistence id, seq nr, offset, timestamp, manifest, tags and
/// payload, strings and the payload each after a u32 length, integers
/// little-endian.
pub fn pack(events: &[StoredEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    let str32 = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    };
    for e in events {
        str32(&mut out, e.persistence_id.as_bytes());
        out.extend_from_slice(&e.seq_nr.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
        str32(&mut out, e.manifest.as_bytes());
        out.extend_from_slice(&(e.tags.len() as u32).to_le_bytes());
        for t in &e.tags {
            str32(&mut out, t.as_bytes());
        }
        str32(&mut out, &e.payload);
    }
    out
}

/// Read one packed event from the front of `rest` into `at` (reusing its
/// strings); returns its payload.
fn unpack_one<'a>(rest: &mut &'a [u8], at: &mut Current) -> Result<&'a [u8], String> {
    set_str(&mut at.persistence_id, field(rest, "persistence id")?, "persistence id")?;
    at.seq_nr = u64_le(rest, "seq nr")?;
    at.offset = u64_le(rest, "offset")?;
    at.timestamp_ms = u64_le(rest, "timestamp")?;
    set_str(&mut at.manifest, field(rest, "manifest")?, "manifest")?;
    let count = u32_le(rest, "tag count")? as usize;
    // Each tag takes at least its 4 length bytes: a count past that is damage.
    if count > rest.len() / 4 {
        return Err(format!("an event batch names {count} tags, more than it holds"));
    }
    at.tags.truncate(count);
    for i in 0..count {
        let tag = field(rest, "tag")?;
        if i == at.tags.len() {
            at.tags.push(String::new());
        }
        set_str(&mut at.tags[i], tag, "tag")?;
    }
    field(rest, "payload")
}

fn set_str(to: &mut String, bytes: &[u8], what: &str) -> Result<(), String> {
    let s = std::str::from_utf8(bytes).map_err(|_| format!("an event batch holds a {what} that is not UTF-8"))?;
    to.clear();
    to.push_str(s);
    Ok(())
}

fn take<const N: usize>(rest: &mut &[u8], what: &str) -> Result<[u8; N], String> {
    let bytes = rest.get(..N).ok_or_else(|| format!("an event batch ends inside an event's {what}"))?;
    *rest = &rest[N..];
    Ok(bytes.try_into().unwrap())
}

fn u32_le(rest: &mut &[u8], what: &str) -> Result<u32, String> {
    take(rest, what).map(u32::from_le_bytes)
}

fn u64_le(rest: &mut &[u8], what: &str) -> Result<u64, String> {
    take(rest, what).map(u64::from_le_bytes)
}

/// An in-memory view for native tests: what the host would store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestView {
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl TestView {
    /// Feed `events` to `P` as one batch and store its changes. The batch goes
    /// through the packed form mneme hands a Rust projection in Wasm.
    pub fn apply<P: Projection>(&mut self, events: &[StoredEvent]) -> Result<(), String> {
        let entries = &self.entries;
        let mut read = |key: &str| entries.get(key).cloned();
        let updates = handle_event_batch::<P>(&pack(events), &mut read)?;
        for u in updates {
            match u {
                ViewUpdate::Put { key, value } => self.entries.insert(key, value),
                ViewUpdate::Delete { key } => self.entries.remove(&key),
            };
        }
        Ok(())
    }

    /// The value of `key` as JSON.
    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        self.entries.get(key).and_then(|v| serde_json::from_slice(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    struct Counter;

    #[derive(Deserialize)]
    #[serde(tag = "type")]
    enum Ev {
        Add { n: i64 },
        Forget,
        Fail,
    }

    impl Projection for Counter {
        type Event = Ev;
        const NAME: &'static str = "counter";
        const TAGS: &'static [&'static str] = &["t"];

        fn handle(view: &mut View, e: &EventEnvelope<Ev>) -> Result<(), String> {
            match e.event {
                Ev::Add { n } => {
                    view.update(e.entity_id(), |v: &mut i64| *v += n)?;
                    view.update("_sum", |v: &mut i64| *v += n)
                }
                Ev::Forget => {
                    view.delete(e.entity_id());
                    Ok(())
                }
                Ev::Fail => Err("refused".into()),
            }
        }

        fn decode(manifest: &str, payload: &[u8]) -> Result<Option<Ev>, String> {
            if manifest == "Ignored" {
                return Ok(None);
            }
            serde_json::from_slice(payload).map(Some).map_err(|e| e.to_string())
        }
    }

    fn ev(pid: &str, offset: u64, v: serde_json::Value) -> StoredEvent {
        StoredEvent::json(pid, offset, offset, &v)
    }

    #[test]
    fn a_batch_reads_its_own_changes_and_returns_one_update_per_key() {
        let mut stored: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        stored.insert("_sum".into(), b"100".to_vec());
        let mut reads = Vec::new();
        let mut read = |key: &str| {
            reads.push(key.to_string());
            stored.get(key).cloned()
        };
        let updates = handle_events::<Counter>(
            [
                ev("c|a", 1, json!({"type": "Add", "n": 2})),
                ev("c|b", 2, json!({"type": "Add", "n": 3})),
                ev("c|a", 3, json!({"type": "Add", "n": 4})),
                ev("c|b", 4, json!({"type": "Forget"})),
            ],
            &mut read,
        )
        .unwrap();
        assert_eq!(
            updates,
            vec![
                ViewUpdate::Put { key: "_sum".into(), value: b"109".to_vec() },
                ViewUpdate::Put { key: "a".into(), value: b"6".to_vec() },
                ViewUpdate::Delete { key: "b".into() },
            ]
        );
        assert_eq!(reads, vec!["a", "_sum", "b"], "each key is read from the host once");
    }

    #[test]
    fn updates_kept_decoded_read_back_like_stored_ones() {
        let mut read = |key: &str| (key == "n").then(|| b"1".to_vec());
        let mut view = View::new(&mut read);
        for _ in 0..3 {
            view.update("n", |n: &mut u64| *n += 1).unwrap();
        }
        // Every read sees the newest value, as bytes or decoded.
        assert_eq!(view.get_bytes("n"), Some(b"4".to_vec()));
        assert_eq!(view.get::<u64>("n").unwrap(), Some(4));
        view.update("n", |n: &mut u64| *n *= 10).unwrap();
        // Another type reads the JSON of the newest value.
        view.update("n", |n: &mut f64| *n += 0.5).unwrap();
        assert_eq!(view.get::<f64>("n").unwrap(), Some(40.5));
        // A put after updates wins, and so does an update after a put.
        view.update("m", |m: &mut Vec<u8>| m.push(1)).unwrap();
        view.put("m", &vec![7u8]);
        view.put("k", &1u8);
        view.update("k", |k: &mut u8| *k += 1).unwrap();
        view.update("gone", |g: &mut u8| *g += 1).unwrap();
        view.delete("gone");
        assert_eq!(
            view.into_updates(),
            vec![
                ViewUpdate::Delete { key: "gone".into() },
                ViewUpdate::Put { key: "k".into(), value: b"2".to_vec() },
                ViewUpdate::Put { key: "m".into(), value: b"[7]".to_vec() },
                ViewUpdate::Put { key: "n".into(), value: b"40.5".to_vec() },
            ]
        );
    }

    #[test]
    fn skipped_and_failing_events() {
        let mut view = TestView::default();
        let mut ignored = ev("c|a", 1, json!({"type": "Add", "n": 1}));
        ignored.manifest = "Ignored".into();
        view.apply::<Counter>(&[ignored, ev("c|a", 2, json!({"type": "Add", "n": 5}))]).unwrap();
        assert_eq!((view.json("a"), view.json("_sum")), (Some(json!(5)), Some(json!(5))));
        let before = view.clone();
        let err = view
            .apply::<Counter>(&[ev("c|a", 3, json!({"type": "Add", "n": 1})), ev("c|a", 4, json!({"type": "Fail"}))])
            .unwrap_err();
        assert!(err.contains("offset 4") && err.contains("c|a#4") && err.contains("refused"), "{err}");
        assert_eq!(view, before, "a failed batch changes nothing");
        let err = view.apply::<Counter>(&[ev("c|a", 5, json!({"type": "Nope"}))]).unwrap_err();
        assert!(err.contains("offset 5"), "{err}");
    }

    /// Stores every envelope's fields under its offset, to see them arrive.
    struct Echo;

    impl Projection for Echo {
        type Event = serde_json::Value;
        const NAME: &'static str = "echo";
        const TAGS: &'static [&'static str] = &["t"];

        fn handle(view: &mut View, e: &EventEnvelope<serde_json::Value>) -> Result<(), String> {
            let fields = (&e.persistence_id, e.seq_nr, e.timestamp_ms, &e.manifest, &e.tags, &e.event);
            view.put(e.offset.to_string(), &fields);
            Ok(())
        }
    }

    fn varied() -> Vec<StoredEvent> {
        let mut events = vec![
            ev("c|a", 1, json!({"type": "Add", "n": 1})),
            ev("c|ünï|cödé", 7, json!({"type": "Add", "n": -3, "note": "x".repeat(300)})),
            ev("c|b", u64::MAX, json!(null)),
        ];
        events[0].tags = vec!["t".into(), "other".into(), String::new()];
        events[1].timestamp_ms = 1_764_000_000_123;
        events[1].seq_nr = 42;
        events[2].manifest = String::new();
        events
    }

    #[test]
    fn a_packed_batch_gives_what_the_list_gives() {
        let mut read = |_: &str| None;
        let listed = handle_events::<Echo>(varied(), &mut read).unwrap();
        let packed = handle_event_batch::<Echo>(&pack(&varied()), &mut read).unwrap();
        assert_eq!(packed, listed);
        assert_eq!(listed.len(), 3);
        let ViewUpdate::Put { value, .. } = &listed[0] else { panic!("{listed:?}") };
        let fields: serde_json::Value = serde_json::from_slice(value).unwrap();
        assert_eq!(fields, json!(["c|a", 1, 0, "Add", ["t", "other", ""], {"type": "Add", "n": 1}]));
        assert_eq!(handle_event_batch::<Echo>(&[], &mut read).unwrap(), vec![], "an empty batch");
    }

    #[test]
    fn a_damaged_batch_is_refused_with_the_reason() {
        let mut read = |_: &str| None;
        let events = varied();
        let whole = pack(&events);
        let ends: Vec<usize> = (0..events.len()).map(|n| pack(&events[..n]).len()).collect();
        // Cut anywhere: an error naming the part it ends in, or (at the end of an
        // event) the events before the cut.
        for cut in 0..whole.len() {
            match handle_event_batch::<Echo>(&whole[..cut], &mut read) {
                Ok(updates) => assert_eq!(ends.iter().position(|&e| e == cut), Some(updates.len()), "cut at {cut}"),
                Err(e) => assert!(
                    e.starts_with("an event batch ends inside an event's ") || e.ends_with("tags, more than it holds"),
                    "cut at {cut}: {e}"
                ),
            }
        }
        // A tag count past the batch's end.
        let mut bad = pack(&events[..1]);
        let at = 4 + "c|a".len() + 24 + 4 + "Add".len();
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = handle_event_batch::<Echo>(&bad, &mut read).unwrap_err();
        assert!(e.contains("4294967295 tags, more than it holds"), "{e}");
        // A persistence id that is not UTF-8.
        let mut bad = pack(&events[..1]);
        bad[4] = 0xff;
        let e = handle_event_batch::<Echo>(&bad, &mut read).unwrap_err();
        assert_eq!(e, "an event batch holds a persistence id that is not UTF-8");
    }

    #[test]
    fn envelopes_split_the_persistence_id() {
        let e = EventEnvelope {
            persistence_id: "bank-account|a|b".into(),
            seq_nr: 1,
            offset: 1,
            timestamp_ms: 0,
            manifest: String::new(),
            tags: vec![],
            event: (),
        };
        assert_eq!((e.entity_type(), e.entity_id()), ("bank-account", "a|b"));
    }
}
