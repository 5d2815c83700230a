//! wasm32 only: converts between the projection world's WIT types and the SDK's.
//! [`crate::export_projection!`] calls these functions; the protocol itself is
//! `projection::handle_events` and `projection::handle_event_batch`, tested natively.

use std::sync::Once;

use crate::projection::{self, Projection, StoredEvent, ViewUpdate};
use crate::projection_bindings::mneme::projection::{host, types as wit, view};

/// Routes panic messages to the host's `report-fault` import (see `glue`).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| host::report_fault(&info.to_string())));
    });
}

pub fn describe<P: Projection>() -> wit::ProjectionInfo {
    install_panic_hook();
    wit::ProjectionInfo {
        name: P::NAME.to_owned(),
        tags: P::TAGS.iter().map(|t| t.to_string()).collect(),
        view_version: P::VIEW_VERSION,
    }
}

pub fn handle_events<P: Projection>(events: Vec<wit::StoredEvent>) -> Result<Vec<wit::ViewUpdate>, String> {
    install_panic_hook();
    let events = events.into_iter().map(|e| StoredEvent {
        persistence_id: e.persistence_id,
        seq_nr: e.seq_nr,
        offset: e.offset,
        timestamp_ms: e.timestamp_ms,
        manifest: e.manifest,
        tags: e.tags,
        payload: e.payload,
    });
    let mut read = |key: &str| view::get(key);
    let updates = projection::handle_events::<P>(events, &mut read)?;
    Ok(updates.into_iter().map(update_to_wit).collect())
}

pub fn handle_event_batch<P: Projection>(batch: Vec<u8>) -> Result<Vec<wit::ViewUpdate>, String> {
    install_panic_hook();
    let mut read = |key: &str| view::get(key);
    let updates = projection::handle_event_batch::<P>(&batch, &mut read)?;
    Ok(updates.into_iter().map(update_to_wit).collect())
}

fn update_to_wit(update: ViewUpdate) -> wit::ViewUpdate {
    match update {
        ViewUpdate::Put { key, value } => wit::ViewUpdate::Put(wit::ViewEntry { key, value }),
        ViewUpdate::Delete { key } => wit::ViewUpdate::Delete(key),
    }
}
