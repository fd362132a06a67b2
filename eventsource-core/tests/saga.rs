//! Sagas: commands carry correlation and causation, redelivery is a no-op, and a crash between
//! dispatching and saving state appends nothing twice.

use eventsource_core::{
    Aggregate, DomainEvent, EventHandler, EventStore, ExpectedVersion, Handle, InMemoryEventStore,
    InMemorySagaStore, LogFilter, LogPosition, NewEvent, RecordedEvent, Repository, Saga,
    SagaHandler, SagaKey, SagaState, SagaStore, StreamId, TenantId, VersionRange,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum StockEvent {
    Reserved { order: String, qty: u32 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "stock", event = StockEvent)]
struct Stock {
    reserved: u32,
}

impl StockEventHandler for Stock {
    fn when_reserved(&mut self, e: stock_event::Reserved) {
        self.reserved += e.qty;
    }
}

#[derive(Debug, Clone)]
struct Reserve {
    order: String,
    qty: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Stock {
    type Command = Reserve;
    type Error = Never;

    fn handle(&self, c: Reserve) -> Result<Vec<StockEvent>, Never> {
        Ok(vec![StockEvent::Reserved {
            order: c.order,
            qty: c.qty,
        }])
    }
}

/// Reserves stock for each placed order.
struct Fulfilment;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FulfilmentState {
    lines: u32,
}

impl Saga for Fulfilment {
    const NAME: &'static str = "fulfilment";
    type State = FulfilmentState;
    type Command = (String, Reserve);
    type Error = Never;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "order-placed").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        state: &mut FulfilmentState,
        event: &RecordedEvent,
    ) -> Result<Vec<(String, Reserve)>, Never> {
        state.lines += 1;
        let order = event.stream.aggregate_id().to_owned();
        Ok(vec![
            (
                "sku-1".into(),
                Reserve {
                    order: order.clone(),
                    qty: 2,
                },
            ),
            ("sku-2".into(), Reserve { order, qty: 1 }),
        ])
    }
}

fn key(saga: &str, instance: &str) -> SagaKey {
    SagaKey::new(TenantId::default(), saga, instance)
}

async fn place_order(store: &InMemoryEventStore, id: &str) -> RecordedEvent {
    let stream = StreamId::new(TenantId::default(), "order", id);
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("order-placed", 1, serde_json::json!({}))],
        )
        .await
        .expect("append");
    store
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read")
        .remove(0)
}

#[tokio::test]
async fn saga_issues_correlated_commands_once() {
    let store = InMemoryEventStore::new();
    let stock = Repository::<Stock, _>::new(store.clone());
    let states = InMemorySagaStore::new();
    let saga = SagaHandler::new(Fulfilment, stock.clone(), states.clone());

    let placed = place_order(&store, "o-1").await;
    saga.handle(&placed).await.expect("first delivery");
    saga.handle(&placed).await.expect("redelivery is a no-op");

    let reserved = store
        .read_stream(&stock.stream_id("sku-1"), VersionRange::all())
        .await
        .expect("read");
    assert_eq!(reserved.len(), 1, "redelivery issued nothing");
    let meta = &reserved[0].metadata;
    assert_eq!(meta.causation_id, Some(*placed.event_id.as_uuid()));
    assert_eq!(meta.correlation_id, Some(*placed.event_id.as_uuid()));
    let state = states
        .load(&key("fulfilment", "o-1"))
        .await
        .expect("load")
        .expect("state");
    assert_eq!(state.version, 1);
    assert_eq!(state.last_position, placed.position);

    // Events the saga does not correlate are ignored.
    let other = NewEvent::new("order-shipped", 1, serde_json::json!({}));
    store
        .append(
            &StreamId::new(TenantId::default(), "order", "o-1"),
            ExpectedVersion::Any,
            vec![other],
        )
        .await
        .expect("append");
    let log = store
        .read_all(LogPosition::START, 100, &LogFilter::all())
        .await
        .expect("read");
    saga.handle(log.last().expect("event"))
        .await
        .expect("ignored");
    assert_eq!(store.len(), 4);
}

