//! The PostgreSQL journal (`--journal postgres --postgres-url URL`).
//!
//! Everything the embedded journals keep is a table in the schema `mneme`
//! (`schema.rs`, created and migrated at open). The `Journal` trait is
//! synchronous and called from plain threads, so this backend uses the blocking
//! client (`postgres`), which drives each connection on the calling thread:
//!
//! * **the writer connection** (one, behind a mutex) carries every write: a
//!   `WriteBatch` is one call of `mneme.write_batch` with the batch as arrays, one
//!   statement and so one transaction and one round trip, committed (and, with
//!   `synchronous_commit` on, which every connection sets, flushed to PostgreSQL's
//!   WAL) before `write` returns `Ok`. Timers are written on it too.
//! * **reader connections**, a small pool opened on demand, serve the reads of
//!   shards (recovery), the outbox and the HTTP API concurrently.
//!
//! **One mneme per database, or several hosts.** The writer connection holds a
//! session advisory lock (`pg_try_advisory_lock`) for as long as it lives: a
//! second mneme on the same database is refused at start, and a writer connection
//! re-established after an outage writes only once it holds the lock again.
//! Several hosts (`open_shared`, `--advertise`) hold the same lock shared, so they
//! exclude a lone mneme and it excludes them; among themselves, every write
//! carries the leases of the partitions it writes (`Fence`) and
//! `mneme.write_batch` refuses it unless they are still the writer's
//! (`leases.rs`, `cluster/`).
//!
//! **Ordering.** Global offsets come from one counter row that a write locks from
//! the moment it takes its offsets until it commits (see `mneme.write_batch`):
//! writes are numbered in commit order and a reader never sees an offset before
//! all lower ones are visible, so following `events_by_tag`/`events_from` by
//! offset never misses an event that commits later with a lower offset. Topic
//! positions follow the same rule per topic.
//!
//! **Failures.** PostgreSQL unreachable at open: `open` fails with the driver's
//! error (the server does not start). Lost while serving: the write or read
//! fails with `JournalError::Storage` (503), the broken connection is dropped,
//! and the next call connects again, so service resumes by itself when
//! PostgreSQL does; `health` reports the failure and probes (at most once a
//! second) until a connection works. A write whose commit answer was lost may
//! have been committed: it is reported as failed (never acknowledged), and the
//! entity recovers from what the database holds.
//!
//! **Checksums.** Stored bytes are checked by PostgreSQL's page checksums when
//! the cluster has them (`initdb --data-checksums`, which
//! `scripts/start-postgres.sh` uses); the journal warns at open when they are off.
//!
//! Not supported yet: `mneme journal verify`/`reindex` (they read a data
//! directory's commit log).

pub mod leases;
mod schema;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Row, Statement};

use super::outbox::{OutboxEntry, StoredTopicMessage};
use super::views::{self, ProjectionBatch, ProjectionOffset, ViewUpdate};
use crate::names::partition_of;

use super::{Journal, JournalError, JournalResult, Snapshot, StoredEvent, Timer, WriteBatch};

pub use schema::LATEST as SCHEMA_VERSION;

/// Session advisory lock key held by the writer connection: one mneme per database.
const WRITER_LOCK: i64 = 0x6d6e_656d_6500;
/// Idle reader connections kept.
const MAX_IDLE_READERS: usize = 16;
/// How long `journal::open` waits for the writer lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often a shared journal's `head` reads the database's.
const HEAD_EVERY: Duration = Duration::from_millis(20);
/// How often `health` probes a journal whose last write failed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A connection and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, ::postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    fn query_one(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params)
    }

    fn execute(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }
}

pub struct PostgresJournal {
    config: Config,
    /// The URL without its password, for messages.
    shown: String,
    /// `None` until (re)connected.
    writer: Mutex<Option<Conn>>,
    readers: Mutex<Vec<Conn>>,
    /// The newest offset this journal made durable (or found at open).
    head: AtomicU64,
    /// Why the last write failed, until one succeeds.
    trouble: Mutex<Option<String>>,
    last_probe: Mutex<Option<Instant>>,
    /// The data directory's lock, when opened through `journal::open`.
    lock: Option<super::DataLock>,
    /// When `head` last read the database's head (shared journals).
    head_read: Mutex<Option<Instant>>,
    /// Opened for one of several hosts (`open_shared`): no writer lock; the writes
    /// are fenced by partition leases instead.
    shared: bool,
}

/// `url` with its password replaced by `***`.
pub fn without_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    match url.find("password=") {
        Some(i) => {
            let end = url[i..].find(' ').map_or(url.len(), |e| i + e);
            format!("{}password=***{}", &url[..i], &url[end..])
        }
        None => url.to_string(),
    }
}

/// The driver's error in words, with the server's message, detail and hint.
fn describe(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s += &format!(" ({d})");
            }
            if let Some(h) = db.hint() {
                s += &format!("; hint: {h}");
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s += &format!(": {c}");
                }
                source = cause.source();
            }
            s
        }
    }
}

