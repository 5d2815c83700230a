//! What one projection batch is made of, as plain functions and types:
//!
//! * [`next_batch`]: the events after the projection's position carrying any of
//!   its tags, merged in offset order (an event with two of the tags once), never
//!   past the durable head, bounded in count and payload bytes;
//! * [`Overlay`]: the view as the guest's `get` sees it during the batch: the
//!   stored view with the updates returned by the batch's earlier calls on top;
//! * [`ViewCache`]: the values of the view the worker has read or written, so a
//!   key read again is not read from the journal again;
//! * [`check_updates`]: what a guest returned, checked against the limits before
//!   anything of it is stored.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use crate::component::ViewReader;
use crate::journal::{Journal, JournalResult, StoredEvent, ViewUpdate};
use crate::names::validate_view_key;

/// The events of one batch, and the offset the batch covers: every event carrying
/// one of the tags with `position < offset <= through` is in `events`.
#[derive(Debug, PartialEq, Eq)]
pub struct Feed {
    pub events: Vec<StoredEvent>,
    pub through: u64,
}

/// The next batch after `position`, up to `head` (the newest durable offset: every
/// event at or before it is readable, so no later read can add one there).
///
/// `read(tag, from, limit)` is `Journal::events_by_tag`. When a tag has more than
/// `max_events` events left, the batch ends at the last one read of it, so the
/// events of the other tags after that point wait for the next batch. When the
/// payloads pass `max_bytes`, the batch ends before the event that passes it (a
/// batch has at least one event).
pub fn next_batch(
    mut read: impl FnMut(&str, u64, usize) -> JournalResult<Vec<StoredEvent>>,
    tags: &[String],
    position: u64,
    head: u64,
    max_events: usize,
    max_bytes: usize,
) -> JournalResult<Feed> {
    let max_events = max_events.max(1);
    let mut through = head;
    let mut events = Vec::new();
    if position >= head {
        return Ok(Feed { events, through: position });
    }
    for tag in tags {
        let read = read(tag, position + 1, max_events)?;
        if read.len() >= max_events {
            through = through.min(read.last().map_or(head, |e| e.offset));
        }
        events.extend(read);
    }
    events.retain(|e| e.offset <= through);
    events.sort_by_key(|e| e.offset);
    events.dedup_by_key(|e| e.offset);
    events.truncate(max_events);
    if events.len() == max_events {
        through = events.last().map_or(through, |e| e.offset);
    }
    let mut bytes = 0;
    for (i, e) in events.iter().enumerate() {
        bytes += e.payload.len();
        if bytes > max_bytes && i > 0 {
            through = events[i - 1].offset;
            events.truncate(i);
            break;
        }
    }
    Ok(Feed { events, through })
}

/// What a worker knows of its generation's view: the updates of the batch being
/// stored (`pending`: one batch is in flight while the next is computed, and it
/// is queued only after the one before it landed, so `pending` is one batch),
/// and the value (or absence) of every key it has read or stored, up to a budget
/// of bytes (past it, that part starts over empty; `pending` is never dropped).
/// Only the worker writes its generation, so once a batch has landed the cache
/// never differs from the journal; after a failed write everything is forgotten.
pub struct ViewCache {
    pending: HashMap<String, Option<Vec<u8>>>,
    values: HashMap<String, Option<Vec<u8>>>,
    bytes: usize,
    budget: usize,
}

impl ViewCache {
    pub fn new(budget: usize) -> ViewCache {
        ViewCache { pending: HashMap::default(), values: HashMap::default(), bytes: 0, budget }
    }

    fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.pending.get(key).or_else(|| self.values.get(key)).cloned()
    }

    fn insert(&mut self, key: String, value: Option<Vec<u8>>) {
        let cost = |key: &str, value: &Option<Vec<u8>>| key.len() + value.as_ref().map_or(0, Vec::len) + 64;
        if let Some(old) = self.values.remove(&key) {
            self.bytes -= cost(&key, &old);
        }
        let size = cost(&key, &value);
        if size > self.budget {
            return;
        }
        if self.bytes + size > self.budget {
            self.values.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.values.insert(key, value);
    }

    /// The updates of a batch on its way to the journal: read from here until it lands.
    pub fn queue(&mut self, updates: &[ViewUpdate]) {
        for u in updates {
            let (key, value) = match u {
                ViewUpdate::Put { key, value } => (key, Some(value.clone())),
                ViewUpdate::Delete { key } => (key, None),
            };
            self.pending.insert(key.clone(), value);
        }
    }

    /// The queued batch is stored.
    pub fn landed(&mut self) {
        // Drained, not replaced: the next batch's updates reuse its table.
        let mut pending = std::mem::take(&mut self.pending);
        for (key, value) in pending.drain() {
            self.insert(key, value);
        }
        self.pending = pending;
    }

    /// A write failed: what it held is not stored, and what was computed on top of it is void.
    pub fn forget(&mut self) {
        self.pending.clear();
        self.values.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }
}

/// The view during a batch: the guest's `get` reads the updates returned so far
/// in this batch, else the stored view (through the worker's cache).
pub struct Overlay {
    journal: Arc<dyn Journal>,
    projection: String,
    generation: u32,
    cache: Arc<Mutex<ViewCache>>,
    /// Key → its new value (`None`: deleted), for every key the batch changed.
    changes: Mutex<HashMap<String, Option<Vec<u8>>>>,
}

impl Overlay {
    pub fn new(
        journal: Arc<dyn Journal>,
        projection: &str,
        generation: u32,
        cache: Arc<Mutex<ViewCache>>,
    ) -> Arc<Overlay> {
        Arc::new(Overlay {
            journal,
            projection: projection.to_string(),
            generation,
            cache,
            changes: Mutex::new(HashMap::default()),
        })
    }

    /// Take in what one call returned, in order (a later update of a key wins).
    pub fn apply(&self, updates: Vec<ViewUpdate>) {
        let mut changes = self.changes.lock().unwrap();
        for u in updates {
            match u {
                ViewUpdate::Put { key, value } => changes.insert(key, Some(value)),
                ViewUpdate::Delete { key } => changes.insert(key, None),
            };
        }
    }

    /// The batch's updates, one per key, in key order.
    pub fn into_updates(&self) -> Vec<ViewUpdate> {
        let mut changes: Vec<_> = std::mem::take(&mut *self.changes.lock().unwrap()).into_iter().collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => ViewUpdate::Put { key, value },
                None => ViewUpdate::Delete { key },
            })
            .collect()
    }
}

impl ViewReader for Overlay {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(change) = self.changes.lock().unwrap().get(key) {
            return Ok(change.clone());
        }
        if let Some(known) = self.cache.lock().unwrap().get(key) {
            return Ok(known);
        }
        let stored = self.journal.view_get(&self.projection, self.generation, key).map_err(|e| e.to_string())?;
        self.cache.lock().unwrap().insert(key.to_string(), stored.clone());
        Ok(stored)
    }
}

