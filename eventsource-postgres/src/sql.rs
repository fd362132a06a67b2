//! Every statement the crate runs, as `&'static str` constants.
//!
//! Parameters are bound, never formatted in; the one exception, the tenant in the `BEGIN`
//! statement, is hex-encoded so no input can change the statement (see `tenant.rs`).

/// Columns of an event row, in the order [`crate::row::EventRow`] reads them.
///
/// `ORDER BY` clauses qualify their columns (`events.transaction_id`): an output column of the
/// same name would win over the table's, and sorting a text form of the transaction id would put
/// transaction 10 before transaction 9.
macro_rules! event_columns {
    () => {
        "event_id, tenant_id, aggregate_type, aggregate_id, version, \
         transaction_id, global_position, event_type, schema_version, recorded_at, metadata, \
         payload"
    };
}

/// Columns of an event read from a known stream, as [`crate::row::StreamEventRow`] reads them.
macro_rules! stream_event_columns {
    () => {
        "event_id, version, transaction_id, global_position, event_type, schema_version, \
         recorded_at, metadata, payload"
    };
}

/// Appends a batch inside a caller's transaction: the `eventsource_append` function of the
/// schema (`migrations/0001_events.sql`, `0004`) runs the guarded statement. One row back, all
/// `NULL` when the guard let nothing through (a failed expectation or stored ids): no error is
/// raised, so the caller's transaction stays usable. `$13` says whether to scope the
/// transaction to the tenant first.
pub(crate) const APPEND: &str = r"
SELECT version, transaction_id, first_position, last_position
FROM eventsource_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
";

/// Scopes an autocommit statement to the tenant `$1`: the first CTE of the plain appends
/// below, which everything they write is selected from. Row level security checks a written
/// row when the row exists, so after `tenant` has run.
macro_rules! scope_to_tenant {
    () => {
        r"
WITH tenant AS MATERIALIZED (
    SELECT set_config('eventsource.tenant', $1, true) AS tenant_id
),
"
    };
}

/// The streams row of a plain append: `$2`/`$3` the stream, `$4` the expectation (`none`,
/// `any`, `exists`, `exact`), `$5` the expected version (`exact`), `count` its events. One
/// guarded insert serves every expectation:
/// - a row is offered for `none` and `any`, and for `exists` and `exact` only when the stream
///   exists (so the insert can only meet its row). The existence check is a scalar subquery
///   correlated to `tenant`'s row, so it runs after the tenant is set (row level security
///   reads the setting when the subquery first runs). A scalar subquery is never turned into a
///   join, so it stays one primary-key probe per append: cheaper than the
///   `eventsource_stream_version` call it replaced (a PL/pgSQL call with `SET` clauses, about
///   a sixth of a grouped append's server time). A plan made while `streams` was one page may
///   scan it instead; autovacuum's `ANALYZE` of the growing table invalidates that plan;
/// - on the existing row, `DO UPDATE` moves the version on for `any` and `exists`, and for
///   `exact` only at the expected version; `none` updates nothing. The row is locked and
///   re-checked at its latest version, as an `UPDATE` would;
/// - and only for a transaction no older than the row's last writer (`last_xid`, migration
///   0007): the log is ordered by transaction id, so an older one would put this append before
///   the stream's previous events. It is refused like a failed expectation, and the store, which
///   finds the expectation still holds, runs the statement again in a new transaction.
///
/// `pg_current_xact_id()` gives the transaction its id when it has none. The offered row calls
/// it only when it may be inserted (a stream the existence check did not find; `'0'` otherwise,
/// never stored): called there for an existing stream, it would give a new transaction its id
/// before the row's lock is taken, and the transaction would come out of the lock's queue older
/// than the writer it waited for. `DO UPDATE` and its guard call it after the lock, and the
/// existence check runs once, in `found` (`OFFSET 0` keeps the planner from copying it into
/// each reference), and not at all for `none`.
///
/// `stream` returns the row's tenant, new version and stream key (the events' name for their
/// stream, migration 0006); nothing when the guard let nothing through.
macro_rules! move_stream {
    ($count:literal) => {
        concat!(
            r"
stream AS (
    INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version, last_xid)
    SELECT tenant.tenant_id, $2, $3, ",
            $count,
            r",
           CASE WHEN found.version IS NULL THEN pg_current_xact_id() ELSE '0'::xid8 END
    FROM tenant
    CROSS JOIN LATERAL (
        SELECT CASE WHEN $4 <> 'none' THEN
                   (SELECT e.version FROM streams e
                    WHERE e.tenant_id = tenant.tenant_id AND e.aggregate_type = $2
                      AND e.aggregate_id = $3)
               END AS version
        OFFSET 0
    ) found
    WHERE $4 IN ('none', 'any') OR found.version IS NOT NULL
    ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
    DO UPDATE SET version = s.version + EXCLUDED.version, last_xid = pg_current_xact_id()
    WHERE ($4 IN ('any', 'exists') OR ($4 = 'exact' AND s.version = $5))
      AND s.last_xid <= pg_current_xact_id()
    RETURNING s.tenant_id, s.version, s.stream_key
),"
        )
    };
}

