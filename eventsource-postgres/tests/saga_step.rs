//! The step path of `PgSagaHandler` (issue 15): one transaction per delivery that loads the
//! instance (locking its row), appends each command's events, saves the state and records the
//! event, the last append and the save as one statement. Each test holds one promise the doc
//! comments of `PgSagaHandler`, `PgSagaStore` and `SagaStore` make, through the handler.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use eventsource_core::{
    CommandError, DEADLINE_STREAM_TYPE, EventHandler, EventId, EventStore, HandledEvent,
    LogPosition, RecordedEvent, Repository, Saga, SagaError, SagaHandler, SagaState, SagaStore,
    StoreError, StreamId, VersionRange,
};
use eventsource_postgres::{PgDeadlineRunner, PgSagaHandler, PgSagaStore};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Barrier;

use support::saga::stepper::{
    Bin, Probe, ProbeError, SaveFails, Stale, Stepper, Steps, World, labels, wait_for_lock,
};

/// The first command's events are appended in the step's transaction; deciding the second
/// fails. The delivery fails and leaves neither those events nor the state nor the record of
/// the event; delivered again, it commits both commands' events and the state once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_an_append_leaves_neither_events_nor_state() {
    let Some(world) = World::new("step-atomic").await else {
        return;
    };
    let failing = Probe {
        fail_at: Some(1),
        ..world.probe()
    };
    let placed = world.step("o-1", 10, &["bin-a", "bin-b"]);
    let failed = world.handler(&failing).handle(&placed).await;
    assert!(
        matches!(failed, Err(SagaError::Dispatch(ProbeError::Injected))),
        "{failed:?}"
    );
    assert_eq!(
        failing.calls(),
        2,
        "the first command was decided and appended"
    );
    assert!(
        world.bin("bin-a").await.is_empty(),
        "no events without state"
    );
    let loaded = world
        .sagas
        .load_for(&world.key, &HandledEvent::of(&placed))
        .await
        .expect("load");
    assert_eq!(
        (loaded.state, loaded.handled),
        (None, false),
        "no state, no record"
    );

    world
        .handler(&world.probe())
        .handle(&placed)
        .await
        .expect("redelivery");
    assert_eq!(world.bin("bin-a").await, labels(&["o-1"]));
    assert_eq!(world.bin("bin-b").await, labels(&["o-1"]));
    let (version, steps) = world.state().await.expect("state");
    assert_eq!((version, steps.labels), (1, labels(&["o-1"])));
}

/// The instance handles a later event (another stream) first, then an earlier one: both are
/// handled. Redelivered afterwards, in either order, each is skipped before any command is
/// decided, and nothing is appended twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_is_per_event_in_any_arrival_order() {
    let Some(world) = World::new("step-dedup").await else {
        return;
    };
    let probe = world.probe();
    let handler = world.handler(&probe);
    let late = world.step("payment", 50, &["bin-late"]);
    let early = world.step("order", 40, &["bin-early"]);
    handler.handle(&late).await.expect("the later event");
    handler
        .handle(&early)
        .await
        .expect("the earlier one, after");
    assert_eq!(probe.calls(), 2);
    for event in [&early, &late, &late, &early] {
        handler.handle(event).await.expect("a redelivery");
    }
    assert_eq!(probe.calls(), 2, "redeliveries decide nothing");
    assert_eq!(world.bin("bin-late").await, labels(&["payment"]));
    assert_eq!(world.bin("bin-early").await, labels(&["order"]));
    let (version, steps) = world.state().await.expect("state");
    assert_eq!((version, steps.labels), (2, labels(&["payment", "order"])));
}

/// After the record of handled events is pruned to a floor, redeliveries of events at or below
/// it and of one above it are all skipped; a new event above the floor is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_the_record_never_lets_a_redelivery_through() {
    let Some(world) = World::new("step-prune").await else {
        return;
    };
    let probe = world.probe();
    let handler = world.handler(&probe);
    let events: Vec<RecordedEvent> = [("s-1", 10), ("s-2", 20), ("s-3", 30)]
        .iter()
        .map(|&(label, position)| world.step(label, position, &["bin"]))
        .collect();
    for event in &events {
        handler.handle(event).await.expect("handled");
    }
    let removed = world
        .sagas
        .prune_handled(&world.tenant, Stepper::NAME, LogPosition::new(20, 20))
        .await
        .expect("prune");
    assert_eq!(removed, 2, "the records of s-1 and s-2");
    for event in &events {
        handler.handle(event).await.expect("a redelivery");
    }
    assert_eq!(probe.calls(), 3, "redeliveries decide nothing");
    handler
        .handle(&world.step("s-4", 40, &["bin"]))
        .await
        .expect("a new event");
    assert_eq!(
        world.bin("bin").await,
        labels(&["s-1", "s-2", "s-3", "s-4"])
    );
    let (version, _) = world.state().await.expect("state");
    assert_eq!(version, 4);
}

