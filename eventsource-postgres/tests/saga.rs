//! Durable sagas on PostgreSQL (issue 15): the `SagaStore` conformance suite on
//! `PgSagaStore`; one transaction for a saga's state and its commands' events, even when the
//! connection dies between the append and the commit; deadlines shared by concurrent runners,
//! each fired once; row level security on the saga tables.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use eventsource_core::{
    DEADLINE_REACHED, DueDeadline, EventHandler, EventId, EventStore, ExpectedVersion,
    HandledEvent, LogFilter, LogPosition, NewEvent, RecordedEvent, Repository, SagaKey, SagaState,
    SagaStore, StreamId,
};
use eventsource_postgres::{PgDeadlineRunner, PgEventStore, PgSagaHandler, PgSagaStore};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

use support::saga::{
    Fulfilment, Replaying, Stalling, Stock, order_placed, reservations, wait_until_gone,
};

mod conformance {
    use super::*;

    eventsource_core::saga_store_conformance_tests!(optional async async {
        support::pool().await.map(PgSagaStore::new)
    });
}

mod conformance_through_pgbouncer {
    use super::*;

    eventsource_core::saga_store_conformance_tests!(optional async async {
        support::bouncer_pool(8).await.map(PgSagaStore::new)
    });
}

/// The saga's connection dies (terminated by the server, as when its process is killed) after
/// the first command's events were appended in its transaction and before the commit: neither
/// those events nor the state exist. Redelivered, the event commits both commands' events and
/// the state once; a further redelivery changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_before_commit_leaves_neither_state_nor_events() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let name = format!("saga-crash-{}", uuid::Uuid::now_v7().simple());
    let options = support::server()
        .expect("server")
        .database(&support::test_database())
        .application_name(&name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect");
    let tenant = support::tenant("saga-crash");
    let events = PgEventStore::new(admin.clone());
    let stock = Repository::<Stock, _>::new(events.clone()).with_tenant(tenant.clone());
    let decider = Stalling {
        stock,
        stall: Arc::new(AtomicBool::new(true)),
        calls: Arc::new(AtomicUsize::new(0)),
        stalled: Arc::new(Notify::new()),
    };
    let handler = PgSagaHandler::new(pool.clone(), Fulfilment, decider.clone());
    let placed = order_placed(&tenant, "o-1", "o-1", 10);

    let delivery = tokio::spawn({
        let (handler, placed) = (handler.clone(), placed.clone());
        async move { handler.handle(&placed).await }
    });
    decider.stalled.notified().await;
    // The saga's transaction holds sku-a's new event, uncommitted: kill its backend.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND backend_xid IS NOT NULL",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    assert_eq!(killed, [true], "one saga transaction in flight");
    delivery.abort();
    let _ = delivery.await;

    let sagas = PgSagaStore::new(admin.clone());
    let key = SagaKey::new(tenant.clone(), "fulfilment", "o-1");
    assert!(
        reservations(&events, &tenant, "sku-a").await.is_empty(),
        "no events without state"
    );
    assert_eq!(
        sagas.load(&key).await.expect("load"),
        None,
        "no state without events"
    );

    decider.stall.store(false, Ordering::SeqCst);
    handler.handle(&placed).await.expect("redelivery");
    handler
        .handle(&placed)
        .await
        .expect("a further redelivery is a no-op");
    for sku in ["sku-a", "sku-b"] {
        let reserved = reservations(&events, &tenant, sku).await;
        assert_eq!(reserved.len(), 1, "{sku}: reserved once");
        assert_eq!(
            reserved[0].metadata.causation_id,
            Some(*placed.event_id.as_uuid())
        );
    }
    let state = sagas.load(&key).await.expect("load").expect("state");
    assert_eq!(
        (state.version, state.state.clone()),
        (1, serde_json::json!(1))
    );
    pool.close().await;
}