/// A batch's events, inserted after its streams row moved (`stream`): `$6`..`$12` are the
/// event columns as arrays.
macro_rules! insert_events {
    () => {
        r"
inserted AS (
    INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, event_id,
                        event_type, schema_version, payload, metadata, correlation_id,
                        causation_id)
    SELECT stream.stream_key, stream.tenant_id, $2, $3,
           stream.version - cardinality($6::uuid[]) + b.n,
           b.event_id, b.event_type, b.schema_version, b.payload, b.metadata, b.correlation_id,
           b.causation_id
    FROM stream
    CROSS JOIN UNNEST($6::uuid[], $7::text[], $8::int4[], $9::jsonb[], $10::jsonb[],
                      $11::uuid[], $12::uuid[])
        WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata,
                             correlation_id, causation_id, n)
    ORDER BY b.n
    RETURNING global_position
)
"
    };
}

/// The outcome row of a batch's append (`inserted` after `stream`): all `NULL` when the guard
/// let nothing through.
macro_rules! batch_outcome {
    () => {
        r"
SELECT (SELECT version FROM stream) AS version,
       pg_current_xact_id_if_assigned()::text AS transaction_id,
       min(global_position) AS first_position,
       max(global_position) AS last_position
FROM inserted
"
    };
}

/// A batch appended inside a caller's transaction that is scoped to the stream's tenant `$1`
/// already, as CTEs ending in `appended`, the outcome row (see `batch_outcome!`): the guarded
/// streams row and events insert of [`APPEND_BATCH`], after a stored-id pre-check. A stored
/// id leaves `tenant` without a row, so nothing is written and no error raised: the caller's
/// transaction stays usable, as after [`APPEND`]. Each id is probed by a correlated scalar
/// subquery, an equality on the unique `event_id`: the planner expects at most one row, so
/// the primary-key probe wins in every plan, even one made while `events` was empty. (As
/// `event_id = ANY(..)` under `EXISTS`, a generic plan made on a new table expected ten
/// matches and scanned the table to stop at the first: a scan that grew with the log until
/// the next `ANALYZE`.) Plain SQL, not the `eventsource_append`
/// call of [`APPEND`]: a PL/pgSQL call with `SET` clauses costs a large share of a step's
/// server time (ADR 0030).
macro_rules! append_in_tx {
    () => {
        concat!(
            r"
tenant AS MATERIALIZED (
    SELECT $1::text AS tenant_id
    WHERE NOT EXISTS (SELECT 1 FROM UNNEST($6::uuid[]) AS b(event_id)
                      WHERE (SELECT true FROM events e WHERE e.event_id = b.event_id))
),",
            move_stream!("cardinality($6::uuid[])"),
            insert_events!(),
            ",
appended AS MATERIALIZED (",
            batch_outcome!(),
            "),"
        )
    };
}

/// As `append_in_tx!`, for one event whose columns `$6`..`$12` are scalars (as in
/// [`APPEND_ONE`]): no arrays to encode and decode, no `UNNEST`, and the stored-id probe one
/// equality on the unique `event_id`.
macro_rules! append_one_in_tx {
    () => {
        concat!(
            r"
tenant AS MATERIALIZED (
    SELECT $1::text AS tenant_id
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = $6::uuid)
),",
            move_stream!("1"),
            insert_event!(),
            ",
appended AS MATERIALIZED (",
            one_outcome!(),
            "),"
        )
    };
}

/// One event, inserted after its streams row moved (`stream`): `$6`..`$12` are its columns as
/// scalars (no arrays to encode and decode, no `UNNEST`).
macro_rules! insert_event {
    () => {
        r"
inserted AS (
    INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, event_id,
                        event_type, schema_version, payload, metadata, correlation_id,
                        causation_id)
    SELECT stream.stream_key, stream.tenant_id, $2, $3, stream.version, $6::uuid, $7::text,
           $8::int4, $9::jsonb, $10::jsonb, $11::uuid, $12::uuid
    FROM stream
    RETURNING global_position
)
"
    };
}

