//! The saga store's look-up "did this instance handle that event" reads one index entry, on
//! any table, including one without statistics (new, or not yet analysed): it must never be
//! planned on the pruning index, which shares the primary key's leading columns (tenant, saga)
//! and would read every record of the saga on every step (migration 0012, ADR 0028).
//!
//! A step's append, fused with the save (`PgSagaHandler`), probes the ids it is about to store
//! by their unique index in every plan too: never by a scan of the log (ADR 0030).
//!
//! Saga transactions read `saga_instances` by key even when its statistics were taken while it
//! was small (a new database; a hot table of warm instances that updates bloat between two
//! vacuums): they run with sequential scans off (ADR 0037).
//!
//! The test runs the store on one connection whose `saga_instances` and `saga_handled` are
//! temporary copies (a temporary table comes first in the search path), so their planner sees
//! no statistics, as on a fresh database; it then asks PostgreSQL for the generic plan of every
//! statement the store prepared on them.

mod support;

use eventsource_core::{
    EventHandler as _, EventId, HandledEvent, LogPosition, SagaKey, SagaState, SagaStore,
};
use eventsource_postgres::{PgSagaHandler, PgSagaStore};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgConnection, Row as _};

use support::saga::stepper::{Stepper, World};

/// The records already in the copy: the look-up then has a saga's worth of rows to avoid.
const RECORDS: i64 = 2_000;

/// Every index (or `Seq Scan`) the plan reads `relation` with (inserts are not reads).
fn scans_of(relation: &str, plan: &Value, found: &mut Vec<String>) {
    let node = plan.get("Node Type").and_then(Value::as_str).unwrap_or("?");
    if plan.get("Relation Name").and_then(Value::as_str) == Some(relation) && node.ends_with("Scan")
    {
        if node == "Bitmap Heap Scan" {
            // The indexes are named by the bitmap scans under it.
            bitmap_indexes(plan, found);
        } else {
            let index = plan.get("Index Name").and_then(Value::as_str);
            found.push(index.unwrap_or(node).to_owned());
        }
    }
    for child in plan
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        scans_of(relation, child, found);
    }
}

/// The indexes of the `Bitmap Index Scan`s under a bitmap heap scan.
fn bitmap_indexes(plan: &Value, found: &mut Vec<String>) {
    for child in plan
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(index) = child.get("Index Name").and_then(Value::as_str) {
            found.push(index.to_owned());
        }
        bitmap_indexes(child, found);
    }
}

/// The generic plans of the store's prepared statements on `saga_handled`: (statement, scans
/// of `saga_handled`).
async fn generic_plans(conn: &mut PgConnection) -> Vec<(String, Vec<String>)> {
    generic_plans_of(conn, "saga_handled").await
}

/// The generic plans of the prepared statements that name `relation`: (statement, scans of it).
async fn generic_plans_of(conn: &mut PgConnection, relation: &str) -> Vec<(String, Vec<String>)> {
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("generic plans");
    let prepared = sqlx::query(
        "SELECT name, statement, cardinality(parameter_types) AS parameters
         FROM pg_prepared_statements
         WHERE strpos(statement, $1) > 0 AND cardinality(parameter_types) > 0
           AND statement NOT LIKE '%pg_prepared%'",
    )
    .bind(relation)
    .fetch_all(&mut *conn)
    .await
    .expect("the prepared statements");
    let mut plans = Vec::new();
    for row in prepared {
        let (name, statement): (String, String) = (row.get("name"), row.get("statement"));
        let parameters: i32 = row.get("parameters");
        let nulls = vec!["NULL"; usize::try_from(parameters).expect("a count")].join(", ");
        // The name is one PostgreSQL reported (sqlx's own), the arguments literal NULLs.
        let explain = format!("EXPLAIN (FORMAT JSON) EXECUTE {name}({nulls})");
        let explain: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(&mut *conn)
            .await
            .expect("the generic plan");
        let mut scans = Vec::new();
        scans_of(relation, &explain[0]["Plan"], &mut scans);
        plans.push((statement, scans));
    }
    plans
}

