//! Typed projections, consumer handlers and sagas: events of other types are skipped without
//! decoding, the envelope reaches the handler, an undecodable payload is permanent.

use std::sync::{Arc, Mutex};

use eventsource_core::{
    CommandContext, CommandDispatcher, DEADLINE_REACHED, DeadlineReached, Dispatch, DomainEvent,
    Either, Envelope, EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore,
    InMemoryEventStore, InMemorySagaStore, LogPosition, Metadata, NewEvent, ProjectionError,
    ProjectionRunner, RecordedEvent, SagaHandler, StreamId, TenantId, Typed, TypedError,
    TypedHandler, TypedProjection, TypedSaga, VersionRange,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(name = "order-placed")]
    Placed { sku: String, qty: u32 },
    #[event(name = "order-cancelled")]
    Cancelled,
}

async fn append(store: &InMemoryEventStore, id: &str, events: Vec<NewEvent>) -> Vec<RecordedEvent> {
    let stream = StreamId::new(TenantId::default(), "order", id);
    store
        .append(&stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
    store
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read")
}

fn placed(qty: u32) -> NewEvent {
    NewEvent::from_event(&OrderEvent::Placed {
        sku: "sku-1".into(),
        qty,
    })
    .expect("encodes")
}

/// Another enum's event in the same log, with a payload `OrderEvent` could never decode.
fn foreign() -> NewEvent {
    NewEvent::new("invoice-sent", 1, serde_json::json!(["not", "an", "order"]))
}

/// An event with an `OrderEvent` name whose payload does not match its fields.
fn broken() -> NewEvent {
    NewEvent::new("order-placed", 1, serde_json::json!({ "sku": 7 }))
}

/// Quantities per stream, one method per variant through the generated handler trait.
#[derive(Debug, Default)]
struct Quantities {
    placed: u32,
    cancelled: u32,
    streams: Vec<String>,
}

impl OrderEventHandler for Quantities {
    fn when_placed(&mut self, e: order_event::Placed) {
        self.placed += e.qty;
    }

    fn when_cancelled(&mut self) {
        self.cancelled += 1;
    }
}

impl TypedProjection for Quantities {
    type Event = OrderEvent;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "quantities"
    }

    async fn apply(&mut self, event: &Envelope<OrderEvent>) -> Result<(), Self::Error> {
        self.streams.push(event.stream.aggregate_id().to_owned());
        event.payload.dispatch(self);
        Ok(())
    }
}

#[tokio::test]
async fn a_typed_projection_folds_its_events_and_skips_others() {
    let store = InMemoryEventStore::new();
    let cancelled = NewEvent::from_event(&OrderEvent::Cancelled).expect("encodes");
    append(&store, "o-1", vec![placed(2), foreign(), placed(3)]).await;
    append(&store, "o-2", vec![foreign(), cancelled]).await;
    let checkpoints = InMemoryCheckpointStore::new();
    let mut runner = ProjectionRunner::new(store, checkpoints, Typed::new(Quantities::default()));
    runner.catch_up().await.expect("catch up");
    let quantities = runner.projection().get_ref();
    assert_eq!((quantities.placed, quantities.cancelled), (5, 1));
    assert_eq!(quantities.streams, ["o-1", "o-1", "o-2"]);
}

#[tokio::test]
async fn an_undecodable_event_halts_a_typed_projection_naming_it() {
    let store = InMemoryEventStore::new();
    append(&store, "o-1", vec![placed(2)]).await;
    let bad = append(&store, "o-2", vec![broken()]).await.remove(0);
    append(&store, "o-3", vec![placed(1)]).await;
    let checkpoints = InMemoryCheckpointStore::new();
    let mut runner = ProjectionRunner::new(
        store,
        checkpoints.clone(),
        Typed::new(Quantities::default()),
    )
    .with_batch_size(1);
    let error = runner.catch_up().await.expect_err("halts");
    let ProjectionError::Apply { position, source } = &error else {
        panic!("expected an apply error, got {error:?}");
    };
    assert_eq!(*position, bad.position);
    let TypedError::Decode(decode) = source else {
        panic!("expected a decode error, got {source:?}");
    };
    assert_eq!(decode.event_id(), bad.event_id);
    assert_eq!(decode.stream().aggregate_id(), "o-2");
    assert_eq!(decode.event_type(), "order-placed");
    assert_eq!(
        runner.projection().get_ref().placed,
        2,
        "nothing after the bad event"
    );
    let checkpoint = eventsource_core::CheckpointStore::load(&checkpoints, "quantities")
        .await
        .expect("load");
    assert!(checkpoint.is_some_and(|c| c < bad.position));
}

