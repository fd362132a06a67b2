//! The raw engine: hand-written sqlx on a table of its own, doing the same durable work.

pub(crate) const RAW_SCHEMA: &[&str] = &[
    "CREATE TABLE raw_events (
        global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream text NOT NULL,
        version bigint NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        UNIQUE (stream, version))",
    "CREATE TABLE raw_snapshots (stream text PRIMARY KEY, version bigint NOT NULL, state jsonb NOT NULL)",
];
pub(crate) const RAW_INSERT: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
                          VALUES ($1, $2, $3, 'Incremented', $4)";
pub(crate) const RAW_INSERT_BATCH: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
     SELECT $1, v, id, 'Incremented', p FROM UNNEST($2::int8[], $3::uuid[], $4::jsonb[]) AS b(v, id, p)";
pub(crate) const RAW_LOAD: &str =
    "SELECT version, payload FROM raw_events WHERE stream = $1 ORDER BY version";
pub(crate) const RAW_LOAD_AFTER: &str =
    "SELECT version, payload FROM raw_events WHERE stream = $1 AND version > $2 ORDER BY version";
pub(crate) const RAW_SNAPSHOT: &str = "SELECT version, state FROM raw_snapshots WHERE stream = $1";
pub(crate) const RAW_LOG_PAGE: &str = "SELECT global_position, transaction_id::text, tenant_id, aggregate_type, \
     aggregate_id, version, event_id, event_type, schema_version, recorded_at, metadata, payload \
     FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
     ORDER BY events.transaction_id, events.global_position LIMIT $3";
/// One event of a named type (the command-shape and load scenarios).
pub(crate) const RAW_INSERT_TYPED: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
     VALUES ($1, $2, $3, $4, $5)";
pub(crate) const RAW_INSERT_TYPED_BATCH: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
     SELECT $1, v, id, t, p FROM UNNEST($2::int8[], $3::uuid[], $4::text[], $5::jsonb[]) AS b(v, id, t, p)";
/// A stream with its event types, as an account's fold needs it.
pub(crate) const RAW_LOAD_TYPED: &str =
    "SELECT version, event_type, payload FROM raw_events WHERE stream = $1 ORDER BY version";