/// The outcome row of one event's append (`inserted` after `stream`): all `NULL` when the
/// guard let nothing through.
macro_rules! one_outcome {
    () => {
        r"
SELECT (SELECT version FROM stream) AS version,
       pg_current_xact_id_if_assigned()::text AS transaction_id,
       (SELECT global_position FROM inserted) AS first_position,
       (SELECT global_position FROM inserted) AS last_position
"
    };
}

/// A batch appended in its own autocommit transaction as one plain statement, scoped to the
/// stream's tenant: the guarded streams row (see `move_stream!`) feeds the events insert.
/// Parameters `$1`..`$12` and the outcome row as [`APPEND`]: all `NULL` when the guard let
/// nothing through. Unlike it, no stored-id pre-check: a stored id fails the statement on
/// `events_event_id_key`, which rolls back its transaction, streams row included, and the store
/// resolves the outcome in a new one (an autocommit statement has no caller's transaction to
/// keep usable, and the probe cost every append an index lookup per event). No PL/pgSQL call
/// either: the function it replaced (`eventsource_append_pooled`, migration 0005, dropped in
/// 0006) measured about a tenth of an uncontended append.
///
/// Row level security holds by construction: every row the statement reads or writes in a
/// tenant's table comes from `tenant`, after it set the tenant. (An `UPDATE` would not do: it
/// checks the rows it scans, and the planner may scan them before `tenant` runs.)
pub(crate) const APPEND_BATCH: &str = concat!(
    scope_to_tenant!(),
    move_stream!("cardinality($6::uuid[])"),
    insert_events!(),
    batch_outcome!()
);

/// As [`APPEND_BATCH`], for one event given as scalars: the usual command's append.
pub(crate) const APPEND_ONE: &str = concat!(
    scope_to_tenant!(),
    move_stream!("1"),
    insert_event!(),
    one_outcome!()
);