/// Sku, actor and quantity of a handled order.
type Sighting = (String, Option<String>, u32);

/// Records what a consumer handler saw of each envelope.
#[derive(Debug, Default, Clone)]
struct Seen(Arc<Mutex<Vec<Sighting>>>);

#[derive(Debug, thiserror::Error)]
#[error("sku is sold out")]
struct SoldOut;

impl TypedHandler for Seen {
    type Event = OrderEvent;
    type Error = SoldOut;

    async fn handle(&self, event: &Envelope<OrderEvent>) -> Result<(), SoldOut> {
        let OrderEvent::Placed { sku, qty } = &event.payload else {
            return Ok(());
        };
        if *qty > 100 {
            return Err(SoldOut);
        }
        self.0
            .lock()
            .expect("lock")
            .push((sku.clone(), event.metadata.actor.clone(), *qty));
        Ok(())
    }

    fn is_permanent(&self, _: &SoldOut) -> bool {
        true
    }
}

#[tokio::test]
async fn a_typed_consumer_handler_gets_the_envelope_and_reports_decoding_as_permanent() {
    let store = InMemoryEventStore::new();
    let with_actor = placed(4).with_metadata(Metadata::new().with_actor("clerk"));
    let events = append(
        &store,
        "o-1",
        vec![with_actor, foreign(), broken(), placed(101)],
    )
    .await;
    let seen = Seen::default();
    let handler = Typed::new(seen.clone());

    handler.handle(&events[0]).await.expect("handled");
    handler.handle(&events[1]).await.expect("skipped");
    assert_eq!(
        *seen.0.lock().expect("lock"),
        [("sku-1".to_owned(), Some("clerk".to_owned()), 4)]
    );

    let error = handler.handle(&events[2]).await.expect_err("undecodable");
    assert!(matches!(&error, TypedError::Decode(e) if e.event_id() == events[2].event_id));
    assert!(handler.is_permanent(&error));

    let error = handler.handle(&events[3]).await.expect_err("sold out");
    assert!(matches!(error, TypedError::Handler(SoldOut)));
    assert!(handler.is_permanent(&error), "the handler's own verdict");
}

/// Reserves stock for each order; cancels it when the order's deadline passes.
struct Reservations;

#[derive(Debug, Default, Serialize, Deserialize)]
struct ReservationState {
    reserved: u32,
    expired: bool,
}

impl TypedSaga for Reservations {
    const NAME: &'static str = "reservations";
    type Event = OrderEvent;
    type State = ReservationState;
    type Command = String;
    type Error = std::convert::Infallible;

    fn correlate(&self, event: &Envelope<OrderEvent>) -> Option<String> {
        Some(event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        state: &mut ReservationState,
        event: &Envelope<OrderEvent>,
    ) -> Result<Vec<String>, Self::Error> {
        match &event.payload {
            OrderEvent::Placed { sku, qty } => {
                state.reserved += qty;
                Ok(vec![format!("reserve {qty} {sku}")])
            }
            OrderEvent::Cancelled => Ok(vec![]),
        }
    }

    fn on_deadline(
        &self,
        state: &mut ReservationState,
        _: &DeadlineReached,
    ) -> Result<Vec<String>, Self::Error> {
        state.expired = true;
        Ok(vec![format!("release {}", state.reserved)])
    }
}

/// Collects dispatched commands.
#[derive(Debug, Default, Clone)]
struct Commands(Arc<Mutex<Vec<String>>>);

impl CommandDispatcher<String> for Commands {
    type Error = std::convert::Infallible;

