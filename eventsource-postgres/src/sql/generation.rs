//! Projection generations (migrations 0010, 0011) and parallel rebuilds: serving, building,
//! cutover, retirement, and the shards of a rebuild.

/// The serving generation of projection `$1`, locked FOR SHARE until the transaction ends (a
/// cutover waits for it), and the transaction's `search_path` before it is set to the
/// generation's schema alone, so the projection's unqualified statements write to it and a
/// table missing there is an error, never a table (or a reader's view) of `public`. The old
/// path is read in a subquery kept apart (`OFFSET 0`), so before the change, and is put back
/// with [`RESTORE_PATH`] for the bookkeeping. No row: the projection has no generations (its
/// tables are wherever its statements name them).
pub(crate) const ENTER_SERVING_GENERATION: &str = r"
SELECT g.generation, o.outer_path,
       set_config('search_path', quote_ident(g.schema_name), true) AS path
FROM projection_generations g,
     (SELECT current_setting('search_path') AS outer_path OFFSET 0) o
WHERE g.projection = $1 AND g.state = 'serving'
FOR SHARE OF g
";

/// The serving generation of projection `$1`, if any.
pub(crate) const SERVING_GENERATION: &str = r"
SELECT generation FROM projection_generations WHERE projection = $1 AND state = 'serving'
";

/// Sets the transaction's `search_path` to the schema `$1` alone (never `public` after it: a
/// table a projection forgot to create must not resolve to one there); returns the path before
/// (read first, see [`ENTER_SERVING_GENERATION`]).
pub(crate) const SET_GENERATION_PATH: &str = r"
SELECT o.outer_path, set_config('search_path', quote_ident($1), true)
FROM (SELECT current_setting('search_path') AS outer_path OFFSET 0) o
";

/// Puts the transaction's `search_path` back to `$1` (as [`SET_GENERATION_PATH`] returned it),
/// for the bookkeeping tables that live where the migrations put them.
pub(crate) const RESTORE_PATH: &str = r"
SELECT set_config('search_path', $1, true)
";

/// Locks every generation row of projection `$1` until the transaction ends (a cutover).
pub(crate) const LOCK_GENERATIONS: &str = r"
SELECT generation, state FROM projection_generations WHERE projection = $1 FOR UPDATE
";

/// The generation of projection `$1` being built, if any.
pub(crate) const BUILDING_GENERATION: &str = r"
SELECT generation, schema_name FROM projection_generations
WHERE projection = $1 AND state = 'building'
";

/// Creates the next generation of projection `$1`, building, in the schema `$2_g<n>`.
pub(crate) const CREATE_GENERATION: &str = r"
INSERT INTO projection_generations (projection, generation, schema_name, state)
SELECT $1, n, $2 || '_g' || n, 'building'
FROM (SELECT coalesce(max(generation), 0) + 1 AS n FROM projection_generations WHERE projection = $1) g
RETURNING generation, schema_name
";

/// Creates the schema `$1` unless it exists.
pub(crate) const CREATE_GENERATION_SCHEMA: &str = r"
SELECT eventsource_create_generation_schema($1)
";

/// Retires the serving generation of projection `$1`; its schema may be dropped after `$2`
/// milliseconds.
pub(crate) const RETIRE_GENERATION: &str = r"
UPDATE projection_generations
SET state = 'retired', retired_at = now(), drop_after = now() + $2::float8 * interval '1 millisecond'
WHERE projection = $1 AND state = 'serving'
";

/// Makes generation `$2` of projection `$1` serve, complete up to `($3, $4)`.
pub(crate) const SERVE_GENERATION: &str = r"
UPDATE projection_generations
SET state = 'serving', served_at = now(), cutover_transaction_id = $3::text::xid8,
    cutover_position = $4
WHERE projection = $1 AND generation = $2 AND state = 'building'
";

/// Points the views `$1.t` at `$2.t` for each table `t` of `$3`.
pub(crate) const POINT_GENERATION_VIEWS: &str = r"
SELECT eventsource_point_generation_views($1, $2, $3)
";

/// Retired generations of projection `$1` whose grace period is over.
pub(crate) const DUE_GENERATIONS: &str = r"
SELECT generation, schema_name FROM projection_generations
WHERE projection = $1 AND state = 'retired' AND drop_after <= now()
ORDER BY generation
FOR UPDATE SKIP LOCKED
";

/// Drops the schema `$1` and what it holds.
pub(crate) const DROP_GENERATION_SCHEMA: &str = r"
SELECT eventsource_drop_generation_schema($1)
";

/// Records that generation `$2` of projection `$1` was dropped.
pub(crate) const MARK_GENERATION_DROPPED: &str = r"
UPDATE projection_generations SET state = 'dropped' WHERE projection = $1 AND generation = $2
";

/// Forgets the checkpoint `$1`.
pub(crate) const DELETE_CHECKPOINT: &str = r"
DELETE FROM checkpoints WHERE name = $1
";

/// How many events of the log come after `($1, $2)`, of tenant `$3` (any if null), recorded at
/// or after `$4` (any if null).
pub(crate) const COUNT_LOG_AFTER: &str = r"
SELECT count(*) FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
  AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::timestamptz IS NULL OR recorded_at >= $4)
";

/// Sets the transaction's `lock_timeout` to `$1` (such as `2000ms`).
pub(crate) const SET_LOCK_TIMEOUT: &str = r"
SELECT set_config('lock_timeout', $1, true)
";

/// The serving generation of projection `$1` and its schema, locked FOR UPDATE until the
/// transaction ends: live batches (FOR SHARE) and cutovers wait for it (a tenant's swap).
pub(crate) const LOCK_SERVING_GENERATION: &str = r"
SELECT generation, schema_name FROM projection_generations
WHERE projection = $1 AND state = 'serving'
FOR UPDATE
";

/// Copies the rows of the tables `$3` from schema `$1` into schema `$2`; returns how many.
pub(crate) const COPY_GENERATION_ROWS: &str = r"
SELECT eventsource_copy_generation_rows($1, $2, $3)
";

/// As [`READ_ALL`](super::READ_ALL), of tenant `$5` (any if null), only the streams of shard `$7` of `$6`
/// (`stream_key % $6 = $7`): a parallel rebuild's worker.
pub(crate) const READ_SHARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    r"
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::timestamptz IS NULL OR recorded_at >= $3)
  AND ($5::text IS NULL OR tenant_id = $5)
  AND stream_key % $6 = $7
ORDER BY events.transaction_id, events.global_position
LIMIT $4
"
);

/// The checkpoints whose names start with `$1` (a parallel rebuild's shards).
pub(crate) const CHECKPOINTS_STARTING_WITH: &str = r"
SELECT name FROM checkpoints WHERE starts_with(name, $1)
";
