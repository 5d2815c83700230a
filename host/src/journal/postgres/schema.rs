//! The PostgreSQL journal's schema, created and migrated when the journal opens.
//!
//! Everything lives in the schema `mneme` of the database named by
//! `--postgres-url`. `mneme.schema_version` has one row per migration applied; a
//! journal opens a database only when it knows every version there (a database
//! migrated by a newer mneme is refused, naming both versions), and applies the
//! migrations it is missing in order, each in its own transaction, under an
//! advisory lock so that hosts starting together migrate once.
//!
//! Migrations are never edited once released: a change is a new migration.

/// The newest schema version this mneme writes and reads.
pub const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock key (`pg_advisory_xact_lock`) held while migrating.
pub const MIGRATION_LOCK: i64 = 0x6d6e_656d_6501;

/// `(version, what it does, SQL)`, oldest first.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events, tags, snapshots, timers, outbox, topics", V1),
    (2, "projection offsets and views", V2),
    (3, "nodes, partition leases, fenced writes", V3),
    (4, "components shared by several hosts", V4),
];

/// The table every version starts from (created before anything else).
pub const BOOTSTRAP: &str = "
CREATE SCHEMA IF NOT EXISTS mneme;
CREATE TABLE IF NOT EXISTS mneme.schema_version (
    version       integer PRIMARY KEY,
    description   text NOT NULL,
    mneme_version text NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now()
);
";

const V1: &str = r#"
-- The next global offset. Its one row is locked by every write that has events
-- until that write commits, so offsets are handed out in commit order (see
-- mneme.write_batch).
CREATE TABLE mneme.offsets (
    id          integer PRIMARY KEY CHECK (id = 1),
    next_offset bigint NOT NULL
);
INSERT INTO mneme.offsets VALUES (1, 1);

-- Events: (persistence_id, seq_nr) is the key, so no event is ever overwritten;
-- mneme.write_batch refuses a gap. Text compared byte by byte (COLLATE "C"), as
-- the embedded journals order keys.
CREATE TABLE mneme.events (
    persistence_id text COLLATE "C" NOT NULL,
    seq_nr         bigint NOT NULL CHECK (seq_nr > 0),
    global_offset  bigint NOT NULL UNIQUE,
    timestamp_ms   bigint NOT NULL,
    writer_id      text NOT NULL,
    manifest       text NOT NULL,
    tags           text[] NOT NULL,
    payload        bytea NOT NULL,
    PRIMARY KEY (persistence_id, seq_nr)
);

-- events_by_tag: one row per tag of an event.
CREATE TABLE mneme.event_tags (
    tag           text COLLATE "C" NOT NULL,
    global_offset bigint NOT NULL,
    PRIMARY KEY (tag, global_offset)
);

-- The latest snapshot of each entity.
CREATE TABLE mneme.snapshots (
    persistence_id text COLLATE "C" PRIMARY KEY,
    seq_nr         bigint NOT NULL,
    state_version  integer NOT NULL,
    timestamp_ms   bigint NOT NULL,
    state          bytea NOT NULL
);

-- Timers stored by earlier versions (schedule is an outbox entry now).
CREATE TABLE mneme.timers (
    id          bigint PRIMARY KEY,
    due_ms      bigint NOT NULL,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    payload     bytea NOT NULL
);
CREATE SEQUENCE mneme.timer_ids;

-- Pending outbox entries: a row from the write of the command that sent it until
-- the write that records its delivery as done (which deletes it).
CREATE TABLE mneme.outbox (
    key           text COLLATE "C" PRIMARY KEY,
    source        text NOT NULL,
    source_seq_nr bigint NOT NULL,
    due_ms        bigint NOT NULL,
    created_ms    bigint NOT NULL,
    target_type   text NOT NULL,
    target_id     text NOT NULL,
    payload       bytea NOT NULL
);

-- Idempotency keys applied by each entity, kept for good.
CREATE TABLE mneme.applied_keys (
    persistence_id text COLLATE "C" NOT NULL,
    key            text COLLATE "C" NOT NULL,
    source         text NOT NULL,
    seq_nr         bigint NOT NULL,
    PRIMARY KEY (persistence_id, key)
);

