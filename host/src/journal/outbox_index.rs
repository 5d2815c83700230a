//! The outbox's records as the log journal's index holds them: reading pending
//! entries, applied keys and topic messages through the index, and `mneme journal
//! verify`'s checks of them. (Records, keys and what each record indexes:
//! `outbox.rs`.)

use std::collections::{HashMap, HashSet};

use super::body::OutboxKind as Kind;
use super::index::Index;
use super::location::Loc;
use super::outbox::*;
use super::{JournalError, JournalResult};

/// Every pending entry in the index, in key order; `read` returns a record's bytes.
pub(super) fn pending_in_index(
    index: &Index,
    read: impl Fn(Loc) -> JournalResult<Vec<u8>>,
) -> JournalResult<Vec<OutboxEntry>> {
    let mut out = Vec::new();
    for (k, loc) in index.prefixed(&[PENDING], usize::MAX)? {
        let e = decode_entry(&read(loc)?).map_err(|e| located(loc, e))?;
        if k[1..] != *e.key.as_bytes() {
            return Err(JournalError::Corrupt(format!(
                "index entry of pending outbox entry `{}` points at entry `{}`",
                String::from_utf8_lossy(&k[1..]),
                e.key
            )));
        }
        out.push(e);
    }
    Ok(out)
}

/// Name where a damaged record is.
fn located(loc: Loc, e: JournalError) -> JournalError {
    match e {
        JournalError::Corrupt(m) => {
            JournalError::Corrupt(format!("{m} (commit log segment {} byte {})", loc.segment, loc.pos))
        }
        e => e,
    }
}

pub(super) fn applied_in_index(index: &Index, pid: &str, key: &str) -> JournalResult<bool> {
    index.contains(&applied_key(pid, key))
}

pub(super) fn topic_head_in_index(index: &Index, topic: &str) -> JournalResult<u64> {
    match index.last_under(&topic_prefix(topic))? {
        Some(k) => position_of(&k),
        None => Ok(0),
    }
}

pub(super) fn messages_in_index(
    index: &Index,
    topic: &str,
    from: u64,
    limit: usize,
    read: impl Fn(Loc) -> JournalResult<Vec<u8>>,
) -> JournalResult<Vec<StoredTopicMessage>> {
    let range = index.range(topic_key(topic, from.max(1)), topic_key(topic, u64::MAX), limit)?;
    let mut out = Vec::with_capacity(range.len());
    for (k, loc) in range {
        let m = decode_message(&read(loc)?).map_err(|e| located(loc, e))?;
        let position = position_of(&k)?;
        if m.topic != topic || m.position != position {
            return Err(JournalError::Corrupt(format!(
                "index entry of topic `{topic}` position {position} points at `{}` position {}",
                m.topic, m.position
            )));
        }
        out.push(m);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// `mneme journal verify`.

/// What verify learns about the outbox while it reads the log, and checks.
#[derive(Default)]
pub(super) struct VerifyOutbox {
    /// Entries not (yet) done, and where their record is.
    pending: HashMap<String, Loc>,
    /// Applied keys seen: an entity must apply each key at most once.
    applied: HashSet<(String, String)>,
    /// Applied keys and topic messages in frames the index has taken in.
    indexed_applied: u64,
    indexed_messages: u64,
    /// Newest position of each topic.
    topics: HashMap<String, u64>,
    pub entries: u64,
    pub messages: u64,
}

/// How verify reports: a problem, and an index entry that must point at a record.
pub(super) trait Report {
    fn problem(&mut self, p: String);
    fn expect(&mut self, index: &Index, key: &[u8], loc: Loc, what: &str);
}

impl VerifyOutbox {
    /// Check one record; `index` when its frame is one the index has taken in.
    pub(super) fn record(
        &mut self,
        kind: Kind,
        bytes: &[u8],
        loc: Loc,
        index: Option<&Index>,
        report: &mut dyn Report,
    ) {
        let at = format!("segment {} byte {}", loc.segment, loc.pos);
        match kind {
            Kind::Entry => match decode_entry(bytes) {
                Ok(e) => {
                    self.entries += 1;
                    if self.pending.insert(e.key.clone(), loc).is_some() {
                        report.problem(format!("outbox entry `{}` at {at} is stored twice while pending", e.key));
                    }
                }
                Err(err) => report.problem(format!("outbox entry record at {at}: {err}")),
            },
            Kind::Done => match decode_done(bytes) {
                Ok(key) => {
                    if self.pending.remove(&key).is_none() {
                        report.problem(format!("outbox done record at {at} for `{key}`, which is not pending"));
                    }
                }
                Err(err) => report.problem(format!("outbox done record at {at}: {err}")),
            },
            Kind::Applied => match decode_applied(bytes) {
                Ok(a) => {
                    let what = format!("idempotency key `{}` applied by {}", a.key, a.persistence_id);
                    if !self.applied.insert((a.persistence_id.clone(), a.key.clone())) {
                        report.problem(format!("{what} at {at}: applied twice"));
                    }
                    if let Some(index) = index {
                        self.indexed_applied += 1;
                        report.expect(index, &applied_key(&a.persistence_id, &a.key), loc, &what);
                    }
                }
                Err(err) => report.problem(format!("applied key record at {at}: {err}")),
            },
            Kind::TopicMessage => match decode_message(bytes) {
                Ok(m) => {
                    self.messages += 1;
                    let last = self.topics.entry(m.topic.clone()).or_insert(0);
                    if m.position != *last + 1 {
                        report.problem(format!("topic `{}`: position {} follows {}", m.topic, m.position, last));
                    }
                    *last = m.position;
                    if let Some(index) = index {
                        self.indexed_messages += 1;
                        let what = format!("topic `{}` position {}", m.topic, m.position);
                        report.expect(index, &topic_key(&m.topic, m.position), loc, &what);
                    }
                }
                Err(err) => report.problem(format!("topic message record at {at}: {err}")),
            },
        }
    }

    /// Entries still pending after the whole log.
    pub(super) fn pending(&self) -> u64 {
        self.pending.len() as u64
    }

    pub(super) fn applied(&self) -> u64 {
        self.applied.len() as u64
    }

    /// The index holds no other outbox entries than these: the pending entries of
    /// the log (when the index has taken in all of it), and as many applied keys
    /// and topic messages as the indexed frames hold.
    pub(super) fn index_has_nothing_else(&self, index: &Index, complete: bool, report: &mut dyn Report) {
        for (prefix, what, n) in
            [(APPLIED, "applied key", self.indexed_applied), (TOPIC, "topic message", self.indexed_messages)]
        {
            match index.count(prefix) {
                Ok(found) if found != n => {
                    report.problem(format!("index holds {found} {what} entries, the log's indexed frames {n}"))
                }
                Ok(_) => {}
                Err(e) => report.problem(format!("index {what} entries cannot be read: {e}")),
            }
        }
        if !complete {
            return;
        }
        match index.prefixed(&[PENDING], usize::MAX) {
            Ok(found) => {
                let found: HashMap<String, Loc> =
                    found.into_iter().map(|(k, loc)| (String::from_utf8_lossy(&k[1..]).into_owned(), loc)).collect();
                if found != self.pending {
                    report.problem(format!(
                        "index lists {} pending outbox entries, the log {} (or they point elsewhere)",
                        found.len(),
                        self.pending.len()
                    ));
                }
            }
            Err(e) => report.problem(format!("index outbox entries cannot be read: {e}")),
        }
    }
}