/// Group commit of appends of one tenant, as one plain statement: the usual group (a group of
/// several tenants runs it per tenant, in one transaction). Distinct streams, in stream order.
/// Per append (`$2`..`$6`: type, id, expectation, expected
/// version, event count) the streams row moves as in [`APPEND_BATCH`]; the guard of an existing
/// row reads the append's expectation from the arguments. Per event (`$7`..`$9`: its stream's
/// type and id, and how far it stands below its append's last event; then the event columns)
/// one `UNNEST` feeds the events insert, joined to the streams rows that moved, so a rejected
/// append inserts nothing. Streams are offered in the order of the arguments (the store sorts a
/// group by stream), so concurrent groups lock rows in one order. As in [`APPEND_BATCH`], an
/// existing row moves only for a transaction no older than its last writer: a group that
/// waited on a stream's lock after moving another stream (so after it got its transaction id)
/// may be older; that append alone is refused, and the store runs it again by itself. The
/// offered rows take `pg_current_xact_id()` as in [`APPEND_BATCH`].
///
/// One row per inserted event: its id, version and position, and the transaction id. The store
/// folds them into each append's outcome; an append without rows was rejected. (Folding on the
/// server took a third of the statement's fixed cost: two more joins, three sorts and an
/// aggregate, executed once per group.)
///
/// Every array argument is read through a scalar subquery (`(SELECT $7::text[])`): the planner
/// does not look into it, so a plan for the actual arguments estimates the same ten elements as
/// the generic plan, and PostgreSQL keeps the generic one from the sixth execution on. Read
/// directly, a group of five appends or fewer looked cheaper re-planned for its own arrays, and
/// was: about 200 µs of planning on every execution (ADR 0011).
pub(crate) const APPEND_MANY_ONE_TENANT: &str = concat!(
    scope_to_tenant!(),
    r"
stream AS (
    INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version, last_xid)
    SELECT tenant.tenant_id, a.aggregate_type, a.aggregate_id, a.count,
           CASE WHEN found.version IS NULL THEN pg_current_xact_id() ELSE '0'::xid8 END
    FROM tenant
    CROSS JOIN UNNEST((SELECT $2::text[]), (SELECT $3::text[]), (SELECT $4::text[]),
                      (SELECT $6::int8[]))
        WITH ORDINALITY AS a(aggregate_type, aggregate_id, expected, count, n)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN a.expected <> 'none' THEN
                   (SELECT e.version FROM streams e
                    WHERE e.tenant_id = tenant.tenant_id AND e.aggregate_type = a.aggregate_type
                      AND e.aggregate_id = a.aggregate_id)
               END AS version
        OFFSET 0
    ) found
    WHERE a.expected IN ('none', 'any') OR found.version IS NOT NULL
    ORDER BY a.n
    ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
    DO UPDATE SET version = s.version + EXCLUDED.version, last_xid = pg_current_xact_id()
    WHERE s.last_xid <= pg_current_xact_id()
      AND (SELECT x.expected IN ('any', 'exists')
                  OR (x.expected = 'exact' AND s.version = x.expected_version)
           FROM UNNEST((SELECT $2::text[]), (SELECT $3::text[]), (SELECT $4::text[]),
                       (SELECT $5::int8[]))
               AS x(aggregate_type, aggregate_id, expected, expected_version)
           WHERE x.aggregate_type = EXCLUDED.aggregate_type
             AND x.aggregate_id = EXCLUDED.aggregate_id)
    RETURNING s.tenant_id, s.aggregate_type, s.aggregate_id, s.version, s.stream_key
),
inserted AS (
    INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, event_id,
                        event_type, schema_version, payload, metadata, correlation_id,
                        causation_id)
    SELECT m.stream_key, m.tenant_id, m.aggregate_type, m.aggregate_id, m.version - e.below,
           e.event_id, e.event_type, e.schema_version, e.payload, e.metadata, e.correlation_id,
           e.causation_id
    FROM UNNEST((SELECT $7::text[]), (SELECT $8::text[]), (SELECT $9::int8[]),
                (SELECT $10::uuid[]), (SELECT $11::text[]), (SELECT $12::int4[]),
                (SELECT $13::jsonb[]), (SELECT $14::jsonb[]), (SELECT $15::uuid[]),
                (SELECT $16::uuid[]))
        WITH ORDINALITY AS e(aggregate_type, aggregate_id, below, event_id, event_type,
                             schema_version, payload, metadata, correlation_id, causation_id, k)
    JOIN stream m ON m.aggregate_type = e.aggregate_type AND m.aggregate_id = e.aggregate_id
    ORDER BY e.k
    RETURNING events.event_id, events.version, events.global_position
)
SELECT i.event_id, i.version, i.global_position,
       pg_current_xact_id()::text AS transaction_id
