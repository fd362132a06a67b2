//! Durable sagas: `PgSagaHandler` steps and `PgDeadlineRunner` firing, against hand-written
//! sqlx doing the same transactions on tables of its own.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use chrono::Utc;
use eventsource_core::{
    EventHandler, EventId, LogPosition, Metadata, RecordedEvent, Repository, Saga, StreamId,
    TenantId, Version,
};
use eventsource_postgres::{PgDeadlineRunner, PgEventStore, PgSagaHandler};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::harness::{Table, compare_cpu};
use crate::model::Counter;

/// On each `OrderPlaced` event of its order: counts it, and asks for one shipment, a new
/// counter aggregate incremented once.
#[derive(Debug, Clone, Copy)]
struct Shipping;

#[derive(Debug, Default, Serialize, Deserialize)]
struct ShippingState {
    steps: u64,
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";
    type State = ShippingState;
    type Command = (String, u64);
    type Error = Infallible;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "OrderPlaced").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        state: &mut ShippingState,
        event: &RecordedEvent,
    ) -> Result<Vec<(String, u64)>, Infallible> {
        state.steps += 1;
        Ok(vec![(
            format!("{}-{}", event.stream.aggregate_id(), state.steps),
            1,
        )])
    }
}

/// The `i`-th `OrderPlaced` event of `order`, as delivered to the saga.
fn placed(tenant: &TenantId, order: &str, i: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: EventId::from_uuid(Uuid::now_v7()),
        stream: StreamId::new(tenant.clone(), "order", order),
        version: Version::new(i + 1),
        position: LogPosition::new(1, i + 1),
        event_type: "OrderPlaced".to_owned(),
        schema_version: 1,
        recorded_at: Utc::now(),
        metadata: Metadata::default(),
        payload: json!({ "sku": "sku-1", "qty": 1 }),
    }
}

/// The raw engine's tables for saga steps, with what the framework's guarantees need: a log
/// ordered by transaction (`transaction_id` first in its key, as `events`), unique event ids
/// and stream versions; instances keyed by tenant, saga and instance with an optimistic
/// version; and one record per handled event with its log position (and the index pruning by
/// position needs, partial like the framework's so the lookup by event cannot pick it).
const RAW_SAGA_SCHEMA: &[&str] = &[
    "CREATE TABLE raw_saga_events (global_position bigint GENERATED ALWAYS AS IDENTITY, \
     transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(), tenant_id text NOT NULL, \
     stream text NOT NULL, version bigint NOT NULL, event_id uuid NOT NULL UNIQUE, \
     event_type text NOT NULL, payload jsonb NOT NULL, metadata jsonb NOT NULL, \
     PRIMARY KEY (transaction_id, global_position), UNIQUE (tenant_id, stream, version))",
    "CREATE TABLE raw_saga (tenant_id text NOT NULL, saga text NOT NULL, instance text NOT NULL, \
     state jsonb NOT NULL, version bigint NOT NULL, last_transaction_id xid8 NOT NULL, \
     last_position bigint NOT NULL, PRIMARY KEY (tenant_id, saga, instance))",
    "CREATE TABLE raw_saga_handled (tenant_id text NOT NULL, saga text NOT NULL, \
     instance text NOT NULL, event_id uuid NOT NULL, transaction_id xid8 NOT NULL, \
     global_position bigint NOT NULL, PRIMARY KEY (tenant_id, saga, instance, event_id))",
    "CREATE INDEX raw_saga_handled_log_idx ON raw_saga_handled \
     (tenant_id, saga, transaction_id, global_position) WHERE global_position > 0",
    "CREATE TABLE raw_deadlines (instance text PRIMARY KEY, due_at timestamptz NOT NULL, \
     fired boolean NOT NULL DEFAULT false)",
    "CREATE INDEX raw_deadlines_due_idx ON raw_deadlines (due_at) WHERE NOT fired",
];
/// Begins the raw step's transaction scoped to the tenant, in one round trip, with sequential
/// scans off (as the framework's saga transactions): otherwise either side's plans read the
/// instances table by a sequential scan whenever its statistics were taken while it was small,
/// which made both sides' figures swing from run to run (ADR 0037).
const RAW_SAGA_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
     SELECT set_config('eventsource.tenant', 'bench', true), \
     set_config('enable_seqscan', 'off', true)";
/// The instance, locked, and whether it handled the event.
const RAW_SAGA_LOAD: &str = "SELECT s.state, s.version, EXISTS (SELECT 1 FROM raw_saga_handled h \
     WHERE h.tenant_id = $1 AND h.saga = 'shipping' AND h.instance = $2 AND h.event_id = $3) \
     FROM raw_saga s WHERE s.tenant_id = $1 AND s.saga = 'shipping' AND s.instance = $2 \
     FOR UPDATE";
