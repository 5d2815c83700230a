//! The SQL of partition leases: several hosts on one database (schema version 3:
//! `mneme.nodes`, `mneme.partitions`, `mneme.lease_history`). What a lease means and
//! when a host takes or gives one up is decided in `cluster/`; this module only
//! reads and changes the rows, on a connection of its own (a lease is renewed even
//! while the writer connection waits on a long write).
//!
//! Every time is the database's (`now()`): hosts' clocks are never compared with
//! each other. Taking a partition raises its epoch by one and records the grant in
//! `mneme.lease_history`; the epoch is what `mneme.write_batch` checks (the fence).

use std::sync::Mutex;
use std::time::Duration;

use super::{describe, Conn, PostgresJournal};
use crate::journal::{JournalError, JournalResult};

/// A partition held at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    pub epoch: u64,
}

/// Who holds a partition, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub partition: u32,
    pub node: String,
    /// The URL the node advertises (`--advertise`).
    pub url: String,
    pub epoch: u64,
}

/// The lease rows, on their own connection (reconnected after a failure).
pub struct Leases {
    journal_config: postgres::Config,
    shown: String,
    conn: Mutex<Option<Conn>>,
}

const HEARTBEAT: &str = "INSERT INTO mneme.nodes (node_id, url) VALUES ($1, $2) \
                         ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, seen_at = now()";
const RENEW: &str = "UPDATE mneme.partitions SET expires_at = now() + $2 * interval '1 millisecond' \
                     WHERE node_id = $1 RETURNING partition, epoch";
const LIVE: &str = "SELECT node_id FROM mneme.nodes WHERE seen_at > now() - $1 * interval '1 millisecond' \
                    ORDER BY node_id";
// Free partitions, and those whose lease ran out, lowest first; a partition whose
// row a write in flight holds (the fence's share lock) is skipped, not waited for.
const ACQUIRE: &str = "WITH free AS ( \
        SELECT partition FROM mneme.partitions WHERE node_id IS NULL OR expires_at < now() \
        ORDER BY partition LIMIT $2 FOR UPDATE SKIP LOCKED \
    ), taken AS ( \
        UPDATE mneme.partitions p SET node_id = $1, epoch = p.epoch + 1, \
               expires_at = now() + $3 * interval '1 millisecond' \
          FROM free WHERE p.partition = free.partition RETURNING p.partition, p.epoch \
    ), granted AS ( \
        INSERT INTO mneme.lease_history (partition, epoch, node_id) SELECT partition, epoch, $1 FROM taken \
    ) SELECT partition, epoch FROM taken ORDER BY partition";
const RELEASE: &str = "UPDATE mneme.partitions SET node_id = NULL, expires_at = NULL \
                       WHERE node_id = $1 AND partition = ANY ($2)";
const LEAVE: &str = "DELETE FROM mneme.nodes WHERE node_id = $1";
const HOLDERS: &str = "SELECT p.partition, p.node_id, coalesce(n.url, ''), p.epoch FROM mneme.partitions p \
                       LEFT JOIN mneme.nodes n ON n.node_id = p.node_id \
                       WHERE p.node_id IS NOT NULL AND p.expires_at > now() ORDER BY p.partition";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PostgresJournal {
    /// The lease rows of this journal's database, on a connection of their own.
    pub fn leases(&self) -> Leases {
        Leases { journal_config: self.config.clone(), shown: self.shown.clone(), conn: Mutex::new(None) }
    }
}

impl Leases {
    /// The lease rows of the database at `url` (a journal opened on it has created
    /// them); connects on first use.
    pub fn open(url: &str) -> JournalResult<Leases> {
        let (journal_config, shown) = super::config_of(url)?;
        Ok(Leases { journal_config, shown, conn: Mutex::new(None) })
    }

