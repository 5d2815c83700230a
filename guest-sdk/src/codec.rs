//! JSON encoding of commands, events, state and replies.
//!
//! One place decides the byte format, so every error message names what failed to
//! decode and why (the host shows it to the caller).

use serde::{de::DeserializeOwned, Serialize};

/// Encodes `value` as JSON. Failing here is a bug in the entity (e.g. a map with
/// non-string keys), so it panics; the panic hook reports the message to the host.
pub(crate) fn to_json(value: &impl Serialize, what: &str) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(err) => panic!("mneme-sdk: could not encode {what} as JSON: {err}"),
    }
}

pub(crate) fn decode_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, String> {
    serde_json::from_slice(bytes).map_err(|err| format!("state could not be decoded: {err}"))
}

pub(crate) fn decode_command<C: DeserializeOwned>(bytes: &[u8]) -> Result<C, String> {
    serde_json::from_slice(bytes).map_err(|err| format!("malformed command: {err}"))
}

pub(crate) fn decode_event<E: DeserializeOwned>(
    index: usize,
    manifest: &str,
    bytes: &[u8],
) -> Result<E, String> {
    serde_json::from_slice(bytes).map_err(|err| {
        format!("event {index} of the batch (manifest `{manifest}`) could not be decoded: {err}")
    })
}

/// The default event manifest: the name a JSON reader would use for the event's
/// variant. See [`crate::Entity::manifest`].
pub(crate) fn default_manifest(event: &impl Serialize) -> String {
    use serde_json::Value;
    match serde_json::to_value(event) {
        Ok(Value::Object(map)) => match map.get("type") {
            Some(Value::String(name)) => name.clone(),
            _ if map.len() == 1 => map.keys().next().cloned().unwrap_or_default(),
            _ => "event".to_owned(),
        },
        Ok(Value::String(name)) => name,
        _ => "event".to_owned(),
    }
}