#[tokio::test]
async fn crash_between_dispatch_and_state_save_appends_nothing_twice() {
    let store = InMemoryEventStore::new();
    let stock = Repository::<Stock, _>::new(store.clone());
    let placed = place_order(&store, "o-2").await;

    // First delivery dispatches its commands, then "crashes" before saving state: simulate by
    // discarding the saga store.
    SagaHandler::new(Fulfilment, stock.clone(), InMemorySagaStore::new())
        .handle(&placed)
        .await
        .expect("first delivery");
    let fresh_state = InMemorySagaStore::new();
    SagaHandler::new(Fulfilment, stock.clone(), fresh_state.clone())
        .handle(&placed)
        .await
        .expect("redelivery after the crash");

    for sku in ["sku-1", "sku-2"] {
        let events = store
            .read_stream(&stock.stream_id(sku), VersionRange::all())
            .await
            .expect("read");
        assert_eq!(
            events.len(),
            1,
            "{sku}: the re-dispatched command was deduplicated"
        );
    }
    assert_eq!(stock.load("sku-1").await.expect("load").state().reserved, 2);
    assert!(matches!(
        fresh_state
            .load(&key("fulfilment", "o-2"))
            .await
            .expect("load"),
        Some(SagaState { version: 1, .. })
    ));
}

/// Waits for payment after an order is placed; without payment by the deadline it releases
/// the stock it reserved (compensation).
struct PaymentTimeout {
    timeout: chrono::Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Awaiting {
    due: Option<chrono::DateTime<chrono::Utc>>,
    released: bool,
}

impl Saga for PaymentTimeout {
    const NAME: &'static str = "payment-timeout";
    type State = Awaiting;
    type Command = (String, Reserve);
    type Error = Never;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        matches!(event.event_type.as_str(), "order-placed" | "order-paid")
            .then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        state: &mut Awaiting,
        event: &RecordedEvent,
    ) -> Result<Vec<(String, Reserve)>, Never> {
        if eventsource_core::DeadlineReached::from_event(event).is_some() {
            state.due = None;
            state.released = true;
            // Compensation: give the reserved unit back (a negative reservation, for brevity).
            return Ok(vec![(
                "sku-1".into(),
                Reserve {
                    order: "release".into(),
                    qty: 0,
                },
            )]);
        }
        match event.event_type.as_str() {
            "order-placed" => state.due = Some(event.recorded_at + self.timeout),
            _ => state.due = None,
        }
        Ok(vec![])
    }

    fn deadline(&self, state: &Awaiting) -> Option<chrono::DateTime<chrono::Utc>> {
        state.due
    }
}

async fn deliver_log<H: EventHandler>(
    store: &InMemoryEventStore,
    handler: &H,
    after: &mut LogPosition,
) {
    for event in store
        .read_all(*after, 1000, &LogFilter::all())
        .await
        .expect("read")
    {
        handler.handle(&event).await.expect("handle");
        *after = event.position;
    }
}