FROM inserted i
"
);

/// Where the ids of a batch are stored, for telling an idempotent retry from a reused id (run
/// on every conflict). The ids are read through a scalar subquery, as in
/// [`APPEND_MANY_ONE_TENANT`]: read directly, a batch of fewer than ten ids looked cheaper
/// re-planned for its own array, and was, on every call (66 µs each under the hot-stream
/// benchmark).
pub(crate) const STORED_IDS: &str = r"
SELECT event_id, tenant_id, aggregate_type, aggregate_id, version,
       transaction_id::text AS transaction_id, global_position
FROM events
WHERE event_id = ANY((SELECT $1::uuid[])::uuid[])
";

/// The version of one stream.
pub(crate) const STREAM_VERSION: &str = r"
SELECT version FROM streams WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3
";

/// One stream between two versions, in one round trip that scopes itself to the tenant
/// (`eventsource_read_stream`, `migrations/0001_events.sql`).
pub(crate) const READ_STREAM: &str = concat!(
    "SELECT ",
    stream_event_columns!(),
    " FROM eventsource_read_stream($1, $2, $3, $4, $5)"
);

/// One stream between two versions with only what an aggregate load needs, as
/// [`crate::row::load_row`] reads it: a plain statement, one round trip, no function.
///
/// `eventsource_read_stream` is PL/pgSQL, whose `RETURN QUERY` copies every row into a
/// tuplestore before the first one is sent; with nine columns that cost a 10,000-event load
/// more than the index scan itself. This statement streams its rows and scopes itself to the
/// tenant as the appends do: the first CTE sets the tenant, and the stream's key is looked up
/// by a subquery that depends on that CTE's row, so the `streams` scan (whose row level
/// security policy reads the setting and, being an equality on the key's first column, is an
/// index key computed when the scan starts) cannot start before the setting is made. The
/// `events` scan is a lateral subquery on that key, so it runs after the `stream` CTE (a plain
/// join let the planner start with `events`, whose policy then found no tenant; an
/// uncorrelated init plan setting the tenant was not enough either, as the policy's own init
/// plan ran first: `tests/tenancy.rs` caught both). `OFFSET 0` keeps the subquery from being
/// pulled up into a join the planner could reorder. Its rows come out in its `ORDER BY`
/// (one `stream` row, a nested loop); an outer `ORDER BY` would add a sort of every row, and
/// the repository checks that versions follow each other anyway.
pub(crate) const READ_STREAM_EVENTS: &str = r"
WITH tenant AS MATERIALIZED (
    SELECT set_config('eventsource.tenant', $1, true) AS tenant_id
),
stream AS MATERIALIZED (
    SELECT (SELECT s.stream_key FROM streams s
            WHERE s.tenant_id = tenant.tenant_id
              AND s.aggregate_type = $2
              AND s.aggregate_id = $3) AS stream_key
    FROM tenant
)
SELECT l.event_id, l.version, l.event_type, l.schema_version, l.payload
FROM stream
CROSS JOIN LATERAL (
    SELECT e.event_id, e.version, e.event_type, e.schema_version, e.payload
    FROM events e
    WHERE e.stream_key = stream.stream_key
      AND e.version BETWEEN $4 AND $5
    ORDER BY e.version
    OFFSET 0
) l
";

/// The version of one stream, in one round trip that scopes itself to the tenant.
pub(crate) const STREAM_VERSION_SCOPED: &str =
    "SELECT eventsource_stream_version($1, $2, $3) AS version";