/// Many deliveries at once, every order reserving the same two hot stock items: appends
/// conflict and are refused by the stream-order guard, and the handler reruns its whole
/// transaction. Each order reserves once per item, each instance saves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deliveries_retry_the_transaction_and_commit_once() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("saga-race");
    let events = PgEventStore::new(pool.clone());
    let stock = Repository::<Stock, _>::new(events.clone()).with_tenant(tenant.clone());
    let handler = PgSagaHandler::new(pool.clone(), Fulfilment, stock);
    let orders: Vec<RecordedEvent> = (0..24)
        .map(|i| order_placed(&tenant, &format!("s-{}", i % 6), &format!("o-{i}"), 100 + i))
        .collect();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (handler, orders) = (handler.clone(), orders.clone());
            tokio::spawn(async move {
                // Each task delivers every order, in its own rotation: each event 8 times.
                for i in 0..orders.len() {
                    let event = &orders[(i + task * 3) % orders.len()];
                    let mut tries = 0;
                    while let Err(e) = handler.handle(event).await {
                        tries += 1;
                        assert!(tries < 20, "{e:?}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    for sku in ["sku-a", "sku-b"] {
        let reserved = reservations(&events, &tenant, sku).await;
        assert_eq!(reserved.len(), 24, "{sku}: one reservation per order");
    }
    let sagas = PgSagaStore::new(pool);
    for s in 0..6 {
        let key = SagaKey::new(tenant.clone(), "fulfilment", format!("s-{s}"));
        let state = sagas.load(&key).await.expect("load").expect("state");
        assert_eq!(
            (state.version, state.state),
            (4, serde_json::json!(4)),
            "{key}"
        );
    }
}

/// A step's last append runs with its save as one statement, the save only if it wrote. Both
/// batches stored already: each is a replay, appended once, and the state is still saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_last_append_still_saves_the_state() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("saga-replay");
    let events = PgEventStore::new(pool.clone());
    let mut stored = Vec::new();
    for sku in ["sku-a", "sku-b"] {
        let event = NewEvent::new("stock-reserved", 1, serde_json::json!({ "order": "o-1" }));
        let stream = StreamId::new(tenant.clone(), "stock", sku);
        events
            .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
            .await
            .expect("stored first");
        stored.push((sku.to_owned(), event));
    }
    let (t, kept) = (tenant.clone(), stored.clone());
    let handler = PgSagaHandler::new(
        pool.clone(),
        Fulfilment,
        Replaying {
            tenant: t,
            stored: kept,
        },
    );
    let placed = order_placed(&tenant, "r-1", "o-1", 10);
    handler.handle(&placed).await.expect("replayed appends");
    handler
        .handle(&placed)
        .await
        .expect("a redelivery is a no-op");
    for (sku, event) in &stored {
        let log = reservations(&events, &tenant, sku).await;
        assert_eq!(log.len(), 1, "{sku}: appended once");
        assert_eq!(log[0].event_id, event.event_id, "{sku}");
    }
    let key = SagaKey::new(tenant.clone(), "fulfilment", "r-1");
    let state = PgSagaStore::new(pool)
        .load(&key)
        .await
        .expect("load")
        .expect("saved");
    assert_eq!((state.version, state.state), (1, serde_json::json!(1)));
}

/// Four runners fire 200 due deadlines concurrently: the log holds each deadline's event
/// exactly once, and none is left due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runners_fire_each_deadline_once() {
    let Some(pool) = support::pool().await else {
        return;
    };
    runners_fire_each_deadline_once(pool).await;
}

/// The same through PgBouncer in transaction mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_concurrent_runners_fire_each_deadline_once() {
    let Some(pool) = support::bouncer_pool(8).await else {
        return;
    };
    runners_fire_each_deadline_once(pool).await;
}

async fn runners_fire_each_deadline_once(pool: sqlx::PgPool) {
    let tenant = support::tenant("saga-deadlines");
    let sagas = PgSagaStore::new(pool.clone());
    let due_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    for i in 0..200u64 {
        let key = SagaKey::new(tenant.clone(), "payment-timeout", format!("o-{i}"));
        let state = SagaState::new(serde_json::json!({}), 1, 1, LogPosition::new(i + 1, i + 1))
            .with_deadline(Some(
                due_at + chrono::Duration::milliseconds(i64::try_from(i).unwrap()),
            ));
        sagas
            .save(
                &key,
                0,
                state,
                HandledEvent::new(EventId::new(), LogPosition::new(i + 1, i + 1)),
            )
            .await
            .expect("save");
    }
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let runner = PgDeadlineRunner::new(pool.clone())
                .for_tenant(tenant.clone())
                .with_batch_size(8);
            tokio::spawn(async move { runner.fire_due(chrono::Utc::now()).await.expect("fire") })
        })
        .collect();
    let mut fired = 0;
    for runner in runners {
        fired += runner.await.expect("runner");
    }
    assert_eq!(
        fired, 200,
        "between them the runners fired every deadline once"
    );

    // The log shows committed events below the oldest transaction still open on the server
    // (another test's, say): wait until all 200 are visible.
    let events = PgEventStore::new(pool.clone());
    let mut instances: Vec<String> = Vec::new();
    for _ in 0..500 {
        let log = eventsource_core::read_log(
            &events,
            LogPosition::START,
            100,
            LogFilter::tenant(tenant.clone()),
        );
        let log: Vec<RecordedEvent> = futures::TryStreamExt::try_collect(log).await.expect("log");
        instances = log
            .iter()
            .filter(|e| e.event_type == DEADLINE_REACHED)
            .map(|e| e.payload["instance"].as_str().expect("instance").to_owned())
            .collect();
        if instances.len() >= 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(instances.len(), 200);
    instances.sort();
    instances.dedup();
    assert_eq!(instances.len(), 200, "each deadline once");
    let again = PgDeadlineRunner::new(pool.clone()).for_tenant(tenant.clone());
    assert_eq!(
        again.fire_due(chrono::Utc::now()).await.expect("fire"),
        0,
        "none left due"
    );
    // The saga consumes a fired deadline like any event; a stale mark is refused.
    let key = SagaKey::new(tenant.clone(), "payment-timeout", "o-0");
    assert!(
        !sagas
            .mark_fired(&DueDeadline::new(key, due_at))
            .await
            .expect("mark")
    );
}