/// The guest's updates as the journal's, if every key is valid and every value
/// within `max_value_bytes`; else why not (the projection fails with it).
pub fn check_updates(
    updates: Vec<crate::component::projection::ViewUpdate>,
    max_value_bytes: usize,
) -> Result<Vec<ViewUpdate>, String> {
    use crate::component::projection::ViewUpdate as Guest;
    let mut out = Vec::with_capacity(updates.len());
    for u in updates {
        let (key, value) = match u {
            Guest::Put(entry) => (entry.key, Some(entry.value)),
            Guest::Delete(key) => (key, None),
        };
        validate_view_key(&key).map_err(|e| format!("handle-events returned an update with an {e}"))?;
        if let Some(v) = &value {
            if v.len() > max_value_bytes {
                return Err(format!(
                    "handle-events put {} bytes under key `{}`, more than the {} bytes a view value may hold \
                     (--max-view-value-bytes)",
                    v.len(),
                    key.escape_default(),
                    max_value_bytes
                ));
            }
        }
        out.push(match value {
            Some(value) => ViewUpdate::Put { key, value },
            None => ViewUpdate::Delete { key },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::projection::bindings::mneme::projection::types::{ViewEntry, ViewUpdate as Guest};
    use crate::journal::JournalError;

    fn event(offset: u64, tags: &[&str], bytes: usize) -> StoredEvent {
        StoredEvent {
            persistence_id: "a|1".into(),
            seq_nr: offset,
            offset,
            timestamp_ms: 0,
            writer_id: "w".into(),
            manifest: "M".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            payload: vec![b'x'; bytes],
        }
    }

    /// A journal of events at the given offsets with tags, read like `events_by_tag`.
    fn journal(events: Vec<StoredEvent>) -> impl FnMut(&str, u64, usize) -> JournalResult<Vec<StoredEvent>> {
        move |tag, from, limit| {
            Ok(events
                .iter()
                .filter(|e| e.offset >= from && e.tags.iter().any(|t| t == tag))
                .take(limit)
                .cloned()
                .collect())
        }
    }

    fn offsets(feed: &Feed) -> Vec<u64> {
        feed.events.iter().map(|e| e.offset).collect()
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tags_are_merged_in_offset_order_once_each_up_to_the_head() {
        let j = || {
            journal(vec![
                event(1, &["a"], 1),
                event(2, &["b"], 1),
                event(3, &["a", "b"], 1),
                event(4, &["c"], 1),
                event(5, &["b"], 1),
                event(6, &["a"], 1),
            ])
        };
        let feed = next_batch(j(), &tags(&["a", "b"]), 0, 5, 100, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![1, 2, 3, 5], 5), "6 is past the head");
        let feed = next_batch(j(), &tags(&["a", "b"]), 3, 6, 100, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![5, 6], 6));
        let feed = next_batch(j(), &tags(&["c"]), 4, 6, 100, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![], 6), "nothing to feed, and the head is covered");
        let feed = next_batch(j(), &tags(&["a"]), 6, 6, 100, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![], 6));
    }

    #[test]
    fn a_full_read_of_one_tag_ends_the_batch_there() {
        let j = || {
            journal(vec![
                event(1, &["a"], 1),
                event(2, &["a"], 1),
                event(3, &["b"], 1),
                event(4, &["a"], 1),
                event(5, &["b"], 1),
            ])
        };
        // Tag a fills its read (1, 2) first: b's event 3 must wait, or 4 would be skipped.
        let feed = next_batch(j(), &tags(&["a", "b"]), 0, 5, 2, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![1, 2], 2));
        let feed = next_batch(j(), &tags(&["a", "b"]), 2, 5, 2, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![3, 4], 4));
        let feed = next_batch(j(), &tags(&["a", "b"]), 4, 5, 2, 1 << 20).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![5], 5));
    }

    #[test]
    fn the_payload_bound_ends_a_batch_before_the_event_that_passes_it() {
        let j = || journal(vec![event(1, &["a"], 60), event(2, &["a"], 60), event(3, &["a"], 200)]);
        let feed = next_batch(j(), &tags(&["a"]), 0, 3, 100, 100).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![1], 1));
        let feed = next_batch(j(), &tags(&["a"]), 2, 3, 100, 100).unwrap();
        assert_eq!((offsets(&feed), feed.through), (vec![3], 3), "one event always goes, whatever its size");
    }

    #[test]
    fn read_errors_are_passed_on() {
        let failing = |_: &str, _, _| Err(JournalError::Storage("disk".into()));
        assert!(next_batch(failing, &tags(&["a"]), 0, 3, 10, 10).is_err());
    }

    #[test]
    fn the_overlay_shows_the_batch_s_updates_over_the_stored_view() {
        let dir = tempfile::tempdir().unwrap();
        let j = crate::journal::open(dir.path(), crate::journal::Backend::Log).unwrap();
        j.write_projection(&crate::journal::ProjectionBatch {
            offset: crate::journal::ProjectionOffset {
                projection: "p".into(),
                generation: 1,
                offset: 0,
                view_version: 1,
                component_version: 1,
                live: true,
            },
            previous_offset: 0,
            updates: vec![
                ViewUpdate::Put { key: "a".into(), value: b"stored".to_vec() },
                ViewUpdate::Put { key: "b".into(), value: b"stored".to_vec() },
            ],
            fence: None,
        })
        .unwrap();
        let cache = Arc::new(Mutex::new(ViewCache::new(1 << 20)));
        let o = Overlay::new(j.clone(), "p", 1, cache.clone());
        assert_eq!(o.get("a").unwrap(), Some(b"stored".to_vec()));
        assert_eq!(o.get("z").unwrap(), None);
        assert_eq!(cache.lock().unwrap().len(), 2, "what was read is remembered, absent keys too");
        o.apply(vec![
            ViewUpdate::Put { key: "a".into(), value: b"1".to_vec() },
            ViewUpdate::Delete { key: "b".into() },
            ViewUpdate::Put { key: "c".into(), value: b"1".to_vec() },
        ]);
        o.apply(vec![ViewUpdate::Put { key: "c".into(), value: b"2".to_vec() }]);
        assert_eq!((o.get("a").unwrap(), o.get("b").unwrap()), (Some(b"1".to_vec()), None));
        assert_eq!(o.get("c").unwrap(), Some(b"2".to_vec()), "the later update wins");
        assert_eq!(
            o.into_updates(),
            vec![
                ViewUpdate::Put { key: "a".into(), value: b"1".to_vec() },
                ViewUpdate::Delete { key: "b".into() },
                ViewUpdate::Put { key: "c".into(), value: b"2".to_vec() },
            ],
            "one update per key"
        );
    }

    #[test]
    fn the_cache_keeps_the_batch_in_flight_and_starts_over_past_its_budget() {
        let mut c = ViewCache::new(200);
        let stored = |c: &mut ViewCache, u: &[ViewUpdate]| {
            c.queue(u);
            c.landed();
        };
        stored(
            &mut c,
            &[ViewUpdate::Put { key: "a".into(), value: vec![1; 10] }, ViewUpdate::Delete { key: "b".into() }],
        );
        assert_eq!((c.get("a"), c.get("b"), c.get("c")), (Some(Some(vec![1; 10])), Some(None), None));
        stored(&mut c, &[ViewUpdate::Put { key: "a".into(), value: vec![2; 10] }]);
        assert_eq!((c.get("a"), c.len()), (Some(Some(vec![2; 10])), 2), "replaced, not counted twice");
        stored(&mut c, &[ViewUpdate::Put { key: "a".into(), value: vec![3; 80] }]);
        assert_eq!(
            (c.get("a"), c.get("b"), c.len()),
            (Some(Some(vec![3; 80])), None, 1),
            "a value grown past the budget: starts over with it alone"
        );
        stored(&mut c, &[ViewUpdate::Put { key: "big".into(), value: vec![0; 100] }]);
        assert_eq!((c.get("a"), c.get("big").is_some()), (None, true), "over the budget: starts over");
        stored(&mut c, &[ViewUpdate::Put { key: "huge".into(), value: vec![0; 1000] }]);
        assert_eq!(c.get("huge"), None, "a value larger than the budget is not kept");
        // In flight: always readable, whatever the budget, until it lands or fails.
        c.queue(&[ViewUpdate::Put { key: "huge".into(), value: vec![0; 1000] }]);
        assert!(c.get("huge").is_some());
        c.forget();
        assert_eq!((c.get("huge"), c.get("big")), (None, None), "a failed write forgets everything");
    }

    #[test]
    fn updates_over_the_limits_are_refused_with_the_reason() {
        let put = |key: &str, n: usize| Guest::Put(ViewEntry { key: key.into(), value: vec![0; n] });
        let ok = check_updates(vec![put("a", 10), Guest::Delete("b".into())], 10).unwrap();
        assert_eq!(ok.len(), 2);
        let err = check_updates(vec![put("a", 1), put("big", 11)], 10).unwrap_err();
        assert!(err.contains("11 bytes") && err.contains("`big`") && err.contains("--max-view-value-bytes"), "{err}");
        let err = check_updates(vec![Guest::Delete("".into())], 10).unwrap_err();
        assert!(err.contains("invalid view key"), "{err}");
    }
}
