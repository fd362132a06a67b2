//! The [`SagaStore`] contract as reusable async tests; see
//! [`saga_store_conformance_tests!`](crate::saga_store_conformance_tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::envelope::{EventId, LogPosition, Metadata, RecordedEvent, StreamId, TenantId, Version};
use crate::handler::EventHandler;
use crate::repository::CommandContext;
use crate::saga::{
    CommandDispatcher, DueDeadline, HandledEvent, Saga, SagaError, SagaHandler, SagaKey, SagaState,
    SagaStore,
};
use crate::store::StoreError;

use super::tenant;

/// Expands to one `#[tokio::test]` per [`SagaStore`] conformance case for the store built by
/// the expression, with the same three forms as
/// [`conformance_tests!`](crate::conformance_tests) (`expr`, `async expr`,
/// `optional async expr`).
///
/// ```
/// mod saga_store {
///     eventsource_core::saga_store_conformance_tests!(eventsource_core::InMemorySagaStore::new());
/// }
/// ```
///
/// Each case works in a tenant of its own, so one store (one database) serves all of them,
/// even concurrently. The store type must be `SagaStore + Clone + 'static`; the calling crate
/// needs `tokio` with `macros` and `rt-multi-thread` as a dev-dependency.
#[macro_export]
macro_rules! saga_store_conformance_tests {
    (optional async $store:expr) => {
        $crate::conformance_tests!(@cases (async { $store.await }) ;
            saga_state_round_trips_under_its_version,
            deduplication_is_per_event_not_a_high_water_mark,
            a_recorded_event_is_never_saved_twice,
            saga_instances_are_per_tenant,
            deadlines_are_due_until_marked_fired,
            pruning_never_lets_a_duplicate_through,
            a_redelivered_event_from_another_stream_is_handled_once,
            a_state_of_another_schema_version_is_a_typed_error,
        );
    };
    (async $store:expr) => {
        $crate::saga_store_conformance_tests!(optional async async { ::core::option::Option::Some($store.await) });
    };
    ($store:expr) => {
        $crate::saga_store_conformance_tests!(optional async async { ::core::option::Option::Some($store) });
    };
}

const SAGA: &str = "conformance-saga";

/// An event of `stream` at `position` in the log, correlated to `instance`.
fn recorded(tenant: &TenantId, stream: &str, position: u64, instance: &str) -> RecordedEvent {
    RecordedEvent {
        event_id: EventId::new(),
        stream: StreamId::new(tenant.clone(), stream, instance),
        version: Version::new(1),
        position: LogPosition::new(position, position),
        event_type: format!("{stream}-event"),
        schema_version: 1,
        recorded_at: Utc::now(),
        metadata: Metadata::default(),
        payload: json!({ "instance": instance }),
    }
}

fn handled(position: u64) -> HandledEvent {
    HandledEvent::new(EventId::new(), LogPosition::new(position, position))
}

fn state(n: u64, position: u64) -> SagaState {
    SagaState::new(
        json!({ "n": n }),
        1,
        n,
        LogPosition::new(position, position),
    )
}

fn key(tenant: &TenantId, instance: &str) -> SagaKey {
    SagaKey::new(tenant.clone(), SAGA, instance)
}

fn is_conflict(result: &Result<(), StoreError>) -> bool {
    matches!(result, Err(StoreError::CheckpointConflict { .. }))
}

/// A state saved at version 0 loads back as saved; a save at a version that moved is refused
/// with a conflict and writes nothing; the next save at the right version moves it.
pub async fn saga_state_round_trips_under_its_version<S: SagaStore>(store: &S) {
    let k = key(&tenant(), "i-1");
    assert_eq!(store.load(&k).await.expect("load"), None, "no state yet");
    let first = handled(10);
    let loaded = store.load_for(&k, &first).await.expect("load");
    assert!(loaded.state.is_none() && !loaded.handled, "{loaded:?}");

    let deadline = Utc.with_ymd_and_hms(2031, 1, 2, 3, 4, 5).single();
    let saved = state(1, 10).with_deadline(deadline);
    store
        .save(&k, 0, saved.clone(), first)
        .await
        .expect("create");
    assert_eq!(store.load(&k).await.expect("load"), Some(saved.clone()));

    let stale = store.save(&k, 0, state(1, 11), handled(11)).await;
    assert!(is_conflict(&stale), "create over a state: {stale:?}");
    let stale = store.save(&k, 5, state(6, 11), handled(11)).await;
    assert!(is_conflict(&stale), "wrong version: {stale:?}");
    assert_eq!(
        store.load(&k).await.expect("load"),
        Some(saved),
        "nothing written"
    );

    store
        .save(&k, 1, state(2, 11), handled(11))
        .await
        .expect("move");
    let moved = store.load(&k).await.expect("load").expect("state");
    assert_eq!((moved.version, moved.deadline), (2, None), "{moved:?}");
}

