//! The view a projection reads through its `get` import: the host hands one in
//! with each `handle-events` call (the stored view with the batch's earlier
//! updates on top); the instance's host data holds it for the call.

/// Reads the projection's view for its `get` import.
pub trait ViewReader: Send + Sync {
    /// The current value of `key`; `Err` when the host cannot tell (storage trouble).
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
}
