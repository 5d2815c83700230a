//! The entities a shard keeps in memory, least recently active first, with what
//! the per-type gauges report (entities, stashed commands) counted as entities
//! come and go: the shard's periodic work looks at the few types and at the
//! entities due to leave, never at all of them (a walk over all took 3.7–4 ms
//! with 5k entities a shard, its commands waiting meanwhile; BENCHMARKS.md).
//! The price is one lookup of the type's count on each `insert` and `remove`.
//!
//! Invariants:
//! * order: a command takes its entity out and puts it back at the end with
//!   `last_active` set to now, and nothing else puts an entity back with an older
//!   `last_active`, so `last_active` never decreases from front to back;
//! * counts: an entity's stash changes only while it is out of the map (a
//!   command runs on an entity taken out), so counting it on `insert` and
//!   `remove` keeps the per-type counts exact; `get_mut` and `iter_mut` must not
//!   change a stash.

use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

use super::entity::Entity;

/// In memory per entity type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TypeCount {
    pub entities: usize,
    pub stashed: usize,
}

#[derive(Default)]
pub struct Live {
    entities: LinkedHashMap<String, Entity>,
    per_type: foldhash::HashMap<String, TypeCount>,
}

impl Live {
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn get(&self, pid: &str) -> Option<&Entity> {
        self.entities.get(pid)
    }

    /// For what is not counted (durable state, the pending batch): not the stash.
    pub fn get_mut(&mut self, pid: &str) -> Option<&mut Entity> {
        self.entities.get_mut(pid)
    }

    /// For what is not counted (see `get_mut`).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Entity)> {
        self.entities.iter_mut()
    }

    /// Put `entity` at the back (most recently active).
    pub fn insert(&mut self, pid: String, entity: Entity) {
        self.count(&entity, true);
        if let Some(old) = self.entities.insert(pid, entity) {
            self.count(&old, false);
        }
    }

    pub fn remove(&mut self, pid: &str) -> Option<Entity> {
        let e = self.entities.remove(pid)?;
        self.count(&e, false);
        Some(e)
    }

    /// The least recently active entity, taken out.
    pub fn pop_front(&mut self) -> Option<(String, Entity)> {
        let (pid, e) = self.entities.pop_front()?;
        self.count(&e, false);
        Some((pid, e))
    }

    /// Take out the entities inactive for `timeout` as of `now` that `leave` lets
    /// go; those it keeps go to the back as active now. Looks at each entity once
    /// at most and stops at the first that is not due (the order invariant).
    pub fn take_idle(&mut self, now: Instant, timeout: Duration, leave: impl Fn(&Entity) -> bool) -> Vec<Entity> {
        let mut out = Vec::new();
        let mut unseen = self.entities.len();
        while let Some((_, e)) = self.entities.front() {
            if unseen == 0 || now.saturating_duration_since(e.last_active) < timeout {
                break;
            }
            unseen -= 1;
            let (pid, mut e) = self.pop_front().unwrap();
            if leave(&e) {
                out.push(e);
            } else {
                e.last_active = now;
                self.insert(pid, e);
            }
        }
        out
    }

    /// Entities and stashed commands in memory per type (types with none left are
    /// dropped).
    pub fn per_type(&self) -> impl Iterator<Item = (&str, TypeCount)> {
        self.per_type.iter().map(|(t, c)| (t.as_str(), *c))
    }

    fn count(&mut self, e: &Entity, add: bool) {
        let c = match self.per_type.get_mut(e.entity_type.as_str()) {
            Some(c) => c,
            None => self.per_type.entry(e.entity_type.clone()).or_default(),
        };
        if add {
            c.entities += 1;
            c.stashed += e.stash.len();
        } else {
            c.entities -= 1;
            c.stashed -= e.stash.len();
            if c.entities == 0 {
                self.per_type.remove(e.entity_type.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(entity_type: &str, id: &str, last_active: Instant) -> (String, Entity) {
        let mut e = Entity::recovered(entity_type, id, 1, 1, Vec::new().into(), 0, 0);
        e.last_active = last_active;
        (format!("{entity_type}|{id}"), e)
    }

    fn counts(live: &Live) -> Vec<(String, usize)> {
        let mut v: Vec<_> = live.per_type().map(|(t, c)| (t.to_string(), c.entities)).collect();
        v.sort();
        v
    }

    #[test]
    fn counts_follow_inserts_and_removals() {
        let t0 = Instant::now();
        let mut live = Live::default();
        for (pid, e) in [entity("a", "1", t0), entity("a", "2", t0), entity("b", "1", t0)] {
            live.insert(pid, e);
        }
        assert_eq!(counts(&live), [("a".to_string(), 2), ("b".to_string(), 1)]);
        // Put back after a command: counted once.
        let e = live.remove("a|1").unwrap();
        live.insert("a|1".into(), e);
        assert_eq!(counts(&live), [("a".to_string(), 2), ("b".to_string(), 1)]);
        live.remove("b|1").unwrap();
        assert_eq!(counts(&live), [("a".to_string(), 2)], "a type with none left is dropped");
        assert!(live.remove("b|1").is_none());
        let (pid, _) = live.pop_front().unwrap();
        assert_eq!(pid, "a|2", "a|1 went to the back");
        assert_eq!(counts(&live), [("a".to_string(), 1)]);
    }

    #[test]
    fn idle_ones_leave_from_the_front_and_busy_ones_go_back() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let now = t0 + Duration::from_secs(100);
        let mut live = Live::default();
        // Inactive for 100, 95 (busy), 90 s, then 5 s and 0 s.
        for (i, secs) in [0u64, 5, 10, 95, 100].into_iter().enumerate() {
            let (pid, e) = entity("a", &i.to_string(), t0 + Duration::from_secs(secs));
            live.insert(pid, e);
        }
        let left = live.take_idle(now, timeout, |e| e.entity_id != "1");
        let ids: Vec<_> = left.iter().map(|e| e.entity_id.as_str()).collect();
        assert_eq!(ids, ["0", "2"]);
        assert_eq!(live.len(), 3);
        assert_eq!(counts(&live), [("a".to_string(), 3)]);
        // The busy one went to the back as active now: order and `last_active` agree.
        let order: Vec<_> =
            std::iter::from_fn(|| live.pop_front()).map(|(_, e)| (e.entity_id, e.last_active)).collect();
        assert_eq!(order.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["3", "4", "1"]);
        assert!(order.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(counts(&live).is_empty());
    }

    #[test]
    fn a_zero_timeout_looks_at_each_entity_once() {
        let now = Instant::now();
        let mut live = Live::default();
        for id in ["0", "1", "2"] {
            let (pid, e) = entity("a", id, now);
            live.insert(pid, e);
        }
        let left = live.take_idle(now, Duration::ZERO, |e| e.entity_id == "1");
        assert_eq!(left.iter().map(|e| e.entity_id.as_str()).collect::<Vec<_>>(), ["1"]);
        assert_eq!(live.len(), 2, "the busy ones stay, and the walk ends");
    }
}
