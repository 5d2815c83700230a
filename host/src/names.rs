//! Names that reach keys, files and URLs: entity types, entity ids, persistence ids,
//! component versions, topics, tags and manifests. Every check of them lives here, so the HTTP API, the engine,
//! the component store and the journal refuse the same inputs with the same words.
//!
//! Architecture invariant: this module imports nothing of the crate.

/// `{entity-type}|{entity-id}` (Akka's PersistenceId).
pub fn persistence_id(entity_type: &str, entity_id: &str) -> String {
    // Built by hand, not with `format!`: it runs several times per command.
    let mut pid = String::with_capacity(entity_type.len() + 1 + entity_id.len());
    pid.push_str(entity_type);
    pid.push('|');
    pid.push_str(entity_id);
    pid
}

/// How many partitions the entities of a cluster are spread over. Fixed: every host
/// and every version must put a persistence id in the same partition, because a
/// partition is the unit a host owns (a lease) and fences its writes by.
pub const PARTITIONS: u32 = 64;

/// The partition of a persistence id: CRC-32C of its bytes modulo [`PARTITIONS`]
/// (a stable function, unlike std's hasher, which may change between releases).
pub fn partition_of(pid: &str) -> u32 {
    crc32c::crc32c(pid.as_bytes()) % PARTITIONS
}

/// Entity type names: what a component is deployed under (a directory name in the
/// data directory, so no `/`, `.` or `..`).
pub fn validate_entity_type(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!(
            "invalid entity type `{}`: use 1-64 characters from a-z, 0-9, '-' and '_'",
            name.escape_default()
        ));
    }
    Ok(())
}

/// Node ids (`--node-id`): 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.'.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
        return Err(format!(
            "invalid node id `{}`: use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.'",
            id.escape_default()
        ));
    }
    Ok(())
}

/// Entity ids: printable ASCII without `|` or `/`, so a persistence id is unambiguous
/// and fits a URL path segment; not `.` or `..`, which URL clients resolve away.
pub fn validate_entity_id(id: &str) -> Result<(), String> {
    if !url_safe(id, 200) {
        return Err(format!(
            "invalid entity id `{}`: use 1-200 characters from A-Z, a-z, 0-9 and -_.:@~+=, not `.` or `..`",
            id.escape_default()
        ));
    }
    Ok(())
}

/// 1 to `max` bytes from A-Z, a-z, 0-9 and `-_.:@~+=`, and not a dot segment.
fn url_safe(s: &str, max: usize) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:@~+=".contains(c);
    !s.is_empty() && s.len() <= max && s.chars().all(ok_char) && s != "." && s != ".."
}

/// Projection names: what a projection component is deployed under (a directory
/// name in the data directory, like an entity type).
pub fn validate_projection_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!(
            "invalid projection name `{}`: use 1-64 characters from a-z, 0-9, '-' and '_'",
            name.escape_default()
        ));
    }
    Ok(())
}

/// Longest key of a projection's view, in bytes.
pub const MAX_VIEW_KEY_BYTES: usize = 1024;

/// Keys of a projection's view: 1 to 1024 bytes of UTF-8 without control
/// characters (so no NUL, which the index uses as a separator, and nothing that
/// garbles a log line). Any other character is allowed; in a URL path it is
/// percent-encoded (`/` as `%2F`).
pub fn validate_view_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_VIEW_KEY_BYTES || key.chars().any(char::is_control) {
        let shown: String = key.chars().take(64).collect();
        return Err(format!(
            "invalid view key `{}`: use 1-{MAX_VIEW_KEY_BYTES} bytes of UTF-8 without control characters",
            shown.escape_default()
        ));
    }
    Ok(())
}

/// Both parts of a persistence id.
pub fn validate_entity(entity_type: &str, entity_id: &str) -> Result<(), String> {
    validate_entity_type(entity_type)?;
    validate_entity_id(entity_id)
}

/// Component versions in URLs: a decimal number from 1, without sign or leading `+`.
pub fn validate_component_version(version: &str) -> Result<u64, String> {
    let digits = !version.is_empty() && version.len() <= 20 && version.bytes().all(|b| b.is_ascii_digit());
    match version.parse::<u64>() {
        Ok(v) if digits && v > 0 => Ok(v),
        _ => Err(format!("invalid component version `{}`: use a number from 1", version.escape_default())),
    }
}

/// Topics (`publish` side effects, `GET /v1/topics/{topic}`): like entity ids, up to
/// 255 characters, so every topic an entity can publish to can be read by URL.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if !url_safe(topic, 255) {
        return Err(format!(
            "invalid topic `{}`: use 1-255 characters from A-Z, a-z, 0-9 and -_.:@~+=, not `.` or `..`",
            topic.escape_default()
        ));
    }
    Ok(())
}

/// Tags and manifests end up in keys and indexes: keep them short and NUL-free.
pub fn validate_label(what: &str, s: &str, allow_empty: bool) -> Result<(), String> {
    if (!allow_empty && s.is_empty()) || s.len() > 255 || s.contains('\0') {
        return Err(format!(
            "invalid {what} `{}`: must be {}at most 255 bytes without NUL",
            s.escape_default(),
            if allow_empty { "" } else { "non-empty, " }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_escape_a_directory_or_split_a_persistence_id_are_refused() {
        assert!(validate_entity_type("bank-account").is_ok());
        for bad in ["Bank", "", "a|b", "..", "../x", "a/b", "a.b", &"x".repeat(65)] {
            assert!(validate_entity_type(bad).is_err(), "{bad}");
        }
        assert!(validate_entity_id("alice@example.com").is_ok());
        assert!(validate_entity_id("...").is_ok() && validate_entity_id(".a").is_ok());
        for bad in ["", ".", "..", "a|b", "a/b", "a\0b", "é", &"x".repeat(201)] {
            assert!(validate_entity_id(bad).is_err(), "{bad}");
        }
        assert!(validate_label("tag", "", false).is_err());
        assert!(validate_label("manifest", "", true).is_ok());
        assert!(validate_label("tag", "a\0", false).is_err());
        assert_eq!(persistence_id("t", "i"), "t|i");
        assert_eq!(validate_component_version("12"), Ok(12));
        for bad in ["", "0", "-1", "+1", "1.0", " 1", "99999999999999999999", &"1".repeat(21), "١"] {
            assert!(validate_component_version(bad).is_err(), "{bad}");
        }
        assert!(validate_projection_name("account-balances").is_ok());
        for bad in ["Balances", "", "a/b", "..", &"p".repeat(65)] {
            assert!(validate_projection_name(bad).is_err(), "{bad}");
        }
        for good in ["alice", "_total", "a/b c", "é", "..", &"k".repeat(1024)] {
            assert!(validate_view_key(good).is_ok(), "{good}");
        }
        for bad in ["", "a\0b", "a\nb", "\u{7f}", &"k".repeat(1025)] {
            assert!(validate_view_key(bad).is_err(), "{bad}");
        }
        assert!(validate_topic("orders.created").is_ok());
        for bad in ["", "a/b", "..", "a b", "a\0", "é", &"t".repeat(256)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
