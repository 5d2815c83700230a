//! What one guest may use and return: the sandbox's limits, and the check of a
//! `handle-command` result against them.
//!
//! Inside a call the sandbox enforces the CPU deadline (epoch interruption), the
//! memory cap and the table cap (`ResourceLimiter`) and the Wasm stack
//! (`Config::max_wasm_stack`). What the call *returns* is checked by
//! [`check_decision`] right after `handle-command` returns, before the engine looks
//! at it. Every limit hit is a [`Fault`]: the command fails as a guest fault
//! (HTTP 500), nothing is persisted, replied or run, and the instance is replaced.
//!
//! The journal's own limits (`--max-event-bytes` per event, valid manifests and
//! tags) are checked later by the shard and answered as a rejection (HTTP 422):
//! they apply to any entity code, Wasm or native.
//!
//! A result is lifted out of guest memory before it can be checked, so what the
//! host holds while checking is bounded by the memory cap.

use std::time::Duration;

use super::bindings::exports::mneme::entity::handler::Effect;
use super::bindings::mneme::entity::types::{Action, Reply};
use super::handler::Fault;

/// Linear memory cap of one instance, by default.
pub const DEFAULT_MEMORY_BYTES: usize = 128 << 20;
/// Wall-clock budget of one call into a guest, by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Wasm stack of one call, by default: wasmtime's own default, stated here so it
/// is a documented limit rather than an accident of the runtime's version.
pub const DEFAULT_WASM_STACK_BYTES: usize = 512 << 10;
/// The largest Wasm stack that may be configured. Guests run on threads with
/// 2 MiB native stacks (shards, deploys); wasmtime counts host frames called from
/// Wasm against the same stack, so half of it is left to the host.
pub const MAX_WASM_STACK_BYTES: usize = 1 << 20;
/// Elements of all tables of one instance together (function tables). Compilers
/// emit a few thousand; Python and JavaScript runtimes tens of thousands.
pub const DEFAULT_TABLE_ELEMENTS: usize = 1_000_000;
/// Largest reply body (or error message) one command may return, by default.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1 << 20;
/// Most events one command may persist, by default.
pub const DEFAULT_MAX_EVENTS_PER_COMMAND: usize = 10_000;

/// Limits of every guest instance. [`Default`] gives the values documented in the
/// README ("Guest limits") and used by `mneme serve` unless told otherwise.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call into the guest.
    pub call_timeout: Duration,
    /// Wasm stack of one call, in bytes (bounds recursion depth); at most
    /// [`MAX_WASM_STACK_BYTES`].
    pub wasm_stack_bytes: usize,
    /// Table elements per instance.
    pub table_elements: usize,
    /// Largest reply body (`ok`) or message (`error`, or the `err` of a command
    /// the guest could not decode) of one `handle-command`, in bytes.
    pub max_reply_bytes: usize,
    /// Most events one `handle-command` may persist.
    pub max_events_per_command: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            wasm_stack_bytes: DEFAULT_WASM_STACK_BYTES,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_events_per_command: DEFAULT_MAX_EVENTS_PER_COMMAND,
        }
    }
}

/// Check what `handle-command` returned against the limits: `Ok(Err(msg))` (a
/// command the guest could not decode) is checked too, because `msg` becomes the
/// caller's error body.
pub fn check_decision(decision: Result<&Effect, &str>, limits: &SandboxLimits) -> Result<(), Fault> {
    match decision {
        Ok(effect) => check_effect(effect, limits),
        Err(msg) => check_reply_len("an `err` message (malformed command)", msg.len(), limits),
    }
}

fn check_effect(effect: &Effect, limits: &SandboxLimits) -> Result<(), Fault> {
    if let Action::Persist(events) = &effect.action {
        if events.len() > limits.max_events_per_command {
            return Err(Fault(format!(
                "handle-command returned {} events, more than the {} one command may persist (--max-events-per-command)",
                events.len(),
                limits.max_events_per_command
            )));
        }
    }
    match &effect.reply {
        Some(Reply::Ok(body)) => check_reply_len("a reply body", body.len(), limits),
        Some(Reply::Error(msg)) => check_reply_len("an error reply", msg.len(), limits),
        None => Ok(()),
    }
}

fn check_reply_len(what: &str, len: usize, limits: &SandboxLimits) -> Result<(), Fault> {
    if len > limits.max_reply_bytes {
        return Err(Fault(format!(
            "handle-command returned {what} of {len} bytes, more than the {} allowed (--max-reply-bytes)",
            limits.max_reply_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::bindings::mneme::entity::types::Event;

    fn effect(action: Action, reply: Option<Reply>) -> Effect {
        Effect { action, reply, then: Vec::new(), unstash_all: false, stop: false }
    }

    fn events(n: usize) -> Action {
        Action::Persist((0..n).map(|_| Event { manifest: "E".into(), payload: vec![1], tags: Vec::new() }).collect())
    }

    fn limits() -> SandboxLimits {
        SandboxLimits { max_reply_bytes: 10, max_events_per_command: 3, ..SandboxLimits::default() }
    }

    #[test]
    fn effects_within_the_limits_pass() {
        let l = limits();
        assert!(check_decision(Ok(&effect(events(3), Some(Reply::Ok(vec![0; 10])))), &l).is_ok());
        assert!(check_decision(Ok(&effect(Action::None, Some(Reply::Error("x".repeat(10))))), &l).is_ok());
        assert!(check_decision(Ok(&effect(Action::Stash, None)), &l).is_ok());
        assert!(check_decision(Err("malformed"), &l).is_ok());
    }

    #[test]
    fn too_many_events_is_a_fault_naming_the_limit() {
        let err = check_decision(Ok(&effect(events(4), None)), &limits()).unwrap_err().0;
        assert!(err.contains("4 events") && err.contains("3") && err.contains("--max-events-per-command"), "{err}");
    }

    #[test]
    fn oversized_replies_and_messages_are_faults_naming_the_limit() {
        let l = limits();
        for decision in [
            Ok(effect(Action::None, Some(Reply::Ok(vec![0; 11])))),
            Ok(effect(events(1), Some(Reply::Error("x".repeat(11))))),
            Err("x".repeat(11)),
        ] {
            let err = check_decision(decision.as_ref().map_err(String::as_str), &l).unwrap_err().0;
            assert!(err.contains("11 bytes") && err.contains("--max-reply-bytes"), "{err}");
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let d = SandboxLimits::default();
        assert_eq!(d.memory_bytes, 128 << 20);
        assert_eq!(d.call_timeout, Duration::from_millis(2000));
        assert_eq!(d.wasm_stack_bytes, 512 * 1024);
        assert_eq!(d.table_elements, 1_000_000);
        assert_eq!(d.max_reply_bytes, 1 << 20);
        assert_eq!(d.max_events_per_command, 10_000);
        assert!(d.wasm_stack_bytes <= MAX_WASM_STACK_BYTES);
    }
}
