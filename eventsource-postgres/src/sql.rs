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

/// Appends a batch in its own autocommit transaction, in one round trip, scoped to the stream's
/// tenant (`eventsource_append_pooled`, `migrations/0005_pooled_appends.sql`). As [`APPEND`],
/// except that a stored id fails the statement with a unique violation of
/// `events_event_id_key` instead of a pre-check on every append.
pub(crate) const APPEND_POOLED: &str = r"
SELECT version, transaction_id, first_position, last_position
FROM eventsource_append_pooled($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
";

/// Several appends to distinct streams in one transaction and round trip (group commit): one
/// row per append, `n` numbering them from 1 (`eventsource_append_many`, `0005`).
pub(crate) const APPEND_MANY: &str = r"
SELECT n, version, transaction_id, first_position, last_position
FROM eventsource_append_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
";

/// Where the ids of a batch are stored, for telling an idempotent retry from a reused id.
pub(crate) const STORED_IDS: &str = r"
SELECT event_id, tenant_id, aggregate_type, aggregate_id, version,
       transaction_id::text AS transaction_id, global_position
FROM events
WHERE event_id = ANY($1::uuid[])
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
