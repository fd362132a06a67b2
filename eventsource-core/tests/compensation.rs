//! Compensation (issue 15, item 4): a saga hears its rejected command as an outcome and
//! undoes its completed steps, last first, each once, through redeliveries and crashes; a
//! deadline passing compensates too; the compensations are recorded in the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventsource_core::{
    Aggregate, Compensations, DeadlineRunner, DomainEvent, EventHandler, EventStore,
    ExpectedVersion, HandledEvent, InMemoryEventStore, InMemorySagaStore, LogFilter, LogPosition,
    NewEvent, RecordedEvent, Rejection, Repository, Saga, SagaHandler, SagaKey, SagaState,
    SagaStore, StoreError, StreamId, TenantId, VersionRange,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum ResourceEvent {
    Taken { order: String },
    Released { order: String },
}

/// A resource an order takes; one whose id starts with `broken` refuses to be taken.
#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "resource", event = ResourceEvent)]
struct Resource {
    taken: u32,
}

impl ResourceEventHandler for Resource {
    fn when_taken(&mut self, _: resource_event::Taken) {
        self.taken += 1;
    }
    fn when_released(&mut self, _: resource_event::Released) {
        self.taken = self.taken.saturating_sub(1);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ResourceCommand {
    Take { order: String },
    Release { order: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("resource unavailable")]
struct Unavailable;

impl eventsource_core::Handle for Resource {
    type Command = (bool, ResourceCommand);
    type Error = Unavailable;

    fn handle(&self, (broken, c): Self::Command) -> Result<Vec<ResourceEvent>, Unavailable> {
        match c {
            ResourceCommand::Take { .. } if broken => Err(Unavailable),
            ResourceCommand::Take { order } => Ok(vec![ResourceEvent::Taken { order }]),
            ResourceCommand::Release { order } => Ok(vec![ResourceEvent::Released { order }]),
        }
    }
}

/// Books an order's resources one `step` event at a time; a rejected step or a deadline
/// passing undoes the booked ones.
struct Booking;

type Command = (String, (bool, ResourceCommand));

#[derive(Debug, Default, Serialize, Deserialize)]
struct BookingState {
    /// Steps issued so far.
    booked: u32,
    failed: Option<String>,
    due: Option<chrono::DateTime<chrono::Utc>>,
    compensations: Compensations<Command>,
}

impl Saga for Booking {
    const NAME: &'static str = "booking";
    type State = BookingState;
    type Command = Command;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.payload["booking"].as_str().map(str::to_owned)
    }

    fn react(
        &self,
        state: &mut BookingState,
        event: &RecordedEvent,
    ) -> Result<Vec<Command>, Self::Error> {
        if eventsource_core::DeadlineReached::from_event(event).is_some() {
            state.failed = Some("timed out".into());
            state.due = None;
            state.compensations.compensate();
            return Ok(vec![]);
        }
        if let Some(minutes) = event.payload["timeout_minutes"].as_i64() {
            state.due = Some(event.recorded_at + chrono::Duration::minutes(minutes));
        }
        state.booked += 1;
        let resource = event.payload["resource"].as_str().expect("resource");
        let order = event.payload["booking"]
            .as_str()
            .expect("booking")
            .to_owned();
        Ok(vec![(
            resource.to_owned(),
            (
                resource.starts_with("broken"),
                ResourceCommand::Take { order },
            ),
        )])
    }

    fn deadline(&self, state: &BookingState) -> Option<chrono::DateTime<chrono::Utc>> {
        state.due
    }

    fn compensation(&self, (id, (broken, command)): &Command) -> Option<Command> {
        match command {
            ResourceCommand::Take { order } => Some((
                id.clone(),
                (
                    *broken,
                    ResourceCommand::Release {
                        order: order.clone(),
                    },
                ),
            )),
            ResourceCommand::Release { .. } => None,
        }
    }

    fn compensations<'s>(
        &self,
        state: &'s mut BookingState,
    ) -> Option<&'s mut Compensations<Command>> {
        Some(&mut state.compensations)
    }

    fn on_rejected(
        &self,
        state: &mut BookingState,
        rejection: &Rejection<'_>,
    ) -> Result<Option<Vec<Command>>, Self::Error> {
        // The aggregate's own error, not a string.
        assert_eq!(
            rejection.error.downcast_ref::<Unavailable>(),
            Some(&Unavailable)
        );
        state.failed = Some(format!("step {} rejected", state.booked));
        state.due = None;
        state.compensations.compensate();
        Ok(Some(vec![]))
    }
}