#[tokio::test]
async fn an_unpaid_order_times_out_durably_and_compensates_once() {
    let store = InMemoryEventStore::new();
    let stock = Repository::<Stock, _>::new(store.clone());
    let states = InMemorySagaStore::new();
    let saga = SagaHandler::new(
        PaymentTimeout {
            timeout: chrono::Duration::minutes(10),
        },
        stock.clone(),
        states.clone(),
    );
    let mut deadlines = eventsource_core::DeadlineRunner::new(states.clone(), store.clone());
    let mut after = LogPosition::START;

    place_order(&store, "unpaid").await;
    place_order(&store, "paid").await;
    store
        .append(
            &StreamId::new(TenantId::default(), "order", "paid"),
            ExpectedVersion::Any,
            vec![NewEvent::new("order-paid", 1, serde_json::json!({}))],
        )
        .await
        .expect("append");
    deliver_log(&store, &saga, &mut after).await;

    let now = chrono::Utc::now();
    assert_eq!(
        deadlines.fire_due(now).await.expect("fire"),
        0,
        "nothing is due yet"
    );
    let later = now + chrono::Duration::hours(1);
    assert_eq!(
        deadlines.fire_due(later).await.expect("fire"),
        1,
        "only the unpaid order"
    );
    assert_eq!(
        deadlines.fire_due(later).await.expect("fire"),
        0,
        "fired once"
    );
    // A second runner (a restart) fires it again: the deterministic id appends nothing.
    let mut restarted = eventsource_core::DeadlineRunner::new(states.clone(), store.clone());
    restarted.fire_due(later).await.expect("fire");
    let fired = store
        .read_all(LogPosition::START, 1000, &LogFilter::all())
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.event_type == eventsource_core::DEADLINE_REACHED)
        .count();
    assert_eq!(fired, 1);

    deliver_log(&store, &saga, &mut after).await;
    let released = store
        .read_stream(&stock.stream_id("sku-1"), VersionRange::all())
        .await
        .expect("read");
    assert_eq!(
        released.len(),
        1,
        "one compensation, for the unpaid order only"
    );
    let unpaid = states
        .load(&key("payment-timeout", "unpaid"))
        .await
        .expect("load")
        .expect("state");
    assert_eq!(unpaid.deadline, None, "the deadline was consumed");
    let paid = states
        .load(&key("payment-timeout", "paid"))
        .await
        .expect("load")
        .expect("state");
    assert_eq!(paid.deadline, None, "payment cancelled the deadline");
    assert!(states.due(later, 10).await.expect("due").is_empty());
}

/// Fails its first call, then records every command it is given.
#[derive(Clone, Default)]
struct FlakyOnce {
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("dispatch failed")]
struct DispatchFailed;

impl eventsource_core::CommandDispatcher<String> for FlakyOnce {
    type Error = DispatchFailed;

    async fn dispatch(
        &self,
        command: String,
        _: &eventsource_core::CommandContext,
    ) -> Result<(), DispatchFailed> {
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(DispatchFailed);
        }
        self.issued.lock().expect("lock").push(command);
        Ok(())
    }
}

/// One instance per order, fed by the order's stream and the payment's stream.
struct Checkout;

impl Saga for Checkout {
    const NAME: &'static str = "checkout";
    type State = Vec<String>;
    type Command = String;
    type Error = Never;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.payload["order"].as_str().map(str::to_owned)
    }

    fn react(&self, state: &mut Vec<String>, event: &RecordedEvent) -> Result<Vec<String>, Never> {
        state.push(event.event_type.clone());
        Ok(vec![format!("after {}", event.event_type)])
    }
}

/// The consumer runner keeps order within a stream only: the order's event fails its first
/// delivery, the payment's (later in the log, another stream) is handled, then the order's is
/// redelivered. It must be handled, not skipped as "older than the last one handled".
#[tokio::test]
async fn a_redelivered_event_from_another_stream_is_not_dropped() {
    let store = InMemoryEventStore::new();
    let order = StreamId::new(TenantId::default(), "order", "o-9");
    let payment = StreamId::new(TenantId::default(), "payment", "p-9");
    for (stream, event_type) in [(&order, "order-placed"), (&payment, "payment-received")] {
        store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    event_type,
                    1,
                    serde_json::json!({ "order": "o-9" }),
                )],
            )
            .await
            .expect("append");
    }
    let log = store
        .read_all(LogPosition::START, 10, &LogFilter::all())
        .await
        .expect("read");
    let (placed, paid) = (&log[0], &log[1]);
    let dispatcher = FlakyOnce::default();
    let saga = SagaHandler::new(Checkout, dispatcher.clone(), InMemorySagaStore::new());

    assert!(saga.handle(placed).await.is_err(), "first delivery fails");
    saga.handle(paid)
        .await
        .expect("the payment stream moves on");
    saga.handle(placed)
        .await
        .expect("redelivery of the order's event");
    saga.handle(paid)
        .await
        .expect("redelivery of the payment's event");

    assert_eq!(
        *dispatcher.issued.lock().expect("lock"),
        ["after payment-received", "after order-placed"],
        "the redelivered order event was handled once, the payment's not twice"
    );
}