-- Durable topics: the newest position of each (locked by a write that publishes
-- to it until it commits, so positions are gapless and in commit order), and
-- their messages.
CREATE TABLE mneme.topics (
    topic text COLLATE "C" PRIMARY KEY,
    head  bigint NOT NULL
);
CREATE TABLE mneme.topic_messages (
    topic        text COLLATE "C" NOT NULL,
    position     bigint NOT NULL,
    source       text NOT NULL,
    timestamp_ms bigint NOT NULL,
    payload      bytea NOT NULL,
    PRIMARY KEY (topic, position)
);

-- One group commit: every part of a WriteBatch, as arrays (one element per
-- event, tag, snapshot, ...). Called as one statement, so it is one transaction:
-- all of it is stored, or none. Returns the first global offset of the events
-- (0 when there are none).
--
-- Ordering rule: the offsets row is locked from the moment a write takes its
-- offsets until it commits, and PostgreSQL makes a transaction visible before it
-- releases its locks. So a write with higher offsets starts only after every
-- write with lower offsets is committed and visible: a reader always sees a
-- gapless prefix of the offsets, and nothing ever appears behind what it read.
CREATE FUNCTION mneme.write_batch(
    e_pid text[], e_seq bigint[], e_ts bigint[], e_writer text[], e_manifest text[], e_payload bytea[],
    t_event integer[], t_tag text[],
    s_pid text[], s_seq bigint[], s_version integer[], s_ts bigint[], s_state bytea[],
    o_key text[], o_source text[], o_source_seq bigint[], o_due bigint[], o_created bigint[],
    o_type text[], o_id text[], o_payload bytea[],
    d_key text[],
    a_pid text[], a_key text[], a_source text[], a_seq bigint[],
    m_topic text[], m_source text[], m_ts bigint[], m_payload bytea[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n_events bigint := coalesce(array_length(e_pid, 1), 0);
    first    bigint := 0;
    bad      record;
BEGIN
    IF n_events > 0 THEN
        -- The first event of each persistence id follows its stored events (the
        -- caller checked that the batch's own events follow each other).
        SELECT b.pid, b.first_seq, coalesce(m.last, 0) AS last INTO bad
          FROM (SELECT pid, min(seq) AS first_seq FROM unnest(e_pid, e_seq) AS t(pid, seq) GROUP BY pid) b
          LEFT JOIN LATERAL (SELECT max(e.seq_nr) AS last FROM mneme.events e WHERE e.persistence_id = b.pid) m
            ON true
         WHERE b.first_seq <> coalesce(m.last, 0) + 1
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '%: sequence number % does not follow the stored events (the newest is %; another writer?)',
                bad.pid, bad.first_seq, bad.last USING ERRCODE = 'MNSEQ';
        END IF;
        UPDATE mneme.offsets SET next_offset = next_offset + n_events WHERE id = 1
        RETURNING next_offset - n_events INTO first;
        INSERT INTO mneme.events (persistence_id, seq_nr, global_offset, timestamp_ms, writer_id, manifest, tags, payload)
        SELECT e.pid, e.seq, first + e.i - 1, e.ts, e.writer, e.manifest, coalesce(t.tags, '{}'), e.payload
          FROM unnest(e_pid, e_seq, e_ts, e_writer, e_manifest, e_payload)
               WITH ORDINALITY AS e(pid, seq, ts, writer, manifest, payload, i)
          LEFT JOIN (SELECT ev, array_agg(tag ORDER BY k) AS tags
                       FROM unnest(t_event, t_tag) WITH ORDINALITY AS x(ev, tag, k) GROUP BY ev) t
            ON t.ev = e.i;
        INSERT INTO mneme.event_tags (tag, global_offset)
        SELECT DISTINCT tag, first + ev - 1 FROM unnest(t_event, t_tag) AS x(ev, tag);
    END IF;

    INSERT INTO mneme.snapshots (persistence_id, seq_nr, state_version, timestamp_ms, state)
    SELECT * FROM unnest(s_pid, s_seq, s_version, s_ts, s_state)
    ON CONFLICT (persistence_id) DO UPDATE
       SET seq_nr = excluded.seq_nr, state_version = excluded.state_version,
           timestamp_ms = excluded.timestamp_ms, state = excluded.state;

    INSERT INTO mneme.outbox (key, source, source_seq_nr, due_ms, created_ms, target_type, target_id, payload)
    SELECT * FROM unnest(o_key, o_source, o_source_seq, o_due, o_created, o_type, o_id, o_payload)
    ON CONFLICT (key) DO NOTHING;
    DELETE FROM mneme.outbox WHERE key = ANY (d_key);
    INSERT INTO mneme.applied_keys (persistence_id, key, source, seq_nr)
    SELECT * FROM unnest(a_pid, a_key, a_source, a_seq)
    ON CONFLICT (persistence_id, key) DO NOTHING;

    IF coalesce(array_length(m_topic, 1), 0) > 0 THEN
        -- Advance each topic's head (locked in topic order: no deadlock between
        -- writers), then number the messages after the old head, in batch order.
        WITH counts AS (
            SELECT topic, count(*) AS n FROM unnest(m_topic) AS t(topic) GROUP BY topic ORDER BY topic
        ), heads AS (
            INSERT INTO mneme.topics AS h (topic, head) SELECT topic, n FROM counts
            ON CONFLICT (topic) DO UPDATE SET head = h.head + excluded.head
            RETURNING h.topic, h.head
        )
        INSERT INTO mneme.topic_messages (topic, position, source, timestamp_ms, payload)
        SELECT m.topic, heads.head - counts.n + row_number() OVER (PARTITION BY m.topic ORDER BY m.i),
               m.source, m.ts, m.payload
          FROM unnest(m_topic, m_source, m_ts, m_payload) WITH ORDINALITY AS m(topic, source, ts, payload, i)
          JOIN heads ON heads.topic = m.topic
          JOIN counts ON counts.topic = m.topic;
    END IF;
    RETURN first;
END
$$;
"#;

const V2: &str = r#"
-- Where each generation of each projection stands (journal/views.rs).
CREATE TABLE mneme.projection_offsets (
    projection        text COLLATE "C" NOT NULL,
    generation        bigint NOT NULL,
    "offset"          bigint NOT NULL,
    view_version      bigint NOT NULL,
    component_version bigint NOT NULL,
    live              boolean NOT NULL,
    PRIMARY KEY (projection, generation)
);

-- The views: one row per key of a generation of a projection.
CREATE TABLE mneme.views (
    projection text COLLATE "C" NOT NULL,
    generation bigint NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

-- One projection batch, one transaction: the generation's stored offset is
-- checked against the offset the batch continues from (its row locked until
-- commit), then the view updates and the new offset are written. A batch
-- computed twice is refused (MNSEQ), never stored twice.
CREATE FUNCTION mneme.write_projection(
    p text, g bigint, previous bigint, new_offset bigint, vv bigint, cv bigint, is_live boolean,
    put_keys text[], put_values bytea[], delete_keys text[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stored bigint;
BEGIN
    SELECT o."offset" INTO stored FROM mneme.projection_offsets o
     WHERE o.projection = p AND o.generation = g FOR UPDATE;
    IF coalesce(stored, 0) <> previous THEN
        RAISE EXCEPTION 'projection `%` generation % is at offset %, the batch continues from %: not stored twice',
            p, g, coalesce(stored, 0), previous USING ERRCODE = 'MNSEQ';
    END IF;
    INSERT INTO mneme.projection_offsets AS o
           (projection, generation, "offset", view_version, component_version, live)
    VALUES (p, g, new_offset, vv, cv, is_live)
    ON CONFLICT (projection, generation) DO UPDATE
       SET "offset" = excluded."offset", view_version = excluded.view_version,
           component_version = excluded.component_version, live = excluded.live;
    DELETE FROM mneme.views v WHERE v.projection = p AND v.generation = g AND v.key = ANY (delete_keys);
    INSERT INTO mneme.views AS v (projection, generation, key, value)
    SELECT p, g, k, val FROM unnest(put_keys, put_values) AS u(k, val)
    ON CONFLICT (projection, generation, key) DO UPDATE SET value = excluded.value;
END
$$;
"#;

const V3: &str = r#"
-- Several hosts on one database (see cluster/). Each host keeps its row fresh
-- (seen_at) while it runs; one that stopped doing so for a lease period is gone.
CREATE TABLE mneme.nodes (
    node_id    text COLLATE "C" PRIMARY KEY,
    url        text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- The lease of each partition (names::partition_of, 64 of them): its owner, the
-- epoch (the fencing token, one higher at every change of owner) and when the lease
-- ends by the database's clock unless renewed. node_id NULL: free.
CREATE TABLE mneme.partitions (
    partition  integer PRIMARY KEY CHECK (partition >= 0 AND partition < 64),
    node_id    text COLLATE "C",
    epoch      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz
);
INSERT INTO mneme.partitions (partition) SELECT generate_series(0, 63);

-- Every lease ever granted, so that the epoch of each event can be checked
-- against the host that held the partition at that epoch.
CREATE TABLE mneme.lease_history (
    partition integer NOT NULL,
    epoch     bigint NOT NULL,
    node_id   text NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, epoch)
);

-- The epoch of the lease an event was written under (NULL: a host alone on the
-- database, no leases).
ALTER TABLE mneme.events ADD COLUMN epoch bigint;

-- The fence: every lease a write was made under is still the writer's, at the
-- same epoch, or the write's transaction fails (MNFEN) and stores nothing. The
-- lease rows stay share-locked until the write commits, so a host taking a
-- partition over (an UPDATE of its row) waits for the write in flight, and every
-- write after the takeover sees the new epoch.
CREATE FUNCTION mneme.check_fence(f_node text, f_partition integer[], f_epoch bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    PERFORM 1 FROM mneme.partitions WHERE partition = ANY (f_partition) ORDER BY partition FOR SHARE;
    SELECT f.p, f.e, l.node_id, l.epoch INTO bad
      FROM unnest(f_partition, f_epoch) AS f(p, e)
      LEFT JOIN mneme.partitions l ON l.partition = f.p
     WHERE l.node_id IS DISTINCT FROM f_node OR l.epoch IS DISTINCT FROM f.e
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partition % is held by % at epoch %; this write was made by % under epoch %: nothing of it stored',
            bad.p, coalesce(bad.node_id, 'no host'), coalesce(bad.epoch, 0), f_node, bad.e USING ERRCODE = 'MNFEN';
    END IF;
END
$$;

-- write_batch as in version 1, with the fence checked first: f_node NULL for a
-- host alone on the database.
DROP FUNCTION mneme.write_batch;
CREATE FUNCTION mneme.write_batch(
    f_node text, f_partition integer[], f_epoch bigint[], e_epoch bigint[],
    e_pid text[], e_seq bigint[], e_ts bigint[], e_writer text[], e_manifest text[], e_payload bytea[],
    t_event integer[], t_tag text[],
    s_pid text[], s_seq bigint[], s_version integer[], s_ts bigint[], s_state bytea[],
    o_key text[], o_source text[], o_source_seq bigint[], o_due bigint[], o_created bigint[],
    o_type text[], o_id text[], o_payload bytea[],
    d_key text[],
    a_pid text[], a_key text[], a_source text[], a_seq bigint[],
    m_topic text[], m_source text[], m_ts bigint[], m_payload bytea[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n_events bigint := coalesce(array_length(e_pid, 1), 0);
    first    bigint := 0;
    bad      record;
BEGIN
    IF f_node IS NOT NULL THEN
        PERFORM mneme.check_fence(f_node, f_partition, f_epoch);
    END IF;
    IF n_events > 0 THEN
        -- The first event of each persistence id follows its stored events (the
        -- caller checked that the batch's own events follow each other).
        SELECT b.pid, b.first_seq, coalesce(m.last, 0) AS last INTO bad
          FROM (SELECT pid, min(seq) AS first_seq FROM unnest(e_pid, e_seq) AS t(pid, seq) GROUP BY pid) b
          LEFT JOIN LATERAL (SELECT max(e.seq_nr) AS last FROM mneme.events e WHERE e.persistence_id = b.pid) m
            ON true
         WHERE b.first_seq <> coalesce(m.last, 0) + 1
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '%: sequence number % does not follow the stored events (the newest is %; another writer?)',
                bad.pid, bad.first_seq, bad.last USING ERRCODE = 'MNSEQ';
        END IF;
        UPDATE mneme.offsets SET next_offset = next_offset + n_events WHERE id = 1
        RETURNING next_offset - n_events INTO first;
        INSERT INTO mneme.events
               (persistence_id, seq_nr, global_offset, timestamp_ms, writer_id, epoch, manifest, tags, payload)
        SELECT e.pid, e.seq, first + e.i - 1, e.ts, e.writer, e.epoch, e.manifest, coalesce(t.tags, '{}'), e.payload
          FROM unnest(e_pid, e_seq, e_ts, e_writer, e_epoch, e_manifest, e_payload)
               WITH ORDINALITY AS e(pid, seq, ts, writer, epoch, manifest, payload, i)
          LEFT JOIN (SELECT ev, array_agg(tag ORDER BY k) AS tags
                       FROM unnest(t_event, t_tag) WITH ORDINALITY AS x(ev, tag, k) GROUP BY ev) t
            ON t.ev = e.i;
        INSERT INTO mneme.event_tags (tag, global_offset)
        SELECT DISTINCT tag, first + ev - 1 FROM unnest(t_event, t_tag) AS x(ev, tag);
    END IF;

    INSERT INTO mneme.snapshots (persistence_id, seq_nr, state_version, timestamp_ms, state)
    SELECT * FROM unnest(s_pid, s_seq, s_version, s_ts, s_state)
    ON CONFLICT (persistence_id) DO UPDATE
       SET seq_nr = excluded.seq_nr, state_version = excluded.state_version,
           timestamp_ms = excluded.timestamp_ms, state = excluded.state;

    INSERT INTO mneme.outbox (key, source, source_seq_nr, due_ms, created_ms, target_type, target_id, payload)
    SELECT * FROM unnest(o_key, o_source, o_source_seq, o_due, o_created, o_type, o_id, o_payload)
    ON CONFLICT (key) DO NOTHING;
    DELETE FROM mneme.outbox WHERE key = ANY (d_key);
    INSERT INTO mneme.applied_keys (persistence_id, key, source, seq_nr)
    SELECT * FROM unnest(a_pid, a_key, a_source, a_seq)
    ON CONFLICT (persistence_id, key) DO NOTHING;

    IF coalesce(array_length(m_topic, 1), 0) > 0 THEN
        -- Advance each topic's head (locked in topic order: no deadlock between
        -- writers), then number the messages after the old head, in batch order.
        WITH counts AS (
            SELECT topic, count(*) AS n FROM unnest(m_topic) AS t(topic) GROUP BY topic ORDER BY topic
        ), heads AS (
            INSERT INTO mneme.topics AS h (topic, head) SELECT topic, n FROM counts
            ON CONFLICT (topic) DO UPDATE SET head = h.head + excluded.head
            RETURNING h.topic, h.head
        )
        INSERT INTO mneme.topic_messages (topic, position, source, timestamp_ms, payload)
        SELECT m.topic, heads.head - counts.n + row_number() OVER (PARTITION BY m.topic ORDER BY m.i),
               m.source, m.ts, m.payload
          FROM unnest(m_topic, m_source, m_ts, m_payload) WITH ORDINALITY AS m(topic, source, ts, payload, i)
          JOIN heads ON heads.topic = m.topic
          JOIN counts ON counts.topic = m.topic;
    END IF;
    RETURN first;
END
$$;

"#;

const V4: &str = r#"
-- Several hosts: every component version deployed to any of them, and the active
-- one of each entity type and projection, which every host loads.
CREATE TABLE mneme.components (
    kind         text NOT NULL CHECK (kind IN ('entity', 'projection')),
    name         text COLLATE "C" NOT NULL,
    hash         text NOT NULL,
    wasm         bytea NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, hash)
);
CREATE TABLE mneme.active_components (
    kind       text NOT NULL,
    name       text COLLATE "C" NOT NULL,
    hash       text NOT NULL,
    node_id    text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name),
    FOREIGN KEY (kind, name, hash) REFERENCES mneme.components
);
"#;