    fn run<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> JournalResult<T> {
        let mut slot = self.conn.lock().unwrap();
        if slot.is_none() {
            let client = self
                .journal_config
                .connect(postgres::NoTls)
                .map_err(|e| JournalError::Storage(format!("PostgreSQL at {}: {}", self.shown, describe(&e))))?;
            *slot = Some(Conn { client, statements: Default::default() });
        }
        let conn = slot.as_mut().unwrap();
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if super::broken(conn, &e) {
                    *slot = None;
                }
                Err(JournalError::Storage(format!("PostgreSQL at {}: {}", self.shown, describe(&e))))
            }
        }
    }

    /// Say that `node` is alive and reachable at `url`.
    pub fn heartbeat(&self, node: &str, url: &str) -> JournalResult<()> {
        self.run(|c| c.execute(HEARTBEAT, &[&node, &url])).map(drop)
    }

    /// Extend every lease `node` still holds to `lease` from now; the leases held.
    pub fn renew(&self, node: &str, lease: Duration) -> JournalResult<Vec<Lease>> {
        let rows = self.run(|c| c.query(RENEW, &[&node, &ms(lease)]))?;
        let mut held: Vec<Lease> = rows.iter().map(lease_of).collect();
        held.sort_by_key(|l| l.partition);
        Ok(held)
    }

    /// The nodes seen within the last `lease`.
    pub fn live_nodes(&self, lease: Duration) -> JournalResult<Vec<String>> {
        Ok(self.run(|c| c.query(LIVE, &[&ms(lease)]))?.iter().map(|r| r.get(0)).collect())
    }

    /// Take up to `max` partitions that are free or whose lease ran out, each at
    /// its next epoch.
    pub fn acquire(&self, node: &str, max: usize, lease: Duration) -> JournalResult<Vec<Lease>> {
        let max = max as i64;
        Ok(self.run(|c| c.query(ACQUIRE, &[&node, &max, &ms(lease)]))?.iter().map(lease_of).collect())
    }

    /// Give up `partitions` (those `node` still holds); their epochs stay, so the
    /// next holder's is higher.
    pub fn release(&self, node: &str, partitions: &[u32]) -> JournalResult<()> {
        let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        self.run(|c| c.execute(RELEASE, &[&node, &partitions])).map(drop)
    }

    /// Release everything `node` holds and remove it from the live nodes (a clean
    /// shutdown: the others take its partitions at once, not after the lease).
    pub fn leave(&self, node: &str, held: &[u32]) -> JournalResult<()> {
        self.release(node, held)?;
        self.run(|c| c.execute(LEAVE, &[&node])).map(drop)
    }

    /// Every partition whose lease has not run out, with its holder's URL.
    pub fn holders(&self) -> JournalResult<Vec<Holder>> {
        let rows = self.run(|c| c.query(HOLDERS, &[]))?;
        Ok(rows
            .iter()
            .map(|r| Holder {
                partition: r.get::<_, i32>(0) as u32,
                node: r.get(1),
                url: r.get(2),
                epoch: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }
}

/// An active component version of the hosts (`mneme.active_components`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedComponent {
    pub projection: bool,
    pub name: String,
    pub hash: String,
}

fn kind(projection: bool) -> &'static str {
    if projection {
        "projection"
    } else {
        "entity"
    }
}

impl Leases {
    /// Store `wasm` (if new) and make it the hosts' active version of `name`;
    /// with `only_if_none`, only when the hosts have none yet (a components
    /// directory seeds, never overrides). Whether it is the active one now.
    pub fn share_component(
        &self,
        component: &SharedComponent,
        wasm: &[u8],
        node: &str,
        only_if_none: bool,
    ) -> JournalResult<bool> {
        let kind = kind(component.projection);
        let (name, hash) = (&component.name, &component.hash);
        self.run(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute(
                "INSERT INTO mneme.components (kind, name, hash, wasm) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&kind, name, hash, &wasm],
            )?;
            let sql = if only_if_none {
                "INSERT INTO mneme.active_components (kind, name, hash, node_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO NOTHING"
            } else {
                "INSERT INTO mneme.active_components (kind, name, hash, node_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO UPDATE SET hash = excluded.hash, node_id = excluded.node_id, \
                 changed_at = now()"
            };
            tx.execute(sql, &[&kind, name, hash, &node])?;
            let active: String = tx
                .query_one("SELECT hash FROM mneme.active_components WHERE kind = $1 AND name = $2", &[&kind, name])?
                .get(0);
            tx.commit()?;
            Ok(active == *hash)
        })
    }

    /// The hosts' active version of every entity type and projection.
    pub fn active_components(&self) -> JournalResult<Vec<SharedComponent>> {
        let rows =
            self.run(|c| c.query("SELECT kind, name, hash FROM mneme.active_components ORDER BY kind, name", &[]))?;
        Ok(rows
            .iter()
            .map(|r| SharedComponent {
                projection: r.get::<_, String>(0) == "projection",
                name: r.get(1),
                hash: r.get(2),
            })
            .collect())
    }

    /// The bytes of a shared version.
    pub fn component_wasm(&self, component: &SharedComponent) -> JournalResult<Vec<u8>> {
        let kind = kind(component.projection);
        let (name, hash) = (&component.name, &component.hash);
        let row = self.run(|c| {
            c.query_one(
                "SELECT wasm FROM mneme.components WHERE kind = $1 AND name = $2 AND hash = $3",
                &[&kind, name, hash],
            )
        })?;
        Ok(row.get(0))
    }
}

fn lease_of(r: &postgres::Row) -> Lease {
    Lease { partition: r.get::<_, i32>(0) as u32, epoch: r.get::<_, i64>(1) as u64 }
}