/// The global log after a position, every tenant. Only rows of transactions older than every
/// running transaction are read, in the same statement: that is what makes the log gap-free.
pub(crate) const READ_ALL: &str = concat!(
    "SELECT ",
    event_columns!(),
    r"
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
ORDER BY events.transaction_id, events.global_position
LIMIT $4
"
);

/// The global log after a position, one tenant.
pub(crate) const READ_ALL_TENANT: &str = concat!(
    "SELECT ",
    event_columns!(),
    r"
FROM events
WHERE tenant_id = $5
  AND (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
ORDER BY events.transaction_id, events.global_position
LIMIT $4
"
);

/// The global log after a position, one shard of the tenants: those whose
/// `eventsource_tenant_hash` (`migrations/0013_tenant_shards.sql`, FNV-1a as `shard_of`) modulo
/// `$6` is `$5`. The hash sits in a LATERAL subquery keyed on `tenant_id` so that the planner
/// memoizes it: one call per tenant of the page instead of one per row scanned. The scan
/// still walks the other shards' rows in log order (index only where they are skipped), but
/// none of them is sent or decoded.
pub(crate) const READ_ALL_SHARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    r"
FROM events
CROSS JOIN LATERAL (
    SELECT eventsource_tenant_hash(events.tenant_id) % $6::int8 AS shard OFFSET 0
) AS s
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
  AND s.shard = $5::int8
ORDER BY events.transaction_id, events.global_position
LIMIT $4
"
);

/// The last position of the log readers can see: the end of `READ_ALL` with no filter (a
/// backward scan of the primary key). The `ORDER BY` names the table's columns: unqualified,
/// it sorted the text output column, and transaction 9999 came after 18834.
pub(crate) const LOG_HEAD: &str = r"
SELECT transaction_id::text, global_position
FROM events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.transaction_id DESC, events.global_position DESC
LIMIT 1
";

/// How many events `READ_ALL` would return from a position, every tenant: an index-only count
/// over the log order (the primary key), with the same gap-free horizon and date filter.
pub(crate) const COUNT_AFTER: &str = r"
SELECT count(*)
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
";

