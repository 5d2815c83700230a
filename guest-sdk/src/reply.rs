//! The answer to the caller: Akka's `StatusReply`.

use serde::Serialize;

/// The answer to the caller, released by the host only after the command's events
/// are durable.
///
/// `Ok` carries bytes (JSON when built with [`Reply::ok`]); `Error` is a domain-level
/// rejection ("insufficient balance"), reported to the caller as an error but not
/// counted as a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success, with a body.
    Ok(Vec<u8>),
    /// A domain-level rejection with a human-readable message.
    Error(String),
}

impl Reply {
    /// Success with `value` encoded as JSON.
    ///
    /// # Panics
    /// If `value` cannot be encoded as JSON (e.g. a map with non-string keys): that
    /// is a bug in the entity, and the panic message reaches the caller's error.
    pub fn ok(value: &impl Serialize) -> Self {
        Reply::Ok(crate::codec::to_json(value, "reply"))
    }

    /// Success with a body the entity encoded itself.
    pub fn ok_raw(bytes: impl Into<Vec<u8>>) -> Self {
        Reply::Ok(bytes.into())
    }

    /// A domain-level rejection.
    pub fn error(message: impl Into<String>) -> Self {
        Reply::Error(message.into())
    }

    /// Akka's `StatusReply.Ack`: success without a value. The body is the JSON
    /// object `{"ok":true}` (rather than `null`) so an HTTP caller sees an explicit,
    /// self-describing confirmation.
    pub fn ack() -> Self {
        Reply::Ok(br#"{"ok":true}"#.to_vec())
    }

    /// True for [`Reply::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }

    /// The body of an `Ok` reply parsed as JSON; `None` for errors or non-JSON bodies.
    /// Meant for tests: `assert_eq!(reply.json(), Some(json!({"balance": 5})))`.
    pub fn json(&self) -> Option<serde_json::Value> {
        match self {
            Reply::Ok(bytes) => serde_json::from_slice(bytes).ok(),
            Reply::Error(_) => None,
        }
    }

    /// The message of an `Error` reply.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Reply::Error(message) => Some(message),
            Reply::Ok(_) => None,
        }
    }
}