/// Two events create one instance at once: both load no state and decide their command before
/// either saves. One commits; the other's save finds the instance created, its transaction
/// (holding its append) is rolled back and run again on the winner's state. Each command's
/// events are stored once and the state holds both events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_steps_commit_one_and_rerun_the_other() {
    let Some(world) = World::new("step-race").await else {
        return;
    };
    let probe = Probe {
        barrier: Some(Arc::new(Barrier::new(2))),
        ..world.probe()
    };
    let handler = world.handler(&probe);
    let (first, second) = (
        world.step("o-1", 10, &["bin-1"]),
        world.step("o-2", 11, &["bin-2"]),
    );
    let deliveries = [first, second].map(|event| {
        let handler = handler.clone();
        tokio::spawn(async move { handler.handle(&event).await })
    });
    for delivery in deliveries {
        delivery.await.expect("task").expect("delivered");
    }
    assert_eq!(probe.calls(), 3, "the losing step ran again, once");
    assert_eq!(world.bin("bin-1").await, labels(&["o-1"]));
    assert_eq!(world.bin("bin-2").await, labels(&["o-2"]));
    let (version, mut steps) = world.state().await.expect("state");
    steps.labels.sort();
    assert_eq!((version, steps.labels), (2, labels(&["o-1", "o-2"])));
}

/// While another transaction holds the instance's row (as `load_in_tx` locks it) and saves a
/// new state, a delivery to the instance waits at its load, then reacts on the saved state:
/// no conflict, no rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waits_for_the_instance_row_and_sees_what_was_saved() {
    let Some(world) = World::new("step-lock").await else {
        return;
    };
    let probe = world.probe();
    world
        .handler(&probe)
        .handle(&world.step("o-1", 10, &["bin"]))
        .await
        .expect("first step");

    let name = format!("saga-step-lock-{}", uuid::Uuid::now_v7().simple());
    let named = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            support::server()
                .expect("server")
                .database(&support::test_database())
                .application_name(&name),
        )
        .await
        .expect("connect");
    let outside = HandledEvent::new(EventId::new(), LogPosition::new(15, 15));
    let mut holder = eventsource_postgres::begin_tenant(&world.pool, &world.tenant)
        .await
        .expect("begin");
    let loaded = PgSagaStore::load_in_tx(&mut holder, &world.key, &outside)
        .await
        .expect("lock the instance");
    assert_eq!(loaded.state.map(|s| s.version), Some(1));

    let delivery = tokio::spawn({
        let handler = PgSagaHandler::new(named.clone(), Stepper, probe.clone());
        let event = world.step("o-2", 20, &["bin"]);
        async move { handler.handle(&event).await }
    });
    wait_for_lock(&world.pool, &name).await;
    let saved = Steps {
        labels: labels(&["o-1", "outside"]),
        ..Steps::default()
    };
    let state = SagaState::new(
        serde_json::to_value(&saved).expect("json"),
        1,
        2,
        LogPosition::new(15, 15),
    );
    PgSagaStore::save_in_tx(&mut holder, &world.key, 1, state, outside)
        .await
        .expect("save while holding the row");
    holder.commit().await.expect("commit");
    delivery.await.expect("task").expect("delivered");

    assert_eq!(
        probe.calls(),
        2,
        "one decision per step: the waiting one never reran"
    );
    let (version, steps) = world.state().await.expect("state");
    assert_eq!(
        (version, steps.labels),
        (3, labels(&["o-1", "outside", "o-2"]))
    );
    assert_eq!(world.bin("bin").await, labels(&["o-1", "o-2"]));
    named.close().await;
}