/// The case a high-water mark gets wrong: the instance handles an event at a later log position
/// (another stream) first; an earlier event it has not handled is not reported handled, and
/// after both are saved both are.
pub async fn deduplication_is_per_event_not_a_high_water_mark<S: SagaStore>(store: &S) {
    let k = key(&tenant(), "two-streams");
    let (early, late) = (handled(100), handled(200));
    store
        .save(&k, 0, state(1, 200), late)
        .await
        .expect("late first");
    let loaded = store.load_for(&k, &early).await.expect("load");
    assert!(
        !loaded.handled,
        "an unhandled event below the last position handled is not a duplicate"
    );
    store
        .save(&k, 1, state(2, 100), early)
        .await
        .expect("early next");
    for event in [early, late] {
        let loaded = store.load_for(&k, &event).await.expect("load");
        assert!(loaded.handled, "{event:?} is recorded");
        assert_eq!(loaded.state.expect("state").version, 2);
    }
    let other = store
        .load_for(&key(k.tenant(), "another"), &early)
        .await
        .expect("load");
    assert!(!other.handled, "the record is per instance");
}

/// Saving for an event the instance recorded already is a conflict, even at the current
/// version (two deliveries of one event, one after the other won), and writes nothing.
pub async fn a_recorded_event_is_never_saved_twice<S: SagaStore>(store: &S) {
    let k = key(&tenant(), "i-1");
    let event = handled(7);
    store.save(&k, 0, state(1, 7), event).await.expect("first");
    let again = store.save(&k, 1, state(2, 7), event).await;
    assert!(is_conflict(&again), "{again:?}");
    assert_eq!(
        store.load(&k).await.expect("load").expect("state").version,
        1
    );
}

/// The same saga and instance ids in two tenants are two instances.
pub async fn saga_instances_are_per_tenant<S: SagaStore>(store: &S) {
    let (a, b) = (key(&tenant(), "shared"), key(&tenant(), "shared"));
    let event = handled(3);
    store
        .save(&a, 0, state(1, 3), event)
        .await
        .expect("tenant a");
    assert_eq!(store.load(&b).await.expect("load"), None);
    assert!(!store.load_for(&b, &event).await.expect("load").handled);
    store
        .save(&b, 0, state(1, 3), event)
        .await
        .expect("tenant b");
    store
        .save(&a, 1, state(2, 4), handled(4))
        .await
        .expect("a moves");
    assert_eq!(store.load(&b).await.expect("load").expect("b").version, 1);
}

