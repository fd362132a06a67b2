//! Saga statements (migration 0009): instances, their records of handled events, deadlines.

use std::sync::LazyLock;

use super::{APPEND_IN_TX, APPEND_ONE_IN_TX};

/// The body of the saga loads: the instance's state, and whether it handled the event `$4` at
/// log position `($5, $6)` (recorded, or at or below the floor its record was pruned to).
macro_rules! load_saga {
    () => {
        r"
SELECT s.state, s.state_version, s.version,
       s.last_transaction_id::text AS last_transaction_id, s.last_position, s.deadline_at,
       (EXISTS (SELECT 1 FROM saga_handled h
                WHERE h.tenant_id = $1 AND h.saga = $2 AND h.instance = $3 AND h.event_id = $4)
        OR (s.floor_position IS NOT NULL
            AND ($5::text::xid8, $6::int8) <= (s.floor_transaction_id, s.floor_position)))
           AS handled
FROM saga_instances s
WHERE s.tenant_id = $1 AND s.saga = $2 AND s.instance = $3
"
    };
}

/// A saga instance's state and whether it handled an event.
pub(crate) const LOAD_SAGA: &str = load_saga!();

/// As [`LOAD_SAGA`], locking the instance's row until the transaction ends.
pub(crate) const LOAD_SAGA_LOCKED: &str = concat!(load_saga!(), "FOR UPDATE OF s");