/// Appends a `step` event of booking `booking` taking `resource`; returns it as recorded.
async fn step(
    store: &InMemoryEventStore,
    booking: &str,
    resource: &str,
    timeout_minutes: Option<i64>,
) -> RecordedEvent {
    let stream = StreamId::new(TenantId::default(), "booking-request", booking);
    let mut payload = serde_json::json!({ "booking": booking, "resource": resource });
    if let Some(minutes) = timeout_minutes {
        payload["timeout_minutes"] = minutes.into();
    }
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("step", 1, payload)],
        )
        .await
        .expect("append");
    store
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read")
        .pop()
        .expect("event")
}

/// The resource events of `booking`, in log order, as `(resource, event type)`.
async fn resource_log(store: &InMemoryEventStore) -> Vec<(String, String)> {
    store
        .read_all(LogPosition::START, 1000, &LogFilter::all())
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.stream.aggregate_type() == "resource")
        .map(|e| (e.stream.aggregate_id().to_owned(), e.event_type.clone()))
        .collect()
}

fn key(instance: &str) -> SagaKey {
    SagaKey::new(TenantId::default(), "booking", instance)
}

fn booked(resource: &str) -> (String, String) {
    (resource.to_owned(), "Taken".to_owned())
}

fn released(resource: &str) -> (String, String) {
    (resource.to_owned(), "Released".to_owned())
}

async fn stored_state(states: &impl SagaStore, instance: &str) -> BookingState {
    let stored = states
        .load(&key(instance))
        .await
        .expect("load")
        .expect("state");
    serde_json::from_value(stored.state).expect("decode")
}

/// Steps 1 and 2 take their resources; step 3's is rejected: the saga compensates step 2,
/// then step 1, once each, and records both; redelivering any of the three events changes
/// nothing.
#[tokio::test]
async fn a_rejected_third_step_compensates_the_second_then_the_first_once() {
    let store = InMemoryEventStore::new();
    let resources = Repository::<Resource, _>::new(store.clone());
    let states = InMemorySagaStore::new();
    let saga = SagaHandler::new(Booking, resources.clone(), states.clone());

    let events = [
        step(&store, "b-1", "room", None).await,
        step(&store, "b-1", "car", None).await,
        step(&store, "b-1", "broken-flight", None).await,
    ];
    for event in &events {
        saga.handle(event).await.expect("handled");
    }
    for event in &events {
        saga.handle(event).await.expect("redelivery is a no-op");
    }

    assert_eq!(
        resource_log(&store).await,
        [
            booked("room"),
            booked("car"),
            released("car"),
            released("room")
        ],
        "the completed steps undone last first, once each; the rejected one wrote nothing"
    );
    let state = stored_state(&states, "b-1").await;
    assert_eq!(state.failed.as_deref(), Some("step 3 rejected"));
    assert!(state.compensations.pending().is_empty());
    let ran: Vec<&str> = state
        .compensations
        .ran()
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        ran,
        ["car", "room"],
        "the compensations are recorded in order"
    );
    let releases = store
        .read_stream(&resources.stream_id("car"), VersionRange::all())
        .await
        .expect("read");
    assert_eq!(
        releases[1].metadata.causation_id,
        Some(*events[2].event_id.as_uuid()),
        "a compensation is caused by the event whose step failed"
    );
}

/// A saga store whose first save of a chosen event fails, as when the process dies after the
/// commands were dispatched and before the state was stored.
#[derive(Clone)]
struct CrashOnSave {
    inner: InMemorySagaStore,
    event: eventsource_core::EventId,
    crashed: Arc<AtomicBool>,
}

impl SagaStore for CrashOnSave {
    async fn load(&self, key: &SagaKey) -> Result<Option<SagaState>, StoreError> {
        self.inner.load(key).await
    }

    async fn load_for(
        &self,
        key: &SagaKey,
        event: &HandledEvent,
    ) -> Result<eventsource_core::Loaded, StoreError> {
        self.inner.load_for(key, event).await
    }