/// A pending deadline is listed by `due` once its time has come, earliest first, until marked
/// fired; saving the same deadline keeps the mark, saving another makes it pending again; a
/// stale mark is refused.
pub async fn deadlines_are_due_until_marked_fired<S: SagaStore>(store: &S) {
    let t = tenant();
    // Instants of the distant past, unique to this run, so other tenants' deadlines (the store
    // may be shared) sort around them rather than between them and `now`.
    let base = Utc
        .with_ymd_and_hms(1990, 1, 1, 0, 0, 0)
        .single()
        .expect("date")
        + chrono::Duration::seconds(i64::from(Uuid::now_v7().as_fields().1) * 60);
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    let mine = |due: Vec<DueDeadline>| -> Vec<(String, DateTime<Utc>)> {
        due.into_iter()
            .filter(|d| d.key.tenant() == &t)
            .map(|d| (d.key.instance().to_owned(), d.due_at))
            .collect()
    };
    let (late, early, none) = (key(&t, "late"), key(&t, "early"), key(&t, "none"));
    store
        .save(
            &late,
            0,
            state(1, 1).with_deadline(Some(at(20))),
            handled(1),
        )
        .await
        .expect("late");
    store
        .save(
            &early,
            0,
            state(1, 2).with_deadline(Some(at(10))),
            handled(2),
        )
        .await
        .expect("early");
    store
        .save(&none, 0, state(1, 3), handled(3))
        .await
        .expect("none");

    assert_eq!(mine(store.due(at(5), 10_000).await.expect("due")), []);
    assert_eq!(
        mine(store.due(at(15), 10_000).await.expect("due")),
        [("early".to_owned(), at(10))]
    );
    assert_eq!(
        mine(store.due(at(30), 10_000).await.expect("due")),
        [("early".to_owned(), at(10)), ("late".to_owned(), at(20))],
        "earliest first"
    );

    let fired = DueDeadline::new(early.clone(), at(10));
    assert!(store.mark_fired(&fired).await.expect("mark"));
    assert!(
        !store.mark_fired(&fired).await.expect("mark"),
        "marked once"
    );
    assert!(
        !store
            .mark_fired(&DueDeadline::new(late.clone(), at(21)))
            .await
            .expect("mark"),
        "not the pending deadline"
    );
    assert_eq!(
        mine(store.due(at(30), 10_000).await.expect("due")),
        [("late".to_owned(), at(20))]
    );
    // Another event, same deadline: still fired. A new deadline: pending again.
    store
        .save(
            &early,
            1,
            state(2, 4).with_deadline(Some(at(10))),
            handled(4),
        )
        .await
        .expect("same deadline");
    assert_eq!(mine(store.due(at(30), 10_000).await.expect("due")).len(), 1);
    store
        .save(
            &early,
            2,
            state(3, 5).with_deadline(Some(at(12))),
            handled(5),
        )
        .await
        .expect("new deadline");
    assert_eq!(
        mine(store.due(at(30), 10_000).await.expect("due")),
        [("early".to_owned(), at(12)), ("late".to_owned(), at(20))]
    );
    // Leave nothing due behind in a shared store.
    for (k, due_at) in [(&early, at(12)), (&late, at(20))] {
        store
            .mark_fired(&DueDeadline::new(k.clone(), due_at))
            .await
            .expect("mark");
    }
}

/// Pruning removes records at or below the floor of the saga's instances in the tenant only,
/// and every event at or below the floor still counts as handled, so a redelivery after the
/// prune is still a no-op; events above the floor keep their records, new ones are not handled.
pub async fn pruning_never_lets_a_duplicate_through<S: SagaStore>(store: &S) {
    let t = tenant();
    let (k, other) = (
        key(&t, "pruned"),
        SagaKey::new(t.clone(), "other-saga", "pruned"),
    );
    let events: Vec<HandledEvent> = [10, 30, 20].into_iter().map(handled).collect();
    for (n, event) in (0..).zip(&events) {
        store
            .save(&k, n, state(n + 1, event.position().position()), *event)
            .await
            .expect("save");
    }
    store
        .save(&other, 0, state(1, 10), events[0])
        .await
        .expect("other saga");
    let floor = LogPosition::new(20, 20);
    let removed = store.prune_handled(&t, SAGA, floor).await.expect("prune");
    assert_eq!(removed, 2, "the records at 10 and 20");
    for event in &events {
        assert!(
            store.load_for(&k, event).await.expect("load").handled,
            "{event:?} still counts as handled"
        );
    }
    assert!(
        !store
            .load_for(&k, &handled(40))
            .await
            .expect("load")
            .handled
    );
    assert!(
        store
            .load_for(&other, &events[0])
            .await
            .expect("load")
            .handled,
        "another saga's record is kept"
    );
    assert!(
        !store
            .load_for(&other, &events[2])
            .await
            .expect("load")
            .handled,
        "another saga has no floor"
    );
    // A lower floor later does not lower it.
    store
        .prune_handled(&t, SAGA, LogPosition::new(5, 5))
        .await
        .expect("prune");
    assert!(store.load_for(&k, &events[2]).await.expect("load").handled);
}

/// Fails its first dispatch, then records the commands it is given.
#[derive(Debug, Clone, Default)]
struct FlakyOnce {
    failed: Arc<AtomicBool>,
    issued: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("dispatch failed")]
struct DispatchFailed;

impl CommandDispatcher<String> for FlakyOnce {
    type Error = DispatchFailed;

