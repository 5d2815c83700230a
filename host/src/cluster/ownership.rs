//! What this host owns right now: the epoch of each partition it holds and until
//! when it may count on it, and who holds the others. Written by the keeper,
//! read by every command (lock-free for the partitions held).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::journal::postgres::leases::{Holder, Lease, Leases};
use crate::journal::Fence;
use crate::names::{partition_of, PARTITIONS};

pub struct Ownership {
    node: String,
    base: Instant,
    /// The epoch held, by partition; 0: not held.
    epochs: Vec<AtomicU64>,
    /// Until when (ms since `base`, by this host's monotonic clock) the lease may
    /// be counted on without a renewal.
    valid_until: Vec<AtomicU64>,
    /// The holders of every partition at the keeper's (or `refresh`'s) last look,
    /// by partition.
    holders: RwLock<Vec<Option<Holder>>>,
    /// Reads the holders again between the keeper's ticks (`refresh`).
    leases: Option<Arc<Leases>>,
    /// When `refresh` last read them.
    refreshed: Mutex<Option<Instant>>,
}

/// `refresh` reads the database at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(50);

impl Ownership {
    pub fn new(node: &str, leases: Option<Arc<Leases>>) -> Ownership {
        Ownership {
            leases,
            refreshed: Mutex::new(None),
            node: node.to_string(),
            base: Instant::now(),
            epochs: (0..PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            valid_until: (0..PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            holders: RwLock::new(vec![None; PARTITIONS as usize]),
        }
    }

    /// The database's lease rows (and what the hosts share), when there is one.
    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.leases.as_ref()
    }

    /// This host's node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// The epoch at which this host holds `partition`, if it holds it now.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        let p = partition as usize;
        let epoch = self.epochs[p].load(Ordering::Acquire);
        (epoch != 0 && self.ms(Instant::now()) < self.valid_until[p].load(Ordering::Acquire)).then_some(epoch)
    }

    /// The epoch at which this host holds the partition of `pid`, if it does.
    pub fn epoch_of(&self, pid: &str) -> Option<u64> {
        self.epoch(partition_of(pid))
    }

    /// The partitions held now.
    pub fn held(&self) -> Vec<Lease> {
        (0..PARTITIONS).filter_map(|partition| self.epoch(partition).map(|epoch| Lease { partition, epoch })).collect()
    }

    /// Who holds `partition` by the keeper's last look (this host or another).
    pub fn holder(&self, partition: u32) -> Option<Holder> {
        self.holders.read().unwrap()[partition as usize].clone()
    }

    /// The fence for a write of these persistence ids: the leases of their
    /// partitions at the epochs they were recovered under (`epoch_of` each).
    pub fn fence(&self, leases: impl IntoIterator<Item = (u32, u64)>) -> Fence {
        let mut fence = Fence { node: self.node.clone(), leases: Vec::new() };
        for lease in leases {
            if !fence.leases.contains(&lease) {
                fence.leases.push(lease);
            }
        }
        fence
    }

    pub(super) fn grant(&self, lease: Lease, until: Instant) {
        let p = lease.partition as usize;
        self.valid_until[p].store(self.ms(until), Ordering::Release);
        self.epochs[p].store(lease.epoch, Ordering::Release);
    }

    pub(super) fn revoke(&self, partition: u32) {
        self.epochs[partition as usize].store(0, Ordering::Release);
    }

    /// The epoch recorded for `partition`, whether or not its lease is still valid.
    pub(super) fn recorded(&self, partition: u32) -> u64 {
        self.epochs[partition as usize].load(Ordering::Acquire)
    }

    /// Read who holds what from the database now (at most every 50 ms), for a
    /// request waiting for its partition's owner: partitions move between the
    /// keeper's ticks. Blocking. A caller that comes while another reads does not
    /// wait for it: the waiting requests poll, and see the answer next time.
    pub fn refresh(&self) {
        let Some(leases) = &self.leases else { return };
        let mut last = match self.refreshed.try_lock() {
            Ok(last) => last,
            Err(std::sync::TryLockError::WouldBlock) => return,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        let started = Instant::now();
        match leases.holders() {
            Ok(holders) => self.set_holders(holders),
            Err(e) => tracing::debug!("reading the partitions' holders: {e}"),
        }
        *last = Some(started);
    }

    pub(super) fn set_holders(&self, holders: Vec<Holder>) {
        let mut by_partition = vec![None; PARTITIONS as usize];
        for h in holders {
            let p = h.partition as usize;
            by_partition[p] = Some(h);
        }
        *self.holders.write().unwrap() = by_partition;
    }
}