/// A saga ran on the dispatching `SagaHandler` appended both commands' events, then died before
/// saving. The one-transaction handler, given the event, decides the same events (the same
/// deterministic ids) at the streams' new versions: each append, the last one fused with the
/// save, is an idempotent replay, nothing is stored twice and the state is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_replaying_stored_commands_appends_nothing_and_saves() {
    let Some(world) = World::new("step-replay").await else {
        return;
    };
    let placed = world.step("o-1", 10, &["bin-a", "bin-b"]);
    let bins = Repository::<Bin, _>::new(world.events.clone()).with_tenant(world.tenant.clone());
    let dispatching = SagaHandler::new(Stepper, bins, SaveFails::default());
    let died = dispatching.handle(&placed).await;
    assert!(matches!(died, Err(SagaError::Store(_))), "{died:?}");
    let read = |id: &'static str| {
        let (events, stream) = (
            world.events.clone(),
            StreamId::new(world.tenant.clone(), "bin", id),
        );
        async move {
            events
                .read_stream(&stream, VersionRange::all())
                .await
                .expect("read")
                .iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        }
    };
    let (a, b) = (read("bin-a").await, read("bin-b").await);
    assert_eq!((a.len(), b.len()), (1, 1), "both commands appended");

    world
        .handler(&world.probe())
        .handle(&placed)
        .await
        .expect("the replayed step");
    assert_eq!(
        (read("bin-a").await, read("bin-b").await),
        (a, b),
        "stored once"
    );
    let (version, steps) = world.state().await.expect("saved");
    assert_eq!((version, steps.labels), (1, labels(&["o-1"])));
}

/// As above on an instance that exists: the replayed append is the one-event statement that
/// moves the instance, and it too stores nothing twice and saves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_step_replaying_its_stored_command_appends_nothing_and_saves() {
    let Some(world) = World::new("step-replay-warm").await else {
        return;
    };
    let handler = world.handler(&world.probe());
    handler
        .handle(&world.step("o-1", 10, &["bin"]))
        .await
        .expect("the first step");
    let second = world.step("o-2", 20, &["bin"]);
    let bins = Repository::<Bin, _>::new(world.events.clone()).with_tenant(world.tenant.clone());
    let dispatching = SagaHandler::new(Stepper, bins, SaveFails::default());
    let died = dispatching.handle(&second).await;
    assert!(matches!(died, Err(SagaError::Store(_))), "{died:?}");
    assert_eq!(world.bin("bin").await, labels(&["o-1", "o-2"]));

    handler.handle(&second).await.expect("the replayed step");
    assert_eq!(
        world.bin("bin").await,
        labels(&["o-1", "o-2"]),
        "stored once"
    );
    let (version, steps) = world.state().await.expect("saved");
    assert_eq!((version, steps.labels), (2, labels(&["o-1", "o-2"])));
}

/// A step whose append conflicts on every attempt is rolled back and run again, 16 times in
/// all, then fails with the conflict for the runner to redeliver; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_always_conflicts_gives_up_after_sixteen_attempts() {
    let Some(world) = World::new("step-conflict").await else {
        return;
    };
    let stale = Stale {
        tenant: world.tenant.clone(),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let handler = PgSagaHandler::new(world.pool.clone(), Stepper, stale.clone());
    let placed = world.step("o-1", 10, &["bin"]);
    let failed = handler.handle(&placed).await;
    assert!(
        matches!(&failed, Err(SagaError::Store(StoreError::Conflict { .. }))),
        "{failed:?}"
    );
    assert!(!handler.is_permanent(failed.as_ref().expect_err("failed")));
    assert_eq!(
        stale.calls.load(Ordering::SeqCst),
        16,
        "one decision per attempt"
    );
    assert!(world.bin("bin").await.is_empty());
    assert_eq!(world.state().await, None, "no state");
}