    async fn save(
        &self,
        key: &SagaKey,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> Result<(), StoreError> {
        if handled.event_id() == self.event && !self.crashed.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("crashed before saving".into()));
        }
        self.inner.save(key, expected, state, handled).await
    }

    async fn due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<eventsource_core::DueDeadline>, StoreError> {
        self.inner.due(now, limit).await
    }

    async fn mark_fired(
        &self,
        deadline: &eventsource_core::DueDeadline,
    ) -> Result<bool, StoreError> {
        self.inner.mark_fired(deadline).await
    }

    async fn prune_handled(
        &self,
        tenant: &TenantId,
        saga: &str,
        floor: LogPosition,
    ) -> Result<u64, StoreError> {
        self.inner.prune_handled(tenant, saga, floor).await
    }
}

/// The handler dispatches step 3's compensations, then dies before storing the state: the
/// redelivered event runs the same compensations with the same event ids, which append
/// nothing twice, and stores the state once.
#[tokio::test]
async fn compensations_dispatched_before_a_crash_are_not_appended_twice() {
    let store = InMemoryEventStore::new();
    let resources = Repository::<Resource, _>::new(store.clone());
    let events = [
        step(&store, "b-2", "room", None).await,
        step(&store, "b-2", "car", None).await,
        step(&store, "b-2", "broken-flight", None).await,
    ];
    let states = CrashOnSave {
        inner: InMemorySagaStore::new(),
        event: events[2].event_id,
        crashed: Arc::new(AtomicBool::new(false)),
    };
    let saga = SagaHandler::new(Booking, resources, states.clone());
    for event in &events[..2] {
        saga.handle(event).await.expect("handled");
    }
    assert!(
        saga.handle(&events[2]).await.is_err(),
        "crashed before saving"
    );
    saga.handle(&events[2]).await.expect("redelivered");
    saga.handle(&events[2]).await.expect("redelivered again");

    assert_eq!(
        resource_log(&store).await,
        [
            booked("room"),
            booked("car"),
            released("car"),
            released("room")
        ]
    );
    let state = stored_state(&states.inner, "b-2").await;
    assert_eq!(state.compensations.ran().len(), 2);
}

/// A deadline passing before the last step compensates the booked steps, last first, once,
/// even when the deadline runner fires it twice and the saga hears it twice.
#[tokio::test]
async fn a_deadline_passing_compensates_once() {
    let store = InMemoryEventStore::new();
    let resources = Repository::<Resource, _>::new(store.clone());
    let states = InMemorySagaStore::new();
    let saga = SagaHandler::new(Booking, resources, states.clone());
    let mut deadlines = DeadlineRunner::new(states.clone(), store.clone());

    for event in [
        step(&store, "b-3", "room", Some(10)).await,
        step(&store, "b-3", "car", None).await,
    ] {
        saga.handle(&event).await.expect("handled");
    }
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(deadlines.fire_due(later).await.expect("fire"), 1);
    DeadlineRunner::new(states.clone(), store.clone())
        .fire_due(later)
        .await
        .expect("a restarted runner fires again");
    let log = store
        .read_all(LogPosition::START, 1000, &LogFilter::all())
        .await
        .expect("read");
    let fired: Vec<&RecordedEvent> = log
        .iter()
        .filter(|e| e.event_type == eventsource_core::DEADLINE_REACHED)
        .collect();
    assert_eq!(fired.len(), 1, "one deadline event");
    saga.handle(fired[0]).await.expect("deadline handled");
    saga.handle(fired[0]).await.expect("redelivered deadline");

    assert_eq!(
        resource_log(&store).await,
        [
            booked("room"),
            booked("car"),
            released("car"),
            released("room")
        ]
    );
    let state = stored_state(&states, "b-3").await;
    assert_eq!(state.failed.as_deref(), Some("timed out"));
    assert_eq!(state.compensations.ran().len(), 2);
    assert!(states.due(later, 10).await.expect("due").is_empty());
}

/// A saga that keeps no compensations hears no rejection: the rejected command still fails
/// the delivery, as before compensation existed.
#[tokio::test]
async fn a_saga_without_compensations_fails_on_a_rejection() {
    struct Plain;
    impl Saga for Plain {
        const NAME: &'static str = "plain";
        type State = u32;
        type Command = Command;
        type Error = std::convert::Infallible;
        fn correlate(&self, event: &RecordedEvent) -> Option<String> {
            Booking.correlate(event)
        }
        fn react(&self, _: &mut u32, _: &RecordedEvent) -> Result<Vec<Command>, Self::Error> {
            Ok(vec![(
                "broken-x".into(),
                (true, ResourceCommand::Take { order: "o".into() }),
            )])
        }
    }
    let store = InMemoryEventStore::new();
    let saga = SagaHandler::new(
        Plain,
        Repository::<Resource, _>::new(store.clone()),
        InMemorySagaStore::new(),
    );
    let event = step(&store, "p-1", "broken-x", None).await;
    let err = saga.handle(&event).await.expect_err("rejected");
    assert!(
        matches!(err, eventsource_core::SagaError::Dispatch(ref e) if e.rejection() == Some(&Unavailable)),
        "{err}"
    );
    assert!(!saga.is_permanent(&err));
}