/// The save of a saga step, as the CTEs and answer of one statement (the caller writes `WITH`
/// and any CTEs before them): `$create` (in `INSERT ... SELECT`) and `$move` (after the
/// `UPDATE`'s conditions) the guard on them, `$answer` the select list over `recorded`, the
/// record of the event: one row when the state was saved and the event recorded.
macro_rules! save_saga {
    (create, $guard:expr, $answer:expr) => {
        concat!(
            r"
created AS (
    INSERT INTO saga_instances (tenant_id, saga, instance, state, state_version, version,
                                last_transaction_id, last_position, deadline_at)
    SELECT $1, $2, $3, $4::jsonb, $5::int4, $6::int8, $7::text::xid8, $8::int8, $9::timestamptz
    ",
            $guard,
            r"
    ON CONFLICT (tenant_id, saga, instance) DO NOTHING
    RETURNING 1
), recorded AS (
    INSERT INTO saga_handled (tenant_id, saga, instance, event_id, transaction_id, global_position)
    SELECT $1, $2, $3, $10, $11::text::xid8, $12 FROM created
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT ",
            $answer
        )
    };
    (move, $guard:expr, $answer:expr) => {
        concat!(
            r"
moved AS (
    UPDATE saga_instances s
    SET state = $4, state_version = $5, version = $6,
        last_transaction_id = $7::text::xid8, last_position = $8,
        deadline_fired = s.deadline_fired AND s.deadline_at IS NOT DISTINCT FROM $9,
        deadline_at = $9, updated_at = now()
    WHERE s.tenant_id = $1 AND s.saga = $2 AND s.instance = $3 AND s.version = $13
      AND NOT EXISTS (SELECT 1 FROM saga_handled h
                      WHERE h.tenant_id = $1 AND h.saga = $2 AND h.instance = $3
                        AND h.event_id = $10)
      AND (s.floor_position IS NULL
           OR ($11::text::xid8, $12::int8) > (s.floor_transaction_id, s.floor_position))
      ",
            $guard,
            r"
    RETURNING 1
), recorded AS (
    INSERT INTO saga_handled (tenant_id, saga, instance, event_id, transaction_id, global_position)
    SELECT $1, $2, $3, $10, $11::text::xid8, $12 FROM moved
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT ",
            $answer
        )
    };
}

/// Creates an instance and records its first event; `0` when the instance exists.
pub(crate) const CREATE_SAGA: &str =
    concat!("WITH ", save_saga!(create, "", "count(*) FROM recorded"));

/// Moves an instance from version `$13` and records the event `$10`, unless the version moved
/// or the event counts as handled already; `0` then, and nothing written. The fired mark of
/// the deadline survives only if the deadline stays the same.
pub(crate) const MOVE_SAGA: &str = concat!("WITH ", save_saga!(move, "", "count(*) FROM recorded"));

/// What the append-and-save statements answer: the append's outcome row, as [`APPEND`](super::APPEND)'s, and
/// `recorded`, as [`CREATE_SAGA`] and [`MOVE_SAGA`] count.
macro_rules! appended_answer {
    () => {
        r"a.version, a.transaction_id, a.first_position, a.last_position,
       (SELECT count(*) FROM recorded) AS recorded
FROM appended a
"
    };
}

/// [`CREATE_SAGA`] after the step's append (its parameters `$13`..`$23` after the shared
/// tenant `$1`), in one statement: see [`after_append`].
pub(crate) static APPEND_AND_CREATE_SAGA: LazyLock<String> = LazyLock::new(|| {
    after_append(
        APPEND_IN_TX,
        13,
        save_saga!(
            create,
            "FROM appended WHERE appended.version IS NOT NULL",
            appended_answer!()
        ),
    )
});

/// [`MOVE_SAGA`] after the step's append (its parameters `$14`..`$24` after the shared tenant
/// `$1`), in one statement: see [`after_append`].
pub(crate) static APPEND_AND_MOVE_SAGA: LazyLock<String> = LazyLock::new(|| {
    after_append(
        APPEND_IN_TX,
        14,
        save_saga!(
            move,
            "AND EXISTS (SELECT 1 FROM appended WHERE appended.version IS NOT NULL)",
            appended_answer!()
        ),
    )
});

/// [`APPEND_AND_CREATE_SAGA`] for one event, its columns as scalars (`append_one_in_tx!`).
pub(crate) static APPEND_ONE_AND_CREATE_SAGA: LazyLock<String> = LazyLock::new(|| {
    after_append(
        APPEND_ONE_IN_TX,
        13,
        save_saga!(
            create,
            "FROM appended WHERE appended.version IS NOT NULL",
            appended_answer!()
        ),
    )
});

/// [`APPEND_AND_MOVE_SAGA`] for one event, its columns as scalars (`append_one_in_tx!`).
pub(crate) static APPEND_ONE_AND_MOVE_SAGA: LazyLock<String> = LazyLock::new(|| {
    after_append(
        APPEND_ONE_IN_TX,
        14,
        save_saga!(
            move,
            "AND EXISTS (SELECT 1 FROM appended WHERE appended.version IS NOT NULL)",
            appended_answer!()
        ),
    )
});

/// A step's one append, inside the caller's transaction and tenant (the stream's tenant being
/// the saga's `$1`, see `append_in_tx!`), then `save`, which runs only if the append wrote: an
/// append the guard let nothing through leaves the state unsaved, and the caller resolves it as
/// after [`APPEND`](super::APPEND). The append's own parameters after the tenant (`$2`..`$12` of
/// [`APPEND_BATCH`](super::APPEND_BATCH)) are renumbered to start at `$first`, after the save's, so the save binds
/// first and the append's arguments follow it as for the standalone statements.
fn after_append(append: &str, first: usize, save: &str) -> String {
    format!("WITH {}{save}", renumber(append, first))
}

/// `sql` with each parameter `$n` for `n >= 2` renumbered to `$(n - 2 + first)`; `$1` kept.
/// The statements renumbered hold no dollar quotes.
fn renumber(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) if n >= 2 => out.push_str(&(n - 2 + first).to_string()),
            _ => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The body of the due-deadline queries: deadlines due at `$1` not fired yet, earliest first,
/// at most `$2`, of the tenant `$3` (every tenant when NULL).
macro_rules! due_deadlines {
    () => {
        r"
SELECT tenant_id, saga, instance, deadline_at
FROM saga_instances
WHERE deadline_at IS NOT NULL AND NOT deadline_fired AND deadline_at <= $1
  AND ($3::text IS NULL OR tenant_id = $3)
ORDER BY deadline_at
LIMIT $2
"
    };
}

/// Due deadlines, as listed by `SagaStore::due`.
pub(crate) const DUE_DEADLINES: &str = due_deadlines!();

/// Due deadlines, locked for firing; rows another runner holds are skipped.
pub(crate) const CLAIM_DEADLINES: &str = concat!(due_deadlines!(), "FOR UPDATE SKIP LOCKED");

/// Marks a deadline fired if it is still the instance's pending one.
pub(crate) const MARK_FIRED: &str = r"
UPDATE saga_instances SET deadline_fired = true, updated_at = now()
WHERE tenant_id = $1 AND saga = $2 AND instance = $3 AND deadline_at = $4 AND NOT deadline_fired
RETURNING 1
";

/// Deletes a saga's records at or below a log position and raises its instances' floors to it.
/// `global_position > 0` (true of every record) keeps the partial pruning index usable here;
/// the deduplication look-up, which never states it, cannot use that index (migration 0012).
pub(crate) const PRUNE_HANDLED: &str = r"
WITH pruned AS (
    DELETE FROM saga_handled
    WHERE tenant_id = $1 AND saga = $2 AND global_position > 0
      AND (transaction_id, global_position) <= ($3::text::xid8, $4::int8)
    RETURNING 1
), floored AS (
    UPDATE saga_instances
    SET floor_transaction_id = $3::text::xid8, floor_position = $4
    WHERE tenant_id = $1 AND saga = $2
      AND (floor_position IS NULL
           OR (floor_transaction_id, floor_position) < ($3::text::xid8, $4::int8))
    RETURNING 1
)
SELECT count(*) FROM pruned
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_moves_every_parameter_but_the_tenant() {
        assert_eq!(
            renumber("$1, $2, $12::uuid[], $10 = $1, 'x$'", 14),
            "$1, $14, $24::uuid[], $22 = $1, 'x$'"
        );
    }

    #[test]
    fn the_fused_statements_take_the_append_after_the_save() {
        for (sql, last) in [(&*APPEND_AND_CREATE_SAGA, 23), (&*APPEND_AND_MOVE_SAGA, 24)] {
            assert!(sql.contains(&format!("${last}::uuid[]")), "{sql}");
            assert!(!sql.contains(&format!("${}", last + 1)), "{sql}");
            assert!(!sql.contains("eventsource_append"), "{sql}");
        }
        for (sql, last) in [
            (&*APPEND_ONE_AND_CREATE_SAGA, 23),
            (&*APPEND_ONE_AND_MOVE_SAGA, 24),
        ] {
            assert!(sql.contains(&format!("${last}::uuid")), "{sql}");
            assert!(!sql.contains(&format!("${}", last + 1)), "{sql}");
            assert!(!sql.contains("[]"), "{sql}");
        }
    }
}