/// The saga tables have forced row level security: the application role sees only the
/// transaction's tenant and fails without one.
#[tokio::test]
async fn saga_rows_are_tenant_isolated() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_pool(&admin).await;
    support::saga::grant_saga_tables(&admin).await;
    let (a, b) = (support::tenant("saga-rls-a"), support::tenant("saga-rls-b"));
    let sagas = PgSagaStore::new(app.clone());
    let key = SagaKey::new(a.clone(), "fulfilment", "o-1");
    let event = HandledEvent::new(EventId::new(), LogPosition::new(5, 5));
    sagas
        .save(
            &key,
            0,
            SagaState::new(serde_json::json!(1), 1, 1, LogPosition::new(5, 5)),
            event,
        )
        .await
        .expect("save as the app role");
    assert!(sagas.load_for(&key, &event).await.expect("load").handled);

    let mut tx = eventsource_postgres::begin_tenant(&app, &b)
        .await
        .expect("begin");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_instances WHERE tenant_id = $1")
        .bind(a.as_str())
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_handled")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(
        (seen, records),
        (0, 0),
        "tenant b sees none of tenant a's saga rows"
    );
    tx.rollback().await.expect("rollback");

    let unset = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM saga_instances")
        .fetch_one(&app)
        .await;
    assert!(unset.is_err(), "no tenant, no rows: an error");
    let wrong = sagas
        .save(
            &SagaKey::new(b.clone(), "fulfilment", "o-1"),
            1,
            SagaState::new(serde_json::json!(2), 1, 2, LogPosition::new(6, 6)),
            HandledEvent::new(EventId::new(), LogPosition::new(6, 6)),
        )
        .await;
    assert!(wrong.is_err(), "tenant b cannot move tenant a's instance");
    app.close().await;
}

/// A deadline runner's connection dies mid-batch (terminated by the server, as when its
/// process is killed), after appending some deadline events in its transaction: none of them
/// exists and every deadline is still due; the next runner fires each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_runner_killed_mid_batch_fires_nothing_and_leaves_it_pending() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let name = format!("deadline-crash-{}", uuid::Uuid::now_v7().simple());
    let runner_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            support::server()
                .expect("server")
                .database(&support::test_database())
                .application_name(&name),
        )
        .await
        .expect("connect");
    let tenant = support::tenant("deadline-crash");
    let sagas = PgSagaStore::new(admin.clone());
    let due_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    for i in 0..6u64 {
        let key = SagaKey::new(tenant.clone(), "payment-timeout", format!("o-{i}"));
        let at = due_at + chrono::Duration::seconds(i64::try_from(i).unwrap());
        let state = SagaState::new(serde_json::json!({}), 1, 1, LogPosition::new(1, 1))
            .with_deadline(Some(at));
        sagas
            .save(
                &key,
                0,
                state,
                HandledEvent::new(EventId::new(), LogPosition::new(1, 1)),
            )
            .await
            .expect("save");
    }
    // Hold o-3's deadline stream: the runner appends o-0..o-2 in its transaction, then waits.
    let blocker_stream = StreamId::new(tenant.clone(), "saga-deadline", "payment-timeout/o-3");
    let mut blocker = eventsource_postgres::begin_tenant(&admin, &tenant)
        .await
        .expect("begin");
    PgEventStore::append_in_tx(
        &mut blocker,
        &blocker_stream,
        ExpectedVersion::Any,
        vec![eventsource_core::NewEvent::new(
            "blocker",
            1,
            serde_json::json!({}),
        )],
    )
    .await
    .expect("hold the stream");
    let runner = PgDeadlineRunner::new(runner_pool.clone()).for_tenant(tenant.clone());
    let firing = tokio::spawn(async move { runner.fire_batch(chrono::Utc::now()).await });
    // Wait until the runner's transaction waits on the held stream, having written before.
    let mut killed: Vec<bool> = Vec::new();
    for _ in 0..200 {
        killed = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_xid IS NOT NULL AND wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_all(&admin)
        .await
        .expect("terminate");
        if !killed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(killed, [true], "the runner was killed mid-batch");
    assert!(firing.await.expect("task").is_err(), "its batch failed");
    wait_until_gone(&admin, &name).await;
    blocker.rollback().await.expect("release");

    let events = PgEventStore::new(admin.clone());
    let deadline_events = || async {
        let log = eventsource_core::read_log(
            &events,
            LogPosition::START,
            100,
            LogFilter::tenant(tenant.clone()),
        );
        let log: Vec<RecordedEvent> = futures::TryStreamExt::try_collect(log).await.expect("log");
        log.into_iter()
            .filter(|e| e.event_type == DEADLINE_REACHED)
            .count()
    };
    assert_eq!(
        deadline_events().await,
        0,
        "the killed batch appended nothing"
    );
    let again = PgDeadlineRunner::new(admin.clone()).for_tenant(tenant.clone());
    assert_eq!(
        again.fire_due(chrono::Utc::now()).await.expect("fire"),
        6,
        "all still due"
    );
    assert_eq!(deadline_events().await, 6, "each fired once");
    runner_pool.close().await;
}