/// A command the bin refuses appends nothing; the reaction's later command is dropped, the
/// saga hears the refusal and the command it then issues appends in the same transaction,
/// with the state noting the refusal; a redelivery decides nothing. A saga that does not
/// handle the refusal fails the delivery and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_is_heard_by_the_saga_in_the_same_step() {
    let Some(world) = World::new("step-reject").await else {
        return;
    };
    let probe = world.probe();
    let handler = world.handler(&probe);
    let placed = world.step("o-1", 10, &["bin-a=0", "bin-b"]);
    handler
        .handle(&placed)
        .await
        .expect("a refusal is an outcome");
    handler.handle(&placed).await.expect("a redelivery");
    assert_eq!(probe.calls(), 2, "the refused command and the notice, once");
    assert!(world.bin("bin-a").await.is_empty(), "refused");
    assert!(
        world.bin("bin-b").await.is_empty(),
        "dropped after the refusal"
    );
    assert_eq!(world.bin("notice").await, labels(&["rejected-0"]));
    let (version, steps) = world.state().await.expect("state");
    assert_eq!(version, 1);
    assert_eq!(
        steps.rejected,
        labels(&["0: the bin refuses a reservation of nothing"])
    );

    let mut strict = world.step("o-2", 20, &["bin-c", "bin-d=0"]);
    strict.payload["strict"] = serde_json::json!(true);
    let failed = handler.handle(&strict).await;
    assert!(
        matches!(
            failed,
            Err(SagaError::Dispatch(ProbeError::Command(
                CommandError::Rejected(_)
            )))
        ),
        "{failed:?}"
    );
    assert!(
        world.bin("bin-c").await.is_empty(),
        "rolled back with the step"
    );
    assert_eq!(world.state().await.expect("state").0, 1, "not saved");
}

/// Deadlines a step sets are stored with its state, whether the step appends (the fused
/// statement) or not, and the deadline runner sees them: fired once; moved by a later step,
/// pending again; kept, not fired twice; the fired event reaches the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_in_a_step_is_stored_and_fired() {
    let Some(world) = World::new("step-deadline").await else {
        return;
    };
    let handler = world.handler(&world.probe());
    let runner = PgDeadlineRunner::new(world.pool.clone()).for_tenant(world.tenant.clone());
    let now = Utc::now();
    // Whole seconds: the database keeps microseconds.
    let at = |ago: i64| DateTime::from_timestamp(now.timestamp() - ago, 0).expect("time");
    let with_deadline = |mut event: RecordedEvent, due: DateTime<Utc>| {
        event.payload["deadline"] = serde_json::to_value(due).expect("json");
        event
    };

    let first = with_deadline(world.step("o-1", 10, &["bin"]), at(120));
    handler.handle(&first).await.expect("a step that appends");
    let stored = world
        .sagas
        .load(&world.key)
        .await
        .expect("load")
        .expect("state");
    assert_eq!(stored.deadline, Some(at(120)));
    assert_eq!(runner.fire_due(now).await.expect("fire"), 1);
    assert_eq!(runner.fire_due(now).await.expect("fire"), 0, "fired once");

    let second = with_deadline(world.step("o-2", 20, &[]), at(60));
    handler
        .handle(&second)
        .await
        .expect("a step that appends nothing");
    assert_eq!(
        world
            .sagas
            .load(&world.key)
            .await
            .expect("load")
            .expect("state")
            .deadline,
        Some(at(60))
    );
    assert_eq!(
        runner.fire_due(now).await.expect("fire"),
        1,
        "moved: pending again"
    );
    let third = world.step("o-3", 30, &[]);
    handler.handle(&third).await.expect("a step that keeps it");
    assert_eq!(
        runner.fire_due(now).await.expect("fire"),
        0,
        "kept: fired once"
    );

    let stream = StreamId::new(
        world.tenant.clone(),
        DEADLINE_STREAM_TYPE,
        format!("{}/{}", Stepper::NAME, world.key.instance()),
    );
    let fired = world
        .events
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read");
    assert_eq!(fired.len(), 2, "one event per deadline fired");
    for event in &fired {
        handler.handle(event).await.expect("a deadline event");
    }
    let (version, steps) = world.state().await.expect("state");
    assert_eq!(
        (version, steps.labels, steps.deadline),
        (4, labels(&["o-1", "o-2", "o-3", "deadline"]), None),
        "the stale first deadline is skipped, the pending one handled"
    );
}