mod kit {
    //! The saga test kit runs the same scenarios without a store.

    use eventsource_core::testing::{SagaDeliveryError, SagaScenario, recorded};

    use super::*;

    fn step(booking: &str, resource: &str, timeout_minutes: Option<i64>) -> RecordedEvent {
        let stream = StreamId::new(TenantId::default(), "booking-request", booking);
        let mut payload = serde_json::json!({ "booking": booking, "resource": resource });
        if let Some(minutes) = timeout_minutes {
            payload["timeout_minutes"] = minutes.into();
        }
        recorded(stream, NewEvent::new("step", 1, payload))
    }

    fn take(resource: &str, order: &str) -> Command {
        let broken = resource.starts_with("broken");
        let order = order.to_owned();
        (
            resource.to_owned(),
            (broken, ResourceCommand::Take { order }),
        )
    }

    fn release(resource: &str, order: &str) -> Command {
        let broken = resource.starts_with("broken");
        let order = order.to_owned();
        (
            resource.to_owned(),
            (broken, ResourceCommand::Release { order }),
        )
    }

    fn broken_resources(command: &Command) -> Option<Unavailable> {
        let (_, (broken, command)) = command;
        (*broken && matches!(command, ResourceCommand::Take { .. })).then_some(Unavailable)
    }

    #[test]
    fn a_rejected_third_step_compensates_the_second_then_the_first() {
        let third = step("b-1", "broken-flight", None);
        SagaScenario::new(Booking)
            .rejecting(broken_resources)
            .given([step("b-1", "room", None), step("b-1", "car", None)])
            .when(third.clone())
            .then_commands([take("broken-flight", "b-1")])
            .then_compensations([release("car", "b-1"), release("room", "b-1")])
            .then_deadline(None)
            .then_state(|state| {
                assert_eq!(state.failed.as_deref(), Some("step 3 rejected"));
                assert_eq!(
                    state.compensations.ran(),
                    [release("car", "b-1"), release("room", "b-1")]
                );
                assert!(state.compensations.pending().is_empty());
            })
            .and()
            .when(third)
            .then_skipped()
            .then_compensations([]);
    }

    #[test]
    fn completed_steps_record_their_compensations() {
        SagaScenario::new(Booking)
            .given([step("b-2", "room", None)])
            .when(step("b-2", "car", None))
            .then_commands([take("car", "b-2")])
            .then_compensations([])
            .then_state(|state| {
                assert_eq!(
                    state.compensations.pending(),
                    [release("room", "b-2"), release("car", "b-2")]
                );
            });
    }

    #[test]
    fn a_deadline_passing_compensates_once() {
        let first = step("b-3", "room", Some(10));
        let due = first.recorded_at + chrono::Duration::minutes(10);
        SagaScenario::new(Booking)
            .given([first])
            .when(step("b-3", "car", None))
            .then_deadline(due)
            .and()
            .when_deadline()
            .then_commands([])
            .then_compensations([release("car", "b-3"), release("room", "b-3")])
            .then_deadline(None)
            .then_state(|state| assert_eq!(state.failed.as_deref(), Some("timed out")));
    }

    #[test]
    fn a_rejection_the_saga_does_not_hear_fails_the_delivery() {
        struct Plain;
        impl Saga for Plain {
            const NAME: &'static str = "plain";
            type State = u32;
            type Command = Command;
            type Error = std::convert::Infallible;
            fn correlate(&self, event: &RecordedEvent) -> Option<String> {
                Booking.correlate(event)
            }
            fn react(&self, _: &mut u32, e: &RecordedEvent) -> Result<Vec<Command>, Self::Error> {
                Ok(vec![take(
                    e.payload["resource"].as_str().expect("resource"),
                    "p",
                )])
            }
        }
        SagaScenario::new(Plain)
            .rejecting(broken_resources)
            .when(step("p-1", "broken-x", None))
            .then_error(|e| {
                assert!(matches!(e, SagaDeliveryError::Rejected(_)), "{e}");
            });
    }
}