    async fn dispatch(&self, command: String, _: &CommandContext) -> Result<(), Self::Error> {
        self.0.lock().expect("lock").push(command);
        Ok(())
    }
}

#[tokio::test]
async fn a_typed_saga_reacts_to_its_events_and_deadlines() {
    let store = InMemoryEventStore::new();
    let events = append(&store, "o-1", vec![placed(2), foreign(), broken()]).await;
    let commands = Commands::default();
    let states = InMemorySagaStore::new();
    let saga = SagaHandler::new(Typed::new(Reservations), commands.clone(), states.clone());

    saga.handle(&events[0]).await.expect("reacts");
    saga.handle(&events[1]).await.expect("skips another type");
    let error = saga.handle(&events[2]).await.expect_err("undecodable");
    assert!(saga.is_permanent(&error), "{error:?}");

    // The deadline event reaches `on_deadline` on its instance (no deadline pending is needed
    // for a saga with none set, so store one first).
    let due_at = chrono::Utc::now();
    let key = eventsource_core::SagaKey::new(events[0].tenant().clone(), "reservations", "o-1");
    let mut state = eventsource_core::SagaStore::load(&states, &key)
        .await
        .expect("load")
        .expect("state");
    let version = state.version;
    state.deadline = Some(due_at);
    let other = eventsource_core::HandledEvent::new(
        eventsource_core::EventId::new(),
        LogPosition::new(u64::MAX - 1, u64::MAX - 1),
    );
    eventsource_core::SagaStore::save(&states, &key, version, state, other)
        .await
        .expect("save");
    let deadline = RecordedEvent {
        event_type: DEADLINE_REACHED.to_owned(),
        payload: serde_json::json!({ "saga": "reservations", "instance": "o-1", "due_at": due_at }),
        position: LogPosition::new(u64::MAX, u64::MAX),
        event_id: eventsource_core::EventId::new(),
        ..events[1].clone()
    };
    saga.handle(&deadline).await.expect("deadline");
    assert_eq!(
        *commands.0.lock().expect("lock"),
        ["reserve 2 sku-1", "release 2"]
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum StockEvent {
    #[event(name = "stock-reserved")]
    Reserved { sku: String, qty: u32 },
}

/// Net quantity per sku across two aggregates' enums.
#[derive(Debug, Default)]
struct Net(i64);

impl TypedProjection for Net {
    type Event = Either<OrderEvent, StockEvent>;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "net"
    }

    async fn apply(&mut self, event: &Envelope<Self::Event>) -> Result<(), Self::Error> {
        match &event.payload {
            Either::Left(OrderEvent::Placed { qty, .. }) => self.0 += i64::from(*qty),
            Either::Left(OrderEvent::Cancelled) => {}
            Either::Right(StockEvent::Reserved { qty, .. }) => self.0 -= i64::from(*qty),
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_typed_projection_takes_the_events_of_two_enums() {
    let store = InMemoryEventStore::new();
    let reserved = NewEvent::from_event(&StockEvent::Reserved {
        sku: "sku-1".into(),
        qty: 3,
    })
    .expect("encodes");
    append(&store, "o-1", vec![placed(5), foreign(), reserved]).await;
    let mut runner = ProjectionRunner::new(
        store,
        InMemoryCheckpointStore::new(),
        Typed::new(Net::default()),
    );
    assert_eq!(runner.catch_up().await.expect("catch up"), 3);
    assert_eq!(runner.projection().get_ref().0, 2);
}

/// Reserves each placed order's stock and keeps compensations; a typed saga declares them
/// as an untyped one does.
struct CompensatingReservations;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reserved {
    steps: eventsource_core::Compensations<String>,
}

impl TypedSaga for CompensatingReservations {
    const NAME: &'static str = "compensating-reservations";
    type Event = OrderEvent;
    type State = Reserved;
    type Command = String;
    type Error = std::convert::Infallible;

    fn correlate(&self, _: &Envelope<OrderEvent>) -> Option<String> {
        Some("all".to_owned())
    }

    fn react(
        &self,
        _: &mut Reserved,
        event: &Envelope<OrderEvent>,
    ) -> Result<Vec<String>, Self::Error> {
        Ok(match &event.payload {
            OrderEvent::Placed { sku, qty } => vec![format!("reserve {qty} {sku}")],
            OrderEvent::Cancelled => vec![],
        })
    }

    fn compensation(&self, command: &String) -> Option<String> {
        command
            .strip_prefix("reserve ")
            .map(|rest| format!("release {rest}"))
    }

    fn compensations<'s>(
        &self,
        state: &'s mut Reserved,
    ) -> Option<&'s mut eventsource_core::Compensations<String>> {
        Some(&mut state.steps)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("out of stock")]
struct OutOfStock;

#[test]
fn a_typed_saga_compensates_a_rejected_step() {
    use eventsource_core::testing::{SagaScenario, recorded};

    let order = |qty| {
        recorded(
            StreamId::new(TenantId::default(), "order", "o-1"),
            placed(qty),
        )
    };
    SagaScenario::new(Typed::new(CompensatingReservations))
        .rejecting(|command: &String| command.starts_with("reserve 99").then_some(OutOfStock))
        .given([order(1), order(2)])
        .when(order(99))
        .then_commands(["reserve 99 sku-1".to_owned()])
        .then_compensations(["release 2 sku-1".to_owned(), "release 1 sku-1".to_owned()])
        .then_state(|state| assert_eq!(state.steps.ran().len(), 2));
}
