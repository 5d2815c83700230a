//! Where a record is in the commit log ([`Loc`]), and the index entries one frame
//! adds and removes ([`IndexBatch`]): the vocabulary shared by the index and the
//! record kinds that say what to index.

use super::{JournalError, JournalResult};

/// Where a record's bytes are in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub segment: u64,
    pub pos: u64,
    pub len: u32,
}

impl Loc {
    pub(super) fn encode(self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..8].copy_from_slice(&self.segment.to_le_bytes());
        v[8..16].copy_from_slice(&self.pos.to_le_bytes());
        v[16..].copy_from_slice(&self.len.to_le_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> JournalResult<Loc> {
        let v: &[u8; 20] = v.try_into().map_err(|_| JournalError::Corrupt("index entry of the wrong size".into()))?;
        Ok(Loc {
            segment: u64::from_le_bytes(v[..8].try_into().unwrap()),
            pos: u64::from_le_bytes(v[8..16].try_into().unwrap()),
            len: u32::from_le_bytes(v[16..].try_into().unwrap()),
        })
    }
}

/// What indexing one frame changes.
#[derive(Default)]
pub struct IndexBatch {
    pub(super) puts: Vec<(Vec<u8>, [u8; 20])>,
    /// Entries whose value is not one location (a frame's tag lists and event runs).
    pub(super) lists: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) removes: Vec<Vec<u8>>,
}

impl IndexBatch {
    pub(super) fn put(&mut self, key: Vec<u8>, loc: Loc) {
        self.puts.push((key, loc.encode()));
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.removes.push(key);
    }
}