    async fn dispatch(&self, command: String, _: &CommandContext) -> Result<(), DispatchFailed> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(DispatchFailed);
        }
        self.issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(command);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// Records every event type it reacts to; one instance per `payload.instance`.
#[derive(Debug, Clone, Copy)]
struct Recorder<const V: u32>;

impl<const V: u32> Saga for Recorder<V> {
    const NAME: &'static str = SAGA;
    const STATE_VERSION: u32 = V;
    type State = Vec<String>;
    type Command = String;
    type Error = Never;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.payload["instance"].as_str().map(str::to_owned)
    }

    fn react(&self, state: &mut Vec<String>, event: &RecordedEvent) -> Result<Vec<String>, Never> {
        state.push(event.event_type.clone());
        Ok(vec![format!("after {}", event.event_type)])
    }
}

/// Through a [`SagaHandler`]: the order's event fails its first delivery, the payment's (a later
/// log position, another stream) is handled, then both are redelivered. The order's event is
/// handled once, the payment's is not handled twice.
pub async fn a_redelivered_event_from_another_stream_is_handled_once<S: SagaStore + Clone>(
    store: &S,
) {
    let t = tenant();
    let placed = recorded(&t, "order", 100, "o-1");
    let paid = recorded(&t, "payment", 200, "o-1");
    let dispatcher = FlakyOnce::default();
    let saga = SagaHandler::new(Recorder::<1>, dispatcher.clone(), store.clone());

    assert!(saga.handle(&placed).await.is_err(), "first delivery fails");
    saga.handle(&paid)
        .await
        .expect("the payment stream moves on");
    saga.handle(&placed).await.expect("redelivered");
    saga.handle(&paid).await.expect("redelivered");

    assert_eq!(
        *dispatcher
            .issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        ["after payment-event", "after order-event"]
    );
    let stored = store
        .load(&key(&t, "o-1"))
        .await
        .expect("load")
        .expect("state");
    assert_eq!(stored.version, 2);
    assert_eq!(stored.state, json!(["payment-event", "order-event"]));
}

/// A stored state of another schema version is [`SagaError::State`] naming saga and instance,
/// permanent, and leaves the stored state as it was: never reset to the default.
pub async fn a_state_of_another_schema_version_is_a_typed_error<S: SagaStore + Clone>(store: &S) {
    let t = tenant();
    let (first, second) = (
        recorded(&t, "order", 1, "o-2"),
        recorded(&t, "order", 2, "o-2"),
    );
    let dispatcher = FlakyOnce::default();
    dispatcher.failed.store(true, Ordering::SeqCst);
    SagaHandler::new(Recorder::<1>, dispatcher.clone(), store.clone())
        .handle(&first)
        .await
        .expect("version 1");
    let before = store.load(&key(&t, "o-2")).await.expect("load");

    let upgraded = SagaHandler::new(Recorder::<2>, dispatcher.clone(), store.clone());
    let error = upgraded.handle(&second).await.expect_err("version 1 state");
    assert!(
        matches!(&error, SagaError::State(e)
            if e.saga == SAGA && e.instance == "o-2" && e.tenant == t
                && e.stored_version == 1 && e.expected_version == 2),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(SAGA) && message.contains("o-2"),
        "{message}"
    );
    assert!(upgraded.is_permanent(&error));
    assert_eq!(
        store.load(&key(&t, "o-2")).await.expect("load"),
        before,
        "untouched"
    );

    // A state of the right version that no longer deserializes: the same typed error.
    let broken = store
        .load(&key(&t, "o-2"))
        .await
        .expect("load")
        .expect("state");
    store
        .save(
            &key(&t, "o-2"),
            broken.version,
            SagaState::new(
                json!({ "not": "a list" }),
                1,
                broken.version + 1,
                broken.last_position,
            ),
            handled(3),
        )
        .await
        .expect("save");
    let error = SagaHandler::new(Recorder::<1>, dispatcher, store.clone())
        .handle(&second)
        .await
        .expect_err("does not decode");
    assert!(
        matches!(&error, SagaError::State(e) if e.instance == "o-2" && e.source.is_some()),
        "{error:?}"
    );
    assert_eq!(
        store
            .load(&key(&t, "o-2"))
            .await
            .expect("load")
            .expect("state")
            .state,
        json!({ "not": "a list" }),
        "never reset"
    );
}
