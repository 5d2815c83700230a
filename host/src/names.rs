//! Names that reach keys, files and URLs: entity types, entity ids, persistence ids,
//! tags and manifests. Every check of them lives here, so the HTTP API, the engine,
//! the component store and the journal refuse the same inputs with the same words.
//!
//! Architecture invariant: this module imports nothing of the crate.

/// `{entity-type}|{entity-id}` (Akka's PersistenceId).
pub fn persistence_id(entity_type: &str, entity_id: &str) -> String {
    format!("{entity_type}|{entity_id}")
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

/// Entity ids: printable ASCII without `|` or `/`, so a persistence id is unambiguous
/// and fits a URL path segment.
pub fn validate_entity_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:@~+=".contains(c);
    if id.is_empty() || id.len() > 200 || !id.chars().all(ok_char) {
        return Err(format!(
            "invalid entity id `{}`: use 1-200 characters from A-Z, a-z, 0-9 and -_.:@~+=",
            id.escape_default()
        ));
    }
    Ok(())
}

/// Both parts of a persistence id.
pub fn validate_entity(entity_type: &str, entity_id: &str) -> Result<(), String> {
    validate_entity_type(entity_type)?;
    validate_entity_id(entity_id)
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
        for bad in ["", "a|b", "a/b", "a\0b", "é", &"x".repeat(201)] {
            assert!(validate_entity_id(bad).is_err(), "{bad}");
        }
        assert!(validate_label("tag", "", false).is_err());
        assert!(validate_label("manifest", "", true).is_ok());
        assert!(validate_label("tag", "a\0", false).is_err());
        assert_eq!(persistence_id("t", "i"), "t|i");
    }
}
