//! The packed batch recovery hands a guest: the argument of
//! `mneme:entity/replay#apply-event-batch` (`wit/entity.wit`).
//!
//! Format, the events one after another, nothing before or after them:
//!
//! ```text
//! manifest length: u32 LE | manifest: UTF-8 | payload length: u32 LE | payload
//! ```
//!
//! Why: as a `list<event>`, every event costs the guest an allocation for its
//! manifest and one for its payload (each a call from the host into the guest's
//! allocator) and frees them after the fold; packed, a batch of a thousand events
//! is one allocation and one copy, and the guest reads the events in place.

use super::bindings::exports::mneme::entity::handler::Event;

/// Events packed for one `apply-event-batch` call; reused from batch to batch.
#[derive(Debug, Default)]
pub struct EventBatch {
    bytes: Vec<u8>,
    len: usize,
}

impl EventBatch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
    }

    pub fn push(&mut self, manifest: &str, payload: &[u8]) {
        self.bytes.reserve(8 + manifest.len() + payload.len());
        put_field(&mut self.bytes, manifest.as_bytes());
        put_field(&mut self.bytes, payload);
        self.len += 1;
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed bytes, as the guest receives them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The events as (manifest, payload), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let manifest = take(&mut rest);
            let payload = take(&mut rest);
            // `push` took the manifest as a `&str`.
            Some((std::str::from_utf8(manifest).expect("manifest pushed as UTF-8"), payload))
        })
    }

    /// The events as the `list<event>` of `apply-events`, for a handler without
    /// `apply-event-batch` (tags empty, as recovery hands them).
    pub fn to_events(&self) -> Vec<Event> {
        self.iter()
            .map(|(manifest, payload)| Event {
                manifest: manifest.to_owned(),
                payload: payload.to_vec(),
                tags: Vec::new(),
            })
            .collect()
    }
}

/// Append a length-prefixed field (u32 LE length, then the bytes): the fields of
/// the packed batches of `wit/entity.wit`'s `replay` and `wit/projection.wit`'s `feed`.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// One length-prefixed field of bytes `push` wrote.
fn take<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let (len, tail) = rest.split_at(4);
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_in_order_with_their_bytes() {
        let mut batch = EventBatch::default();
        batch.push("Deposited", br#"{"amount":1}"#);
        batch.push("", b"");
        batch.push("Withdrawn.v2", &[0, 255, 7]);
        assert_eq!(batch.len(), 3);
        let events: Vec<(&str, &[u8])> = batch.iter().collect();
        assert_eq!(
            events,
            vec![("Deposited", &br#"{"amount":1}"#[..]), ("", &b""[..]), ("Withdrawn.v2", &[0, 255, 7][..])]
        );
        assert_eq!(batch.to_events()[2].manifest, "Withdrawn.v2");
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.iter().count(), 0);
    }

    #[test]
    fn the_layout_is_the_one_wit_entity_documents() {
        let mut batch = EventBatch::default();
        batch.push("Ab", b"xyz");
        assert_eq!(batch.as_bytes(), &[2, 0, 0, 0, b'A', b'b', 3, 0, 0, 0, b'x', b'y', b'z']);
    }
}
