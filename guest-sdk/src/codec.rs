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

/// The default event manifest: the name a JSON reader would use for the event's
/// variant. See [`crate::Entity::manifest`].
///
/// Runs for every persisted event, so it reads the encoded JSON with a probe that
/// skips values instead of building a `serde_json::Value` tree, and before that
/// looks for the shape most events have: serde writes the tag of an internally
/// tagged enum (`#[serde(tag = "type")]`) as the object's first key, and
/// serde_json writes no spaces, so such an event starts with `{"type":"`.
pub fn default_manifest(event: &impl Serialize) -> String {
    match serde_json::to_vec(event) {
        Ok(bytes) => manifest_of_json(&bytes),
        Err(_) => EVENT.to_owned(),
    }
}

/// The manifest of encoded JSON, as [`default_manifest`] describes it.
fn manifest_of_json(bytes: &[u8]) -> String {
    match leading_type(bytes) {
        Some(name) => name.to_owned(),
        None => serde_json::from_slice::<ManifestProbe>(bytes).map_or_else(|_| EVENT.to_owned(), |p| p.0),
    }
}

/// The string value of `"type"` when it is the first key of the object `bytes`
/// (serde_json's compact output) and holds no escape; `None` leaves the answer to
/// the probe. The first `"type"` is the one the probe answers with too.
fn leading_type(bytes: &[u8]) -> Option<&str> {
    let rest = bytes.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

const EVENT: &str = "event";

/// The manifest of a JSON value: an object's string `"type"` field, else the key of
/// a one-key object, else a string itself, else `"event"`.
struct ManifestProbe(String);

impl<'de> serde::Deserialize<'de> for ManifestProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ManifestVisitor)
    }
}

struct ManifestVisitor;

impl<'de> serde::de::Visitor<'de> for ManifestVisitor {
    type Value = ManifestProbe;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON event")
    }

    fn visit_str<E>(self, v: &str) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(v.to_owned()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ManifestProbe, A::Error> {
        let (mut first_key, mut keys, mut type_name) = (None, 0, None);
        while let Some(key) = map.next_key::<String>()? {
            keys += 1;
            if key == "type" && type_name.is_none() {
                if let serde_json::Value::String(name) = map.next_value()? {
                    type_name = Some(name);
                }
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            if keys == 1 {
                first_key = Some(key);
            }
        }
        Ok(ManifestProbe(match (type_name, first_key) {
            (Some(name), _) => name,
            (None, Some(key)) if keys == 1 => key,
            _ => EVENT.to_owned(),
        }))
    }

    fn visit_bool<E>(self, _: bool) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(EVENT.to_owned()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(EVENT.to_owned()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(EVENT.to_owned()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(EVENT.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<ManifestProbe, E> {
        Ok(ManifestProbe(EVENT.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(bytes: &[u8]) -> String {
        serde_json::from_slice::<ManifestProbe>(bytes).map_or_else(|_| EVENT.to_owned(), |p| p.0)
    }

    /// The shortcut answers only where the probe gives the same answer.
    #[test]
    fn the_leading_type_shortcut_agrees_with_the_probe() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"type":"Deposited","amount":1}"#, Some("Deposited")),
            (r#"{"type":"AccountCreated"}"#, Some("AccountCreated")),
            (r#"{"type":"Überweisung","betrag":1}"#, Some("Überweisung")),
            (r#"{"type":""}"#, Some("")),
            // An escape, a non-string, a later or spaced key: the probe decides.
            (r#"{"type":"Say \"hi\"","a":1}"#, None),
            (r#"{"type":"back\\slash"}"#, None),
            (r#"{"type":7,"a":1}"#, None),
            (r#"{"a":1,"type":"Later"}"#, None),
            (r#"{ "type":"Spaced"}"#, None),
            (r#"{"typed":"Other"}"#, None),
            (r#""Unit""#, None),
            (r#"{"Struct":{"a":1}}"#, None),
        ];
        for (json, shortcut) in cases {
            assert_eq!(leading_type(json.as_bytes()), *shortcut, "{json}");
            assert_eq!(manifest_of_json(json.as_bytes()), probe(json.as_bytes()), "{json}");
        }
    }
}