/// The connection settings of `url` (with mneme's timeouts) and the URL without
/// its password, for messages.
fn config_of(url: &str) -> JournalResult<(Config, String)> {
    let shown = without_password(url);
    let mut config: Config =
        url.parse().map_err(|e| JournalError::Invalid(format!("invalid PostgreSQL URL `{shown}`: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // A dead server or network shows as an error within seconds, not hours.
    config.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3).tcp_user_timeout(Duration::from_secs(20));
    if config.get_application_name().is_none() {
        config.application_name("mneme");
    }
    Ok((config, shown))
}

/// Whether the error left the connection unusable.
fn broken(conn: &Conn, e: &::postgres::Error) -> bool {
    e.is_closed() || conn.client.is_closed() || e.as_db_error().is_none()
}

impl PostgresJournal {
    /// Connect, take the writer lock, create or migrate the schema.
    pub fn open(url: &str) -> JournalResult<PostgresJournal> {
        Self::open_waiting(url, Duration::ZERO)
    }

    /// Like `open`, waiting up to `wait` for the writer lock: the session of a
    /// mneme that was just killed may hold it until the server notices it is gone.
    pub fn open_waiting(url: &str, wait: Duration) -> JournalResult<PostgresJournal> {
        Self::open_with(url, wait, false)
    }

    /// Open as one of several hosts on the database: no writer lock is taken, and
    /// every write must carry a `Fence` (the leases of the partitions it writes,
    /// see `leases`), which the database checks in the write's transaction.
    pub fn open_shared(url: &str) -> JournalResult<PostgresJournal> {
        Self::open_with(url, Duration::ZERO, true)
    }

    fn open_with(url: &str, wait: Duration, shared: bool) -> JournalResult<PostgresJournal> {
        let (config, shown) = config_of(url)?;
        let journal = PostgresJournal {
            config,
            shown,
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            head: AtomicU64::new(0),
            trouble: Mutex::new(None),
            last_probe: Mutex::new(None),
            lock: None,
            head_read: Mutex::new(None),
            shared,
        };
        let mut conn = journal.connect()?;
        let started = Instant::now();
        loop {
            match journal.lock_writer(&mut conn) {
                Err(JournalError::Locked(why)) if started.elapsed() < wait => {
                    if started.elapsed() < Duration::from_millis(100) {
                        tracing::warn!("{why}; waiting up to {} s for it", wait.as_secs());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r?,
            }
        }
        journal.migrate(&mut conn)?;
        let row = conn.query_one("SELECT next_offset - 1 FROM mneme.offsets", &[]).map_err(|e| journal.error(e))?;
        journal.head.store(row.get::<_, i64>(0) as u64, Ordering::Release);
        let checksums =
            conn.client.query_one("SELECT current_setting('data_checksums')", &[]).map(|r| r.get::<_, String>(0));
        if !matches!(checksums.as_deref(), Ok("on")) {
            tracing::warn!(
                "PostgreSQL at {} runs without data checksums: damaged pages are not detected \
                 (initdb --data-checksums, or pg_checksums --enable while it is stopped)",
                journal.shown
            );
        }
        *journal.writer.lock().unwrap() = Some(conn);
        Ok(journal)
    }

    /// Hold the data directory's lock as long as the journal lives.
    pub fn hold(&mut self, lock: super::DataLock) {
        self.lock = Some(lock);
    }

    /// A new connection, with `synchronous_commit` on for its session (a commit
    /// returns once it is flushed, whatever the server's default).
    fn connect(&self) -> JournalResult<Conn> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| JournalError::Storage(format!("PostgreSQL at {}: {}", self.shown, describe(&e))))?;
        client
            .batch_execute("SET synchronous_commit = on")
            .map_err(|e| JournalError::Storage(format!("PostgreSQL at {}: {}", self.shown, describe(&e))))?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    fn error(&self, e: ::postgres::Error) -> JournalError {
        if let Some(db) = e.as_db_error() {
            if db.code().code() == "MNSEQ" {
                return JournalError::Invalid(db.message().to_string());
            }
            if db.code().code() == "MNFEN" {
                return JournalError::Fenced(db.message().to_string());
            }
            if *db.code() == SqlState::UNIQUE_VIOLATION && db.table() == Some("events") {
                return JournalError::Invalid(format!(
                    "an event would be overwritten (another writer?): {}",
                    db.detail().unwrap_or(db.message())
                ));
            }
        }
        JournalError::Storage(format!("PostgreSQL at {}: {}", self.shown, describe(&e)))
    }

    /// Take the one-writer lock on `conn`'s session.
    /// A mneme alone on the database holds the lock exclusively; several hosts
    /// hold it shared. So a lone mneme and a group of hosts never write at once.
    fn lock_writer(&self, conn: &mut Conn) -> JournalResult<()> {
        let sql =
            if self.shared { "SELECT pg_try_advisory_lock_shared($1)" } else { "SELECT pg_try_advisory_lock($1)" };
        let row = conn.client.query_one(sql, &[&WRITER_LOCK]).map_err(|e| self.error(e))?;
        if !row.get::<_, bool>(0) {
            let holder = if self.shared {
                "a mneme that uses it alone (started without --advertise)"
            } else {
                "another mneme, or by several hosts (started with --advertise)"
            };
            return Err(JournalError::Locked(format!(
                "the PostgreSQL database {} is in use by {holder}: it holds the journal's writer lock",
                self.shown
            )));
        }
        Ok(())
    }

    /// Create the schema or bring it to `schema::LATEST`; refuse a newer one.
    fn migrate(&self, conn: &mut Conn) -> JournalResult<()> {
        let err = |e| self.error(e);
        let mut tx = conn.client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::MIGRATION_LOCK]).map_err(err)?;
        tx.batch_execute(schema::BOOTSTRAP).map_err(err)?;
        let found: i32 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM mneme.schema_version", &[]).map_err(err)?.get(0);
        if found > schema::LATEST {
            return Err(JournalError::Invalid(format!(
                "the PostgreSQL database {} holds mneme schema version {found}, written by a newer mneme; this one \
                 reads versions up to {}: upgrade mneme (or use another database)",
                self.shown,
                schema::LATEST
            )));
        }
        for (version, description, sql) in schema::MIGRATIONS.iter().filter(|m| m.0 > found) {
            tx.batch_execute(sql).map_err(err)?;
            tx.execute(
                "INSERT INTO mneme.schema_version (version, description, mneme_version) VALUES ($1, $2, $3)",
                &[version, description, &env!("CARGO_PKG_VERSION")],
            )
            .map_err(err)?;
            tracing::info!(version, "PostgreSQL journal: schema migrated ({description})");
        }
        tx.commit().map_err(err)
    }

    /// Run `f` on the writer connection, connecting (and taking the writer lock)
    /// first when it is gone; a broken connection is dropped.
    fn on_writer<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, ::postgres::Error>) -> JournalResult<T> {
        let mut slot = self.writer.lock().unwrap();
        if slot.is_none() {
            let mut conn = self.connect()?;
            self.lock_writer(&mut conn)?;
            tracing::info!("PostgreSQL journal: writer connection re-established");
            *slot = Some(conn);
        }
        let conn = slot.as_mut().unwrap();
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if broken(conn, &e) {
                    *slot = None;
                }
                Err(self.error(e))
            }
        }
    }

    /// Run a read on a pooled connection. A pooled connection found broken (the
    /// server restarted since it was opened) empties the pool and the read is
    /// tried once more on a new connection.
    fn read<T>(&self, f: impl FnMut(&mut Conn) -> Result<T, ::postgres::Error>) -> JournalResult<T> {
        self.pooled(2, f)
    }

    /// Run `f` on a pooled connection, up to `attempts` times while the pooled
    /// connections turn out broken (a write is tried once: its commit may have
    /// happened unanswered).
    fn pooled<T>(
        &self,
        attempts: u32,
        mut f: impl FnMut(&mut Conn) -> Result<T, ::postgres::Error>,
    ) -> JournalResult<T> {
        for attempt in 0..attempts {
            let pooled = self.readers.lock().unwrap().pop();
            let fresh = pooled.is_none();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect()?,
            };
            match f(&mut conn) {
                Ok(v) => {
                    let mut idle = self.readers.lock().unwrap();
                    if idle.len() < MAX_IDLE_READERS {
                        idle.push(conn);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    if !broken(&conn, &e) {
                        self.readers.lock().unwrap().push(conn);
                    } else if !fresh && attempt + 1 < attempts {
                        self.readers.lock().unwrap().clear();
                        continue;
                    }
                    return Err(self.error(e));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn set_trouble(&self, e: &JournalError) {
        if let JournalError::Storage(m) = e {
            *self.trouble.lock().unwrap() = Some(m.clone());
        }
    }
}

/// Refuse a batch whose events of one persistence id do not follow each other
/// (the database checks that each id's first event follows its stored ones).
fn check_batch(batch: &WriteBatch) -> JournalResult<()> {
    let mut next: HashMap<&str, u64> = HashMap::new();
    for e in &batch.events {
        let pid = e.persistence_id.as_str();
        match next.get(pid) {
            Some(&n) if e.seq_nr != n => {
                return Err(JournalError::Invalid(format!(
                    "{pid}: sequence number {} where {n} was expected",
                    e.seq_nr
                )))
            }
            None if e.seq_nr == 0 => {
                return Err(JournalError::Invalid(format!("{pid}: sequence number 0 (they start at 1)")))
            }
            _ => {}
        }
        next.insert(pid, e.seq_nr + 1);
    }
    Ok(())
}

fn i64_of(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// A `WriteBatch` as the arrays `mneme.write_batch` takes.
#[derive(Default)]
struct Arrays<'a> {
    f_node: Option<&'a str>,
    f_partition: Vec<i32>,
    f_epoch: Vec<i64>,
    e_epoch: Vec<Option<i64>>,
    e_pid: Vec<&'a str>,
    e_seq: Vec<i64>,
    e_ts: Vec<i64>,
    e_writer: Vec<&'a str>,
    e_manifest: Vec<&'a str>,
    e_payload: Vec<&'a [u8]>,
    t_event: Vec<i32>,
    t_tag: Vec<&'a str>,
    s_pid: Vec<&'a str>,
    s_seq: Vec<i64>,
    s_version: Vec<i32>,
    s_ts: Vec<i64>,
    s_state: Vec<&'a [u8]>,
    o_key: Vec<&'a str>,
    o_source: Vec<&'a str>,
    o_source_seq: Vec<i64>,
    o_due: Vec<i64>,
    o_created: Vec<i64>,
    o_type: Vec<&'a str>,
    o_id: Vec<&'a str>,
    o_payload: Vec<&'a [u8]>,
    d_key: Vec<&'a str>,
    a_pid: Vec<&'a str>,
    a_key: Vec<&'a str>,
    a_source: Vec<&'a str>,
    a_seq: Vec<i64>,
    m_topic: Vec<&'a str>,
    m_source: Vec<&'a str>,
    m_ts: Vec<i64>,
    m_payload: Vec<&'a [u8]>,
}

impl<'a> Arrays<'a> {
    fn of(batch: &'a WriteBatch) -> JournalResult<Arrays<'a>> {
        let mut a = Arrays::default();
        if let Some(fence) = &batch.fence {
            a.f_node = Some(&fence.node);
            for &(p, e) in &fence.leases {
                a.f_partition.push(p as i32);
                a.f_epoch.push(i64_of(e));
            }
            // Everything the batch writes for an entity lies in a partition it holds.
            if let Some(pid) = batch.entity_pids().find(|pid| fence.epoch_of(partition_of(pid)).is_none()) {
                return Err(JournalError::Invalid(format!(
                    "`{pid}` is in partition {}, which the batch's fence does not hold",
                    partition_of(pid)
                )));
            }
        }
        for (i, e) in batch.events.iter().enumerate() {
            let fence = batch.fence.as_ref();
            a.e_epoch.push(fence.and_then(|f| f.epoch_of(partition_of(&e.persistence_id))).map(i64_of));
            a.e_pid.push(&e.persistence_id);
            a.e_seq.push(i64_of(e.seq_nr));
            a.e_ts.push(i64_of(e.timestamp_ms));
            a.e_writer.push(&e.writer_id);
            a.e_manifest.push(&e.manifest);
            a.e_payload.push(&e.payload);
            for t in &e.tags {
                a.t_event.push(i as i32 + 1);
                a.t_tag.push(t);
            }
        }
        // The latest snapshot of an entity wins (one row per entity).
        let mut latest: HashMap<&str, &Snapshot> = HashMap::new();
        for s in &batch.snapshots {
            latest.insert(&s.persistence_id, s);
        }
        for s in batch.snapshots.iter().filter(|s| std::ptr::eq(latest[s.persistence_id.as_str()], *s)) {
            a.s_pid.push(&s.persistence_id);
            a.s_seq.push(i64_of(s.seq_nr));
            a.s_version.push(s.state_version as i32);
            a.s_ts.push(i64_of(s.timestamp_ms));
            a.s_state.push(&s.state);
        }
        let o = &batch.outbox;
        for e in &o.entries {
            a.o_key.push(&e.key);
            a.o_source.push(&e.source);
            a.o_source_seq.push(i64_of(e.source_seq_nr));
            a.o_due.push(i64_of(e.due_ms));
            a.o_created.push(i64_of(e.created_ms));
            a.o_type.push(&e.target_type);
            a.o_id.push(&e.target_id);
            a.o_payload.push(&e.payload);
        }
        a.d_key = o.done.iter().map(String::as_str).collect();
        for k in &o.applied {
            a.a_pid.push(&k.persistence_id);
            a.a_key.push(&k.key);
            a.a_source.push(&k.source);
            a.a_seq.push(i64_of(k.seq_nr));
        }
        for m in &o.published {
            a.m_topic.push(&m.topic);
            a.m_source.push(&m.source);
            a.m_ts.push(i64_of(m.timestamp_ms));
            a.m_payload.push(&m.payload);
        }
        Ok(a)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 34] {
        [
            &self.f_node,
            &self.f_partition,
            &self.f_epoch,
            &self.e_epoch,
            &self.e_pid,
            &self.e_seq,
            &self.e_ts,
            &self.e_writer,
            &self.e_manifest,
            &self.e_payload,
            &self.t_event,
            &self.t_tag,
            &self.s_pid,
            &self.s_seq,
            &self.s_version,
            &self.s_ts,
            &self.s_state,
            &self.o_key,
            &self.o_source,
            &self.o_source_seq,
            &self.o_due,
            &self.o_created,
            &self.o_type,
            &self.o_id,
            &self.o_payload,
            &self.d_key,
            &self.a_pid,
            &self.a_key,
            &self.a_source,
            &self.a_seq,
            &self.m_topic,
            &self.m_source,
            &self.m_ts,
            &self.m_payload,
        ]
    }
}

const WRITE: &str = "SELECT mneme.write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34)";
const HEAD: &str = "SELECT next_offset - 1 FROM mneme.offsets";
const EVENTS: &str = "SELECT persistence_id, seq_nr, global_offset, timestamp_ms, writer_id, manifest, tags, payload \
                      FROM mneme.events WHERE persistence_id = $1 AND seq_nr >= $2 ORDER BY seq_nr LIMIT $3";
const EVENTS_BY_TAG: &str = "SELECT e.persistence_id, e.seq_nr, e.global_offset, e.timestamp_ms, e.writer_id, \
                             e.manifest, e.tags, e.payload FROM mneme.event_tags t \
                             JOIN mneme.events e ON e.global_offset = t.global_offset \
                             WHERE t.tag = $1 AND t.global_offset >= $2 ORDER BY t.global_offset LIMIT $3";
const EVENTS_FROM: &str = "SELECT persistence_id, seq_nr, global_offset, timestamp_ms, writer_id, manifest, tags, \
                           payload FROM mneme.events WHERE global_offset >= $1 ORDER BY global_offset LIMIT $2";
const HIGHEST: &str = "SELECT coalesce(max(seq_nr), 0) FROM mneme.events WHERE persistence_id = $1";
const SNAPSHOT: &str =
    "SELECT seq_nr, state_version, timestamp_ms, state FROM mneme.snapshots WHERE persistence_id = $1";
const PUT_TIMER: &str = "INSERT INTO mneme.timers (id, due_ms, entity_type, entity_id, payload) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET due_ms = excluded.due_ms, \
                         entity_type = excluded.entity_type, entity_id = excluded.entity_id, \
                         payload = excluded.payload";
const REMOVE_TIMER: &str = "DELETE FROM mneme.timers WHERE id = $1";
const TIMERS: &str = "SELECT id, due_ms, entity_type, entity_id, payload FROM mneme.timers ORDER BY due_ms, id";
const NEXT_TIMER_ID: &str = "SELECT nextval('mneme.timer_ids')";
const PENDING: &str = "SELECT key, source, source_seq_nr, due_ms, created_ms, target_type, target_id, payload \
                       FROM mneme.outbox ORDER BY key";
const APPLIED: &str = "SELECT EXISTS (SELECT 1 FROM mneme.applied_keys WHERE persistence_id = $1 AND key = $2)";
const MESSAGES: &str = "SELECT position, source, timestamp_ms, payload FROM mneme.topic_messages \
                        WHERE topic = $1 AND position >= $2 ORDER BY position LIMIT $3";
const TOPIC_HEAD: &str = "SELECT coalesce((SELECT head FROM mneme.topics WHERE topic = $1), 0)";
const WRITE_PROJECTION: &str = "SELECT mneme.write_projection($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
// One statement, so one transaction: if the fence fails, nothing is stored,
// whichever function runs first.
const WRITE_PROJECTION_FENCED: &str = "SELECT mneme.check_fence($11, $12, $13), \
                                       mneme.write_projection($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const PROJECTION_OFFSETS: &str = "SELECT generation, \"offset\", view_version, component_version, live \
                                  FROM mneme.projection_offsets WHERE projection = $1 ORDER BY generation";
const VIEW_GET: &str = "SELECT value FROM mneme.views WHERE projection = $1 AND generation = $2 AND key = $3";
const VIEW_SCAN: &str = "SELECT key, value FROM mneme.views WHERE projection = $1 AND generation = $2 \
                         AND key >= $3 AND ($4::text IS NULL OR key < $4) ORDER BY key LIMIT $5";

/// The least string greater than every string that starts with `prefix`, in
/// bytewise (UTF-8, so code point) order; `None` when there is none.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn event_of(row: &Row) -> StoredEvent {
    StoredEvent {
        persistence_id: row.get(0),
        seq_nr: row.get::<_, i64>(1) as u64,
        offset: row.get::<_, i64>(2) as u64,
        timestamp_ms: row.get::<_, i64>(3) as u64,
        writer_id: row.get(4),
        manifest: row.get(5),
        tags: row.get(6),
        payload: row.get(7),
    }
}

impl Journal for PostgresJournal {
    fn write(&self, batch: &WriteBatch) -> JournalResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        check_batch(batch)?;
        if self.shared && batch.fence.is_none() && batch.entity_pids().next().is_some() {
            return Err(JournalError::Invalid(
                "a write to a PostgreSQL journal shared by several hosts needs the leases it is made under".into(),
            ));
        }
        let arrays = Arrays::of(batch)?;
        let params = arrays.params();
        match self.on_writer(|c| c.query_one(WRITE, &params)) {
            Ok(row) => {
                let first = row.get::<_, i64>(0) as u64;
                if !batch.events.is_empty() {
                    self.head.fetch_max(first + batch.events.len() as u64 - 1, Ordering::AcqRel);
                }
                *self.trouble.lock().unwrap() = None;
                Ok(())
            }
            Err(e) => {
                if matches!(e, JournalError::Storage(_)) {
                    tracing::error!("PostgreSQL journal: write failed, nothing of the batch is acknowledged: {e}");
                }
                self.set_trouble(&e);
                Err(e)
            }
        }
    }

    fn highest_seq_nr(&self, pid: &str) -> JournalResult<u64> {
        self.read(|c| c.query_one(HIGHEST, &[&pid])).map(|r| r.get::<_, i64>(0) as u64)
    }

    fn events(&self, pid: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let (from, limit) = (i64_of(from), i64_of(limit as u64));
        let rows = self.read(|c| c.query(EVENTS, &[&pid, &from, &limit]))?;
        Ok(rows.iter().map(event_of).collect())
    }

    fn events_by_tag(&self, tag: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let (from, limit) = (i64_of(from), i64_of(limit as u64));
        let rows = self.read(|c| c.query(EVENTS_BY_TAG, &[&tag, &from, &limit]))?;
        Ok(rows.iter().map(event_of).collect())
    }

    fn events_from(&self, from: u64, limit: usize) -> JournalResult<Vec<StoredEvent>> {
        let (from, limit) = (i64_of(from), i64_of(limit as u64));
        let rows = self.read(|c| c.query(EVENTS_FROM, &[&from, &limit]))?;
        Ok(rows.iter().map(event_of).collect())
    }

    fn load_snapshot(&self, pid: &str) -> JournalResult<Option<Snapshot>> {
        let rows = self.read(|c| c.query(SNAPSHOT, &[&pid]))?;
        Ok(rows.first().map(|r| Snapshot {
            persistence_id: pid.to_string(),
            seq_nr: r.get::<_, i64>(0) as u64,
            state_version: r.get::<_, i32>(1) as u32,
            timestamp_ms: r.get::<_, i64>(2) as u64,
            state: r.get(3),
        }))
    }

    fn put_timer(&self, timer: &Timer) -> JournalResult<()> {
        let (id, due) = (i64_of(timer.id), i64_of(timer.due_ms));
        let params: [&(dyn ToSql + Sync); 5] = [&id, &due, &timer.entity_type, &timer.entity_id, &timer.payload];
        self.on_writer(|c| c.execute(PUT_TIMER, &params)).map(drop)
    }

    fn remove_timer(&self, id: u64) -> JournalResult<()> {
        let id = i64_of(id);
        self.on_writer(|c| c.execute(REMOVE_TIMER, &[&id])).map(drop)
    }

    fn timers(&self) -> JournalResult<Vec<Timer>> {
        let rows = self.read(|c| c.query(TIMERS, &[]))?;
        Ok(rows
            .iter()
            .map(|r| Timer {
                id: r.get::<_, i64>(0) as u64,
                due_ms: r.get::<_, i64>(1) as u64,
                entity_type: r.get(2),
                entity_id: r.get(3),
                payload: r.get(4),
            })
            .collect())
    }

    fn next_timer_id(&self) -> JournalResult<u64> {
        self.read(|c| c.query_one(NEXT_TIMER_ID, &[])).map(|r| r.get::<_, i64>(0) as u64)
    }

    /// Alone on the database, the newest offset this journal wrote. Shared by
    /// several hosts, the others write too: the database's head, read at most
    /// every [`HEAD_EVERY`] (a failed read keeps the last one).
    fn head(&self) -> u64 {
        if self.shared {
            let due = {
                let mut last = self.head_read.lock().unwrap();
                let due = last.is_none_or(|t| t.elapsed() >= HEAD_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                if let Ok(row) = self.read(|c| c.query_one(HEAD, &[])) {
                    self.head.fetch_max(row.get::<_, i64>(0) as u64, Ordering::AcqRel);
                }
            }
        }
        self.head.load(Ordering::Acquire)
    }

    fn outbox_pending(&self) -> JournalResult<Vec<OutboxEntry>> {
        let rows = self.read(|c| c.query(PENDING, &[]))?;
        Ok(rows
            .iter()
            .map(|r| OutboxEntry {
                key: r.get(0),
                source: r.get(1),
                source_seq_nr: r.get::<_, i64>(2) as u64,
                due_ms: r.get::<_, i64>(3) as u64,
                created_ms: r.get::<_, i64>(4) as u64,
                target_type: r.get(5),
                target_id: r.get(6),
                payload: r.get(7),
            })
            .collect())
    }

    fn is_applied(&self, pid: &str, key: &str) -> JournalResult<bool> {
        self.read(|c| c.query_one(APPLIED, &[&pid, &key])).map(|r| r.get(0))
    }

    fn topic_messages(&self, topic: &str, from: u64, limit: usize) -> JournalResult<Vec<StoredTopicMessage>> {
        let (from, limit) = (i64_of(from), i64_of(limit as u64));
        let rows = self.read(|c| c.query(MESSAGES, &[&topic, &from, &limit]))?;
        Ok(rows
            .iter()
            .map(|r| StoredTopicMessage {
                topic: topic.to_string(),
                position: r.get::<_, i64>(0) as u64,
                source: r.get(1),
                timestamp_ms: r.get::<_, i64>(2) as u64,
                payload: r.get(3),
            })
            .collect())
    }

    fn topic_head(&self, topic: &str) -> JournalResult<u64> {
        self.read(|c| c.query_one(TOPIC_HEAD, &[&topic])).map(|r| r.get::<_, i64>(0) as u64)
    }

    fn write_projection(&self, batch: &ProjectionBatch) -> JournalResult<()> {
        views::check_batch(batch)?;
        let o = &batch.offset;
        let (mut put_keys, mut put_values, mut delete_keys) = (Vec::new(), Vec::new(), Vec::new());
        for u in &batch.updates {
            match u {
                ViewUpdate::Put { key, value } => {
                    put_keys.push(key.as_str());
                    put_values.push(value.as_slice());
                }
                ViewUpdate::Delete { key } => delete_keys.push(key.as_str()),
            }
        }
        let (generation, previous, offset) = (i64::from(o.generation), i64_of(batch.previous_offset), i64_of(o.offset));
        let (view_version, component_version) = (i64::from(o.view_version), o.component_version as i64);
        let params: [&(dyn ToSql + Sync); 10] = [
            &o.projection,
            &generation,
            &previous,
            &offset,
            &view_version,
            &component_version,
            &o.live,
            &put_keys,
            &put_values,
            &delete_keys,
        ];
        // On a pooled connection, not the writer's: a projection's batch does not
        // hold up the group commits of commands.
        match (&batch.fence, self.shared) {
            (None, false) => self.pooled(1, |c| c.execute(WRITE_PROJECTION, &params)).map(drop),
            (Some(fence), _) => {
                let node = fence.node.as_str();
                let partitions: Vec<i32> = fence.leases.iter().map(|l| l.0 as i32).collect();
                let epochs: Vec<i64> = fence.leases.iter().map(|l| i64_of(l.1)).collect();
                let mut fenced: Vec<&(dyn ToSql + Sync)> = params.to_vec();
                fenced.extend([&node as &(dyn ToSql + Sync), &partitions, &epochs]);
                self.pooled(1, |c| c.execute(WRITE_PROJECTION_FENCED, &fenced)).map(drop)
            }
            (None, true) => Err(JournalError::Invalid(
                "a projection batch on a PostgreSQL journal shared by several hosts needs the lease it is made under"
                    .into(),
            )),
        }
    }

    fn projection_offsets(&self, projection: &str) -> JournalResult<Vec<ProjectionOffset>> {
        let rows = self.read(|c| c.query(PROJECTION_OFFSETS, &[&projection]))?;
        Ok(rows
            .iter()
            .map(|r| ProjectionOffset {
                projection: projection.to_string(),
                generation: r.get::<_, i64>(0) as u32,
                offset: r.get::<_, i64>(1) as u64,
                view_version: r.get::<_, i64>(2) as u32,
                component_version: r.get::<_, i64>(3) as u64,
                live: r.get(4),
            })
            .collect())
    }

    fn view_get(&self, projection: &str, generation: u32, key: &str) -> JournalResult<Option<Vec<u8>>> {
        let generation = i64::from(generation);
        let rows = self.read(|c| c.query(VIEW_GET, &[&projection, &generation, &key]))?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn view_scan(
        &self,
        projection: &str,
        generation: u32,
        prefix: &str,
        from_key: &str,
        limit: usize,
    ) -> JournalResult<Vec<(String, Vec<u8>)>> {
        let generation = i64::from(generation);
        let start = from_key.max(prefix);
        let end = prefix_end(prefix);
        let limit = i64_of(limit as u64);
        let rows = self.read(|c| c.query(VIEW_SCAN, &[&projection, &generation, &start, &end, &limit]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// While the last write failed, each call (at most once a second) probes the
    /// writer connection (connecting again and taking the writer lock if needed).
    fn health(&self) -> Result<(), String> {
        if self.trouble.lock().unwrap().is_none() {
            return Ok(());
        }
        let due = {
            let mut last = self.last_probe.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && self.on_writer(|c| c.client.simple_query("SELECT 1")).is_ok() {
            tracing::info!("PostgreSQL journal: the database answers again");
            *self.trouble.lock().unwrap() = None;
        }
        match self.trouble.lock().unwrap().clone() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

impl Drop for PostgresJournal {
    /// Release the writer lock at once (a closed session releases it too, but the
    /// server may notice a moment later) and close every connection, on a thread
    /// of its own: the last reference may go on an async worker (a server's
    /// shutdown), where the blocking client must not run.
    fn drop(&mut self) {
        let writer = self.writer.get_mut().ok().and_then(Option::take);
        let readers = self.readers.get_mut().map(std::mem::take).unwrap_or_default();
        let close = move || {
            if let Some(mut conn) = writer {
                let _ = conn.client.execute("SELECT pg_advisory_unlock_all()", &[]);
                let _ = conn.client.close();
            }
            drop(readers);
        };
        if let Ok(thread) = std::thread::Builder::new().name("mneme-pg-close".into()).spawn(close) {
            let _ = thread.join();
        }
    }
}

/// Create the database `name` on the server of `server_url` (connecting to that
/// URL's database) unless it exists; returns the URL of the new database. For
/// tests and benchmarks that want a database each.
pub fn create_database(server_url: &str, name: &str) -> JournalResult<String> {
    let shown = without_password(server_url);
    let fail = |e: ::postgres::Error| JournalError::Storage(format!("PostgreSQL at {shown}: {}", describe(&e)));
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() || name.len() > 63 {
        return Err(JournalError::Invalid(format!("invalid database name `{name}`")));
    }
    let mut client = Client::connect(server_url, NoTls).map_err(fail)?;
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).map_err(fail)?;
    if exists.is_none() {
        match client.batch_execute(&format!("CREATE DATABASE {name}")) {
            Ok(()) => {}
            // Created meanwhile by another process.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    if !server_url.contains("://") {
        return Err(JournalError::Invalid("create_database needs a postgres:// URL".into()));
    }
    Ok(format!("{prefix}/{name}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(without_password("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(without_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(without_password("host=h password=secret user=u"), "host=h password=*** user=u");
    }

    #[test]
    fn the_end_of_a_prefix_bounds_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        for key in ["ab", "ab\u{10FFFF}\u{10FFFF}", "abz"] {
            assert!(key < prefix_end("ab").unwrap().as_str());
        }
    }

    #[test]
    fn a_batch_whose_events_skip_is_refused_before_the_database() {
        use crate::journal::tests::ev;
        let batch = |events| WriteBatch { events, ..WriteBatch::default() };
        assert!(check_batch(&batch(vec![ev("a|1", 1, &[]), ev("a|1", 2, &[]), ev("b|1", 4, &[])])).is_ok());
        assert!(check_batch(&batch(vec![ev("a|1", 1, &[]), ev("a|1", 3, &[])])).is_err());
        assert!(check_batch(&batch(vec![ev("a|1", 2, &[]), ev("a|1", 2, &[])])).is_err());
        assert!(check_batch(&batch(vec![ev("a|1", 0, &[])])).is_err());
    }
}

/// Test support: PostgreSQL for tests, a database per data directory.
#[doc(hidden)]
pub mod testing {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    use ::postgres::{Client, NoTls};

    static SERVER: OnceLock<String> = OnceLock::new();
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

    /// The test server: `$MNEME_TEST_POSTGRES_URL`. Panics when it is not set: a
    /// test that needs PostgreSQL fails without it, naming the script that starts
    /// one; it is never skipped.
    pub fn server_url() -> String {
        SERVER
            .get_or_init(|| match std::env::var("MNEME_TEST_POSTGRES_URL") {
                Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
                _ => panic!(
                    "this test needs PostgreSQL and MNEME_TEST_POSTGRES_URL is not set: start one with \
                     `export MNEME_TEST_POSTGRES_URL=$(scripts/start-postgres.sh)` (scripts/test.sh does it)"
                ),
            })
            .clone()
    }

    /// The URL of a database of its own for the data directory `dir` (the same
    /// one for every call with that directory in this process), fresh the first
    /// time. Databases left by test processes that are gone are dropped.
    pub fn database_for(dir: &Path) -> String {
        let mut guard = DATABASES.lock().unwrap();
        let databases = guard.get_or_insert_with(HashMap::new);
        if let Some(url) = databases.get(dir) {
            return url.clone();
        }
        let server = server_url();
        let mut client = Client::connect(&server, NoTls).unwrap_or_else(|e| panic!("PostgreSQL at {server}: {e}"));
        let me = std::process::id();
        if databases.is_empty() {
            let rows = client.query("SELECT datname FROM pg_database WHERE datname LIKE 'mneme\\_t\\_%'", &[]).unwrap();
            for row in rows {
                let name: String = row.get(0);
                let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                let gone = pid.is_some_and(|p| p == me || !Path::new(&format!("/proc/{p}")).exists());
                if gone {
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            }
        }
        let name = format!("mneme_t_{me}_{}", databases.len() + 1);
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
        let url = super::create_database(&server, &name).unwrap();
        databases.insert(dir.to_path_buf(), url.clone());
        url
    }
}