/// As [`COUNT_AFTER`], for one tenant (the tenant log index).
pub(crate) const COUNT_AFTER_TENANT: &str = r"
SELECT count(*)
FROM events
WHERE tenant_id = $4
  AND (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
";

/// As [`COUNT_AFTER`], for one shard of the tenants (as [`READ_ALL_SHARD`]).
pub(crate) const COUNT_AFTER_SHARD: &str = r"
SELECT count(*)
FROM events
CROSS JOIN LATERAL (
    SELECT eventsource_tenant_hash(events.tenant_id) % $5::int8 AS shard OFFSET 0
) AS s
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
  AND s.shard = $4::int8
";

/// A tenant's events carrying one correlation id, in log order.
pub(crate) const READ_BY_CORRELATION: &str = concat!(
    "SELECT ",
    event_columns!(),
    r"
FROM events
WHERE tenant_id = $1 AND correlation_id = $2
ORDER BY events.transaction_id, events.global_position
"
);

/// The snapshot of a stream at one schema version, in one round trip that scopes itself to the
/// tenant (`eventsource_load_snapshot`, `migrations/0002_snapshots.sql`).
pub(crate) const LOAD_SNAPSHOT: &str = r"
SELECT version, state, taken_at FROM eventsource_load_snapshot($1, $2, $3, $4)
";

/// Monotonic snapshot upsert: an older snapshot never replaces a newer one.
pub(crate) const SAVE_SNAPSHOT: &str = r"
INSERT INTO snapshots AS s (tenant_id, aggregate_type, aggregate_id, schema_version, version, state, taken_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, aggregate_type, aggregate_id, schema_version)
DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, taken_at = EXCLUDED.taken_at
WHERE s.version < EXCLUDED.version
";

/// A named checkpoint.
pub(crate) const LOAD_CHECKPOINT: &str = r"
SELECT transaction_id::text AS transaction_id, global_position FROM checkpoints WHERE name = $1
";

/// Creates a checkpoint that must not exist yet; no row back means it exists.
pub(crate) const CREATE_CHECKPOINT: &str = r"
INSERT INTO checkpoints (name, transaction_id, global_position)
VALUES ($1, $2::text::xid8, $3)
ON CONFLICT (name) DO NOTHING
RETURNING 1 AS moved
";

/// Moves a checkpoint from the expected position; no row back means it moved elsewhere.
pub(crate) const MOVE_CHECKPOINT: &str = r"
UPDATE checkpoints
SET transaction_id = $2::text::xid8, global_position = $3, updated_at = now()
WHERE name = $1 AND transaction_id = $4::text::xid8 AND global_position = $5
RETURNING 1 AS moved
";

/// Takes the lease `$1` for holder `$2` for `$3` milliseconds, when it is free, expired, or
/// already the holder's (a restarted instance under the same id); every taking counts the
/// token up, which fences whoever held it before. No row back: another holder has it.
pub(crate) const ACQUIRE_LEASE: &str = r"
INSERT INTO leases AS l (name, holder, token, acquired_at, expires_at)
VALUES ($1, $2, 1, clock_timestamp(), clock_timestamp() + $3::float8 * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, token = l.token + 1, acquired_at = EXCLUDED.acquired_at,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= clock_timestamp() OR l.holder = EXCLUDED.holder
RETURNING token
";

/// Who holds the lease `$1`, and until when.
pub(crate) const LEASE_HOLDER: &str = r"
SELECT holder, expires_at FROM leases WHERE name = $1
";

/// Extends the lease `$1` by `$3` milliseconds from now if it still carries token `$2`; no row
/// back means it was taken over. In a transaction, the row stays locked until it ends, so a
/// takeover waits for it and then finds the lease renewed.
pub(crate) const RENEW_LEASE: &str = r"
UPDATE leases SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond'
WHERE name = $1 AND token = $2
RETURNING 1 AS renewed
";

/// Lets the lease `$1` go at once if it still carries token `$2`.
pub(crate) const RELEASE_LEASE: &str = r"
UPDATE leases SET expires_at = clock_timestamp() WHERE name = $1 AND token = $2
";

/// Records that projection `$1` applied the event at `($2, $3)`; no row back means it had.
pub(crate) const RECORD_APPLIED: &str = r"
INSERT INTO applied_positions (projection, transaction_id, global_position)
VALUES ($1, $2::text::xid8, $3)
ON CONFLICT DO NOTHING
RETURNING 1 AS recorded
";

/// Forgets the positions projection `$1` applied below `($2, $3)`.
pub(crate) const PRUNE_APPLIED: &str = r"
DELETE FROM applied_positions
WHERE projection = $1 AND (transaction_id, global_position) < ($2::text::xid8, $3)
";

/// The session holding the oldest open write transaction: it holds back every log reader.
pub(crate) const LOG_BLOCKER: &str = r"
SELECT pid, backend_xid::text AS transaction_id, age(backend_xid) AS age, xact_start,
       state, application_name, datname::text AS database
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL
ORDER BY age(backend_xid) DESC
LIMIT 1
";

/// The newest stored transaction id and the cluster's next one.
pub(crate) const TRANSACTION_IDS: &str = r"
SELECT (SELECT transaction_id FROM events ORDER BY transaction_id DESC LIMIT 1)::text AS stored,
       pg_snapshot_xmax(pg_current_snapshot())::text AS next
";

/// A round trip that proves the database answers.
pub(crate) const HEALTH_CHECK: &str = "SELECT 1";

/// [`APPEND_BATCH`] inside a caller's transaction, as the CTEs a saga step's save follows.
const APPEND_IN_TX: &str = append_in_tx!();
const APPEND_ONE_IN_TX: &str = append_one_in_tx!();

mod generation;
mod saga;

pub(crate) use generation::*;
pub(crate) use saga::*;