/// The target stream, as the decider loads it.
const RAW_SAGA_STREAM: &str = "SELECT version, payload FROM raw_saga_events \
     WHERE tenant_id = $1 AND stream = $2 ORDER BY version";
/// Appends at the version loaded, unless the stream's previous event was written by a younger
/// transaction (it would then come before it in a log ordered by transaction): the stream
/// order the framework guards with `streams.last_xid`.
const RAW_SAGA_APPEND: &str = "INSERT INTO raw_saga_events \
     (tenant_id, stream, version, event_id, event_type, payload, metadata) \
     SELECT $1, $2, $3, $4, 'Incremented', $5, '{}' WHERE NOT EXISTS (SELECT 1 \
     FROM raw_saga_events p WHERE p.tenant_id = $1 AND p.stream = $2 AND p.version = $3 - 1 \
     AND p.transaction_id > pg_current_xact_id()) RETURNING global_position";
/// Saves the state at the expected version and records the event, in one statement.
const RAW_SAGA_SAVE: &str = "WITH s AS (INSERT INTO raw_saga AS r \
     (tenant_id, saga, instance, state, version, last_transaction_id, last_position) \
     VALUES ($1, 'shipping', $2, $4, 1, '1'::xid8, $6) ON CONFLICT (tenant_id, saga, instance) \
     DO UPDATE SET state = EXCLUDED.state, version = r.version + 1, \
     last_transaction_id = EXCLUDED.last_transaction_id, last_position = EXCLUDED.last_position \
     WHERE r.version = $5 RETURNING 1) \
     INSERT INTO raw_saga_handled SELECT $1, 'shipping', $2, $3, '1'::xid8, $6 FROM s \
     RETURNING 1";

/// The raw engine's saga step: begin scoped to the tenant, lock the instance and check the
/// event, load the target stream (on another connection, as the repository does), append its
/// event, save the state with the event recorded, commit.
async fn raw_step(pool: &PgPool, instance: &str, event_id: Uuid, position: i64) -> u64 {
    let tenant = "bench";
    let mut tx = pool.begin_with(RAW_SAGA_BEGIN).await.expect("begin");
    let row = sqlx::query(RAW_SAGA_LOAD)
        .bind(tenant)
        .bind(instance)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await
        .expect("raw saga load");
    let (mut state, version) = match &row {
        Some(row) => {
            assert!(!row.get::<bool, _>(2), "raw: event handled twice");
            let state: serde_json::Value = row.get(0);
            (
                serde_json::from_value::<ShippingState>(state).expect("state"),
                row.get::<i64, _>(1),
            )
        }
        None => (ShippingState::default(), 0),
    };
    state.steps += 1;
    let target = format!("raw-ship-{instance}-{}", state.steps);
    let rows = sqlx::query(RAW_SAGA_STREAM)
        .bind(tenant)
        .bind(&target)
        .fetch_all(pool)
        .await
        .expect("raw target load");
    let next = i64::try_from(rows.len()).expect("small") + 1;
    sqlx::query(RAW_SAGA_APPEND)
        .bind(tenant)
        .bind(&target)
        .bind(next)
        .bind(Uuid::now_v7())
        .bind(json!({ "by": 1 }))
        .fetch_one(&mut *tx)
        .await
        .expect("raw append");
    sqlx::query(RAW_SAGA_SAVE)
        .bind(tenant)
        .bind(instance)
        .bind(event_id)
        .bind(serde_json::to_value(&state).expect("state"))
        .bind(version)
        .bind(position)
        .fetch_one(&mut *tx)
        .await
        .expect("raw saga save");
    tx.commit().await.expect("commit");
    1
}