/// As the application role (row level security applies), an instance of tenant A whose last
/// command appends to tenant B, and the same instance id in tenant B: two instances, each
/// saved in its tenant, the events where their streams are; B sees none of A's saga rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_under_row_level_security_keeps_each_tenant_to_its_rows() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_pool_with(&admin, 4).await;
    support::saga::grant_saga_tables(&admin).await;
    let a = World::on(app.clone(), support::tenant("step-rls-a"));
    let b = World::on(app.clone(), support::tenant("step-rls-b"));
    let probe = Probe {
        others: Some(Repository::<Bin, _>::new(a.events.clone()).with_tenant(b.tenant.clone())),
        ..a.probe()
    };
    a.handler(&probe)
        .handle(&a.step("o-1", 10, &["bin-1", "other:bin-2"]))
        .await
        .expect("a step of tenant a");
    b.handler(&b.probe())
        .handle(&b.step("o-9", 11, &["bin-1"]))
        .await
        .expect("a step of tenant b");

    assert_eq!(a.bin("bin-1").await, labels(&["o-1"]));
    assert_eq!(
        b.bin("bin-2").await,
        labels(&["o-1"]),
        "in tenant b's stream"
    );
    assert_eq!(b.bin("bin-1").await, labels(&["o-9"]));
    assert_eq!(a.state().await.expect("a").1.labels, labels(&["o-1"]));
    assert_eq!(b.state().await.expect("b").1.labels, labels(&["o-9"]));

    let mut tx = eventsource_postgres::begin_tenant(&app, &b.tenant)
        .await
        .expect("begin");
    let seen: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM saga_instances UNION ALL SELECT tenant_id FROM saga_handled",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("rows");
    assert_eq!(
        seen,
        [b.tenant.as_str(), b.tenant.as_str()],
        "only b's rows"
    );
    tx.rollback().await.expect("rollback");
    app.close().await;
}

/// A stored state that no longer decodes as the saga's state: the delivery fails with
/// `SagaError::State` naming saga, instance and tenant, permanent, before any command is
/// decided; the stored state is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_no_longer_decodes_is_a_typed_error_and_is_kept() {
    let Some(world) = World::new("step-decode").await else {
        return;
    };
    let stored = SagaState::new(
        serde_json::json!({ "labels": 7 }),
        Stepper::STATE_VERSION,
        1,
        LogPosition::new(5, 5),
    );
    world
        .sagas
        .save(
            &world.key,
            0,
            stored.clone(),
            HandledEvent::new(EventId::new(), LogPosition::new(5, 5)),
        )
        .await
        .expect("save");
    let probe = world.probe();
    let handler = world.handler(&probe);
    let failed = handler.handle(&world.step("o-1", 10, &["bin"])).await;
    let Err(SagaError::State(error)) = &failed else {
        panic!("expected a state error, got {failed:?}");
    };
    assert_eq!(
        (error.saga.as_str(), error.instance.as_str(), &error.tenant),
        (Stepper::NAME, "i-1", &world.tenant)
    );
    assert!(error.source.is_some(), "why the JSON did not decode");
    let message = failed.as_ref().expect_err("failed").to_string();
    assert!(
        message.contains("stepper") && message.contains("i-1"),
        "{message}"
    );
    assert!(handler.is_permanent(failed.as_ref().expect_err("failed")));
    assert_eq!(probe.calls(), 0, "nothing decided");
    assert!(world.bin("bin").await.is_empty());
    assert_eq!(
        world.sagas.load(&world.key).await.expect("load"),
        Some(stored),
        "never reset"
    );
}

/// The same saga instance id in two tenants, each step setting the same deadline: two
/// instances, two deadlines, each fired once in its own tenant. (The deadline event's id was
/// derived without the tenant: the second tenant's event collided with the first's, and its
/// deadline runner failed with a duplicate event id on every batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_deadline_in_two_tenants_fires_in_each() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let due = DateTime::from_timestamp(Utc::now().timestamp() - 30, 0).expect("time");
    let worlds = [
        World::on(pool.clone(), support::tenant("step-deadline-a")),
        World::on(pool.clone(), support::tenant("step-deadline-b")),
    ];
    for world in &worlds {
        let mut event = world.step("o-1", 10, &[]);
        event.payload["deadline"] = serde_json::to_value(due).expect("json");
        world
            .handler(&world.probe())
            .handle(&event)
            .await
            .expect("a step setting the deadline");
    }
    for world in &worlds {
        let runner = PgDeadlineRunner::new(pool.clone()).for_tenant(world.tenant.clone());
        assert_eq!(
            runner.fire_due(Utc::now()).await.expect("fire"),
            1,
            "{}",
            world.tenant
        );
        let stream = StreamId::new(
            world.tenant.clone(),
            DEADLINE_STREAM_TYPE,
            format!("{}/{}", Stepper::NAME, world.key.instance()),
        );
        let fired = world
            .events
            .read_stream(&stream, VersionRange::all())
            .await
            .expect("read");
        assert_eq!(fired.len(), 1, "{}: fired in its tenant", world.tenant);
    }
}
