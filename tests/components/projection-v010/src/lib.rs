//! Test-only projection built against `mneme:projection@0.1.0` (`wit/`, a copy of
//! the contract before the optional `feed` export), with raw wit-bindgen as a
//! component of that time would be: it counts the events of each entity (view key
//! = the entity id, value = the count as JSON), reading the stored count back
//! through `view.get`. mneme must keep running it, through `handle-events`.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::collections::BTreeMap;

    wit_bindgen::generate!({ path: "wit", world: "projection" });

    use exports::mneme::projection::handler::Guest;
    use mneme::projection::types::{ProjectionInfo, StoredEvent, ViewEntry, ViewUpdate};
    use mneme::projection::view;

    struct EventCounts;

    impl Guest for EventCounts {
        fn describe() -> ProjectionInfo {
            ProjectionInfo { name: "event-counts".into(), tags: vec!["account".into()], view_version: 1 }
        }

        fn handle_events(events: Vec<StoredEvent>) -> Result<Vec<ViewUpdate>, String> {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for e in events {
                let id = e.persistence_id.split_once('|').map_or("", |(_, id)| id).to_string();
                let count = match counts.get(&id) {
                    Some(n) => *n,
                    None => match view::get(&id) {
                        Some(v) => String::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| format!("the count of `{id}` is not a number"))?,
                        None => 0,
                    },
                };
                counts.insert(id, count + 1);
            }
            Ok(counts
                .into_iter()
                .map(|(key, n)| ViewUpdate::Put(ViewEntry { key, value: n.to_string().into_bytes() }))
                .collect())
        }
    }

    export!(EventCounts);
}