pub(crate) async fn sagas(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    for ddl in RAW_SAGA_SCHEMA.iter().copied() {
        sqlx::query(ddl)
            .execute(pool)
            .await
            .expect("raw saga schema");
    }
    // Warm instances (each task drives one instance through every step), then the shape of an
    // order flow: every step the first event of a new instance.
    for (tasks, new_instances) in [(1, false), (16, false), (16, true)] {
        let prefix = Uuid::now_v7().simple().to_string();
        let instance = move |task: usize| {
            if new_instances {
                Uuid::now_v7().simple().to_string()
            } else {
                format!("{prefix}-{task}")
            }
        };
        let step = move |i: u64| if new_instances { 0 } else { i };
        let repo = Repository::<Counter, _>::new(store.clone()).with_tenant(tenant.clone());
        let handler = PgSagaHandler::new(pool.clone(), Shipping, repo);
        let (t, fw_instance) = (tenant.clone(), instance.clone());
        let fw = move |task: usize, i: u64| {
            let (handler, event) = (handler.clone(), placed(&t, &fw_instance(task), step(i)));
            async move {
                handler.handle(&event).await.expect("saga step");
                1
            }
        };
        let pool2 = pool.clone();
        let raw = move |task: usize, i: u64| {
            let pool = pool2.clone();
            let instance = instance(task);
            let position = i64::try_from(step(i) + 1).expect("small");
            async move { raw_step(&pool, &instance, Uuid::now_v7(), position).await }
        };
        let compared = compare_cpu(Some(pool), tasks, fw, raw).await;
        let shape = if new_instances {
            "a new instance per step"
        } else {
            "warm instances"
        };
        table.throughput(
            &format!("saga steps (event, state, 1 command), {tasks} task(s), {shape}, steps/s"),
            "",
            compared.framework.rate,
            compared.raw.rate,
        );
        table.cpu(
            &format!("  CPU per step, {tasks} task(s), {shape}"),
            &compared,
        );
    }
    deadlines(pool, table).await;
}

/// `PgDeadlineRunner::fire_due` over 10,000 due deadlines, against the raw engine's loop over
/// as many (claim 64 `FOR UPDATE SKIP LOCKED`, append each one's event, mark it fired, commit).
async fn deadlines(pool: &PgPool, table: &mut Table) {
    const DUE: i64 = 10_000;
    sqlx::query(
        "INSERT INTO saga_instances (tenant_id, saga, instance, state, state_version, version, \
         last_transaction_id, last_position, deadline_at) \
         SELECT 'bench', 'timeouts', 't-' || g, '{}', 1, 1, '1'::xid8, 1, \
                now() - interval '1 minute' + g * interval '1 millisecond' \
         FROM generate_series(1, $1::int8) g",
    )
    .bind(DUE)
    .execute(pool)
    .await
    .expect("due deadlines");
    sqlx::query(
        "INSERT INTO raw_deadlines (instance, due_at) \
         SELECT 't-' || g, now() - interval '1 minute' + g * interval '1 millisecond' \
         FROM generate_series(1, $1::int8) g",
    )
    .bind(DUE)
    .execute(pool)
    .await
    .expect("raw due deadlines");

    let started = Instant::now();
    let fired = PgDeadlineRunner::new(pool.clone())
        .fire_due(Utc::now())
        .await
        .expect("fire");
    let framework = started.elapsed();
    assert_eq!(i64::try_from(fired).expect("count"), DUE);

    let started = Instant::now();
    let raw_fired = raw_fire_due(pool).await;
    let raw = started.elapsed();
    assert_eq!(raw_fired, DUE);
    let rate = |d: Duration| DUE as f64 / d.as_secs_f64();
    table.row(
        &format!("fire {DUE} due deadlines, batches of 64, s (deadlines/s)"),
        format!("{:.2} ({:.0})", framework.as_secs_f64(), rate(framework)),
        format!("{:.2} ({:.0})", raw.as_secs_f64(), rate(raw)),
        raw.as_secs_f64() / framework.as_secs_f64(),
    );
}

async fn raw_fire_due(pool: &PgPool) -> i64 {
    let now = Utc::now();
    let mut fired = 0;
    loop {
        let mut tx = pool
            .begin_with("BEGIN; SELECT set_config('enable_seqscan', 'off', true)")
            .await
            .expect("begin");
        let due: Vec<(String, chrono::DateTime<Utc>)> = sqlx::query_as(
            "SELECT instance, due_at FROM raw_deadlines WHERE NOT fired AND due_at <= $1 \
             ORDER BY due_at LIMIT 64 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .expect("raw claim");
        if due.is_empty() {
            return fired;
        }
        for (instance, due_at) in &due {
            let id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("timeouts/{instance}/{due_at}").as_bytes(),
            );
            sqlx::query(
                "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
                 VALUES ($1, 1, $2, 'DeadlineReached', $3)",
            )
            .bind(format!("timeouts/{instance}"))
            .bind(id)
            .bind(json!({ "saga": "timeouts", "instance": instance, "due_at": due_at }))
            .execute(&mut *tx)
            .await
            .expect("raw deadline event");
            sqlx::query(
                "UPDATE raw_deadlines SET fired = true WHERE instance = $1 AND due_at = $2 AND NOT fired",
            )
            .bind(instance)
            .bind(due_at)
            .execute(&mut *tx)
            .await
            .expect("raw mark fired");
        }
        tx.commit().await.expect("commit");
        fired += i64::try_from(due.len()).expect("small");
    }
}