/// Sequential and index scans of this session's temporary `table` so far (the session's
/// pending counters flushed first).
async fn scans(conn: &mut PgConnection, table: &str) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("a flush of the counters");
    sqlx::query_as(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_all_tables
         WHERE relid = to_regclass('pg_temp.' || $1)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .expect("the table's counters")
}

/// Makes this session's `saga_instances` a temporary copy holding a few instances of another
/// tenant, analysed: its statistics say one page, so a plan that may scan it does.
const SMALL_INSTANCES: &str = "
    CREATE TEMP TABLE saga_instances (LIKE public.saga_instances INCLUDING ALL);
    INSERT INTO saga_instances (tenant_id, saga, instance, state, state_version, version,
                                last_transaction_id, last_position)
    SELECT 'saga-plans-other', 'shipping', 'order-' || n, '{}', 1, 1, '1', n
    FROM generate_series(1, 3) AS n;
    ANALYZE saga_instances";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_transactions_read_instances_by_key_on_a_table_analysed_small() {
    let Some(pool) = support::pool_with(1).await else {
        return;
    };
    let mut conn = pool.acquire().await.expect("the connection");
    conn.execute(SMALL_INSTANCES).await.expect("the copy");
    conn.execute("CREATE TEMP TABLE saga_handled (LIKE public.saga_handled INCLUDING ALL)")
        .await
        .expect("the records' copy");
    let before = scans(&mut conn, "saga_instances").await;
    drop(conn);

    // Loads and saves of warm instances, more than the plan cache's five custom plans each.
    let tenant = support::tenant("saga-plans-keyed");
    let store = PgSagaStore::new(pool.clone());
    for step in 1..=8_u64 {
        for instance in ["order-1", "order-2"] {
            let key = SagaKey::new(tenant.clone(), "shipping", instance);
            let event = HandledEvent::new(EventId::new(), LogPosition::new(6, step));
            let loaded = store.load_for(&key, &event).await.expect("load");
            assert!(!loaded.handled, "a new event counts as handled");
            let state = SagaState::new(json!({ "step": step }), 1, step, event.position());
            store
                .save(&key, step - 1, state, event)
                .await
                .expect("save");
        }
    }
    let mut conn = pool.acquire().await.expect("the connection");
    let after = scans(&mut conn, "saga_instances").await;
    assert_eq!(after.0, before.0, "the saga store scanned its instances");
    assert!(after.1 > before.1 + 16, "no index scans counted: {after:?}");

    // The control: the same look-up in a transaction of the default settings scans the table.
    let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    sqlx::query(
        "SELECT state FROM saga_instances WHERE tenant_id = $1 AND saga = $2 AND instance = $3",
    )
    .bind(tenant.as_str())
    .bind("shipping")
    .bind("order-1")
    .fetch_optional(&mut *tx)
    .await
    .expect("the control's look-up");
    tx.commit().await.expect("commit");
    let control = scans(&mut conn, "saga_instances").await;
    assert!(
        control.0 > after.0,
        "the control no longer shows the hazard: {control:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_steps_read_their_instance_by_key_on_a_table_analysed_small() {
    // The handler's one connection holds the small copies; its decider loads the streams it
    // appends to through a pool of its own (it runs while the step's transaction is open).
    let Some(saga_pool) = support::pool_with(1).await else {
        return;
    };
    let decider_pool = support::pool_with(2).await.expect("the decider's pool");
    let mut conn = saga_pool.acquire().await.expect("the connection");
    conn.execute(SMALL_INSTANCES).await.expect("the copy");
    conn.execute("CREATE TEMP TABLE saga_handled (LIKE public.saga_handled INCLUDING ALL)")
        .await
        .expect("the records' copy");
    let before = scans(&mut conn, "saga_instances").await;
    drop(conn);

    // One instance through eight steps: created by the first, moved by the others, each step
    // appending one event (the fused one-event statements).
    let world = World::on(decider_pool, support::tenant("saga-plans-handler"));
    let probe = world.probe();
    let handler = PgSagaHandler::new(saga_pool.clone(), Stepper, probe.clone());
    for step in 1..=8_u64 {
        let event = world.step(&format!("s{step}"), step, &[&format!("bin-{step}")]);
        handler.handle(&event).await.expect("a step");
    }
    assert_eq!(probe.calls(), 8, "every step appended");
    let mut conn = saga_pool.acquire().await.expect("the connection");
    let after = scans(&mut conn, "saga_instances").await;
    assert_eq!(after.0, before.0, "the handler scanned its instances");
    assert!(
        after.1 >= before.1 + 15,
        "no index scans counted: {after:?}"
    );
    // After the count: this look-up by part of the key scans.
    let version: i64 = sqlx::query_scalar(
        "SELECT version FROM pg_temp.saga_instances WHERE tenant_id = $1 AND instance = 'i-1'",
    )
    .bind(world.tenant.as_str())
    .fetch_one(&mut *conn)
    .await
    .expect("the instance");
    assert_eq!(version, 8, "the instance moved through every step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handled_lookup_reads_the_primary_key_and_pruning_the_log_index() {
    // One connection: the store's statements are prepared on the session that holds the copies.
    let Some(pool) = support::pool_with(1).await else {
        return;
    };
    let mut conn = pool.acquire().await.expect("the connection");
    for copy in [
        "CREATE TEMP TABLE saga_instances (LIKE public.saga_instances INCLUDING ALL)",
        "CREATE TEMP TABLE saga_handled (LIKE public.saga_handled INCLUDING ALL)",
    ] {
        sqlx::query(copy).execute(&mut *conn).await.expect("a copy");
    }
    let tenant = support::tenant("saga-plans");
    sqlx::query(
        "INSERT INTO saga_handled (tenant_id, saga, instance, event_id, transaction_id,
                                   global_position)
         SELECT $1, 'shipping', 'order-' || (n % 50), gen_random_uuid(), '5'::xid8, n
         FROM generate_series(1, $2) AS n",
    )
    .bind(tenant.as_str())
    .bind(RECORDS)
    .execute(&mut *conn)
    .await
    .expect("the records");
    drop(conn);

    let store = PgSagaStore::new(pool.clone());
    let key = SagaKey::new(tenant.clone(), "shipping", "order-7");
    for step in 1..=3_u64 {
        let event = HandledEvent::new(
            EventId::new(),
            LogPosition::new(6, u64::try_from(RECORDS).expect("a count") + step),
        );
        let loaded = store.load_for(&key, &event).await.expect("load");
        assert!(!loaded.handled, "a new event counts as handled");
        let state = SagaState::new(json!({ "step": step }), 1, step, event.position());
        store
            .save(&key, step - 1, state, event)
            .await
            .expect("save");
    }
    let pruned = store
        .prune_handled(&tenant, "shipping", LogPosition::new(5, 10))
        .await
        .expect("prune");
    assert_eq!(pruned, 10);

    let mut conn = pool.acquire().await.expect("the connection");
    let plans = generic_plans(&mut conn).await;
    let lookups: Vec<_> = plans
        .iter()
        .filter(|(statement, _)| statement.contains("h.event_id ="))
        .collect();
    // The load and the move (the create guards nothing: a new instance handled nothing).
    assert!(lookups.len() >= 2, "the store's look-ups: {plans:#?}");
    for (statement, scans) in lookups {
        assert!(
            !scans.is_empty() && scans.iter().all(|scan| scan == "saga_handled_pkey"),
            "the look-up reads {scans:?}, not only the primary key:\n{statement}"
        );
    }
    // The control: with the pruning index as migration 0009 made it (not partial), the same
    // look-ups are planned on it, which is what the test exists to catch.
    for change in [
        "DROP INDEX pg_temp.saga_handled_tenant_id_saga_transaction_id_global_position_idx",
        "CREATE INDEX ON saga_handled (tenant_id, saga, transaction_id, global_position)",
    ] {
        sqlx::query(change)
            .execute(&mut *conn)
            .await
            .expect("the old index");
    }
    let old = generic_plans(&mut conn).await;
    assert!(
        old.iter()
            .filter(|(statement, _)| statement.contains("h.event_id ="))
            .any(|(_, scans)| scans.iter().any(|scan| scan != "saga_handled_pkey")),
        "the control no longer shows the hazard: {old:#?}"
    );

    // Pruning can still use its index: the predicate it states implies the partial index's (a
    // sequential scan is ruled out, as it wins on a table that holds one saga's records).
    for change in [
        "DROP INDEX pg_temp.saga_handled_tenant_id_saga_transaction_id_global_position_idx",
        "CREATE INDEX ON saga_handled (tenant_id, saga, transaction_id, global_position)
             WHERE global_position > 0",
        "ANALYZE saga_handled",
        "SET enable_seqscan = off",
    ] {
        sqlx::query(change)
            .execute(&mut *conn)
            .await
            .expect("the partial index again");
    }
    let plans = generic_plans(&mut conn).await;
    let (statement, scans) = plans
        .iter()
        .find(|(statement, _)| statement.contains("DELETE FROM saga_handled"))
        .expect("the prune's statement");
    assert!(
        !scans.is_empty() && scans.iter().all(|scan| scan.contains("global_position")),
        "pruning reads {scans:?}, not the pruning index:\n{statement}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_append_probes_stored_ids_by_their_unique_index_on_a_new_log() {
    // Migrated, then every connection of the store's own pool gets copies of the log's tables
    // without statistics. Each step fills a bin of its own: the bin's stream is loaded on
    // whichever connection is free, and a temporary table is seen by its session only.
    let Some(migrated) = support::pool_with(1).await else {
        return;
    };
    migrated.close().await;
    let server = support::server().expect("the server");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "CREATE TEMP TABLE events (LIKE public.events INCLUDING ALL);
                     CREATE TEMP TABLE streams (LIKE public.streams INCLUDING ALL)",
                )
                .await
                .map(|_| ())
            })
        })
        .connect_with(server.database(&support::test_database()))
        .await
        .expect("the pool");
    let world = World::on(pool.clone(), support::tenant("saga-plans-append"));
    let probe = world.probe();
    let handler = world.handler(&probe);
    for step in 1..=3_u64 {
        let event = world.step(&format!("s{step}"), step, &[&format!("bin-{step}")]);
        handler.handle(&event).await.expect("a step");
    }
    assert_eq!(probe.calls(), 3, "every step appended");

    let (mut first, mut second) = (
        pool.acquire().await.expect("a connection"),
        pool.acquire().await.expect("another connection"),
    );
    let mut plans = generic_plans_of(&mut first, "saga_handled").await;
    plans.extend(generic_plans_of(&mut second, "saga_handled").await);
    let mut appends = Vec::new();
    for (statement, _) in plans
        .iter()
        .filter(|(s, _)| s.contains("INSERT INTO events"))
    {
        for conn in [&mut first, &mut second] {
            appends.extend(
                generic_plans_of(conn, "events")
                    .await
                    .into_iter()
                    .filter(|(s, _)| s == statement),
            );
        }
    }
    assert!(!appends.is_empty(), "the fused appends: {plans:#?}");
    for (statement, scans) in appends {
        assert!(
            !scans.is_empty() && scans.iter().all(|scan| scan.contains("event_id")),
            "the stored-id probe reads {scans:?}, not only the unique index:\n{statement}"
        );
    }
    // The control: the probe as `event_id = ANY(..)` under `EXISTS` scans the log.
    first
        .execute(
            "PREPARE any_probe(uuid[]) AS SELECT EXISTS (SELECT 1 FROM events
                                                        WHERE event_id = ANY($1))",
        )
        .await
        .expect("the control");
    let control = generic_plans_of(&mut first, "events").await;
    let (_, scans) = control
        .iter()
        .find(|(s, _)| s.contains("ANY($1)"))
        .expect("the control's plan");
    assert!(
        scans.iter().any(|scan| scan == "Seq Scan"),
        "the control no longer shows the hazard: {scans:?}"
    );
}
