//! Several mneme hosts on one PostgreSQL database: which host owns which entities.
//!
//! The entities are spread over [`PARTITIONS`] partitions by their persistence id
//! (`names::partition_of`, the same on every host and version). A host owns a
//! partition while it holds its **lease**, a row in `mneme.partitions` with the
//! owner, an **epoch** and an expiry by the database's clock. The rules:
//!
//! 1. **One writer per partition, fenced by the database.** Every write a host
//!    makes carries the epochs of the leases it was made under (`journal::Fence`);
//!    `mneme.write_batch` share-locks those lease rows and refuses the whole write
//!    unless each is still this host's at that epoch. Taking a partition over is an
//!    `UPDATE` of its row that raises the epoch, so it waits for a write in flight
//!    and every later write of the old owner is refused. A host that was paused,
//!    partitioned or slow past its lease can therefore never write, whatever it
//!    believes; its clients get an error, never a wrong success.
//! 2. **Leases end by themselves.** A lease lasts `lease` from its last renewal
//!    (by the database's clock). A host counts a partition as its own only until
//!    `lease - margin` after the moment it sent the renewal (by its own monotonic
//!    clock), so it stops serving before anyone else may take the partition over.
//! 3. **Spread evenly.** Each tick (a quarter of the lease) a host says it is alive
//!    (`mneme.nodes`), renews what it holds, and compares it with its fair share,
//!    `ceil(PARTITIONS / live hosts)`: below it, it takes free or expired
//!    partitions (lowest first, each at its next epoch); above it, it gives up its
//!    highest ones, first locally, then in the database. So a joining host gets its
//!    share within a tick or two, and a dead host's partitions go to the others
//!    once its lease has run out. A clean shutdown releases everything at once.
//! 4. **What a new owner does.** An entity of a partition is recovered from the
//!    journal by whichever host owns the partition; an entity held in memory under
//!    an older epoch is dropped and recovered again before its next command.
//!
//! The model is Temporal's history-shard ownership: a range id in the database,
//! checked by every write of the shard.
//!
//! Architecture invariant: this module knows leases and partitions, nothing of
//! entities, shards, Wasm or HTTP; it reaches the database only through
//! `journal::postgres::leases`.

mod keeper;
mod ownership;
#[cfg(test)]
mod tests;

pub use crate::names::PARTITIONS;
pub use keeper::{Cluster, ClusterConfig};
pub use ownership::Ownership;
