//! Sagas: commands carry correlation and causation, redelivery is a no-op, and a crash between
//! dispatching and saving state appends nothing twice.

use eventsource_core::{
    Aggregate, DomainEvent, EventHandler, EventStore, ExpectedVersion, Handle, InMemoryEventStore,
    InMemorySagaStore, LogFilter, LogPosition, NewEvent, RecordedEvent, Repository, Saga,
    SagaHandler, SagaState, SagaStore, StreamId, TenantId, VersionRange,
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
    fn when_reserved(&mut self, _order: &String, qty: &u32) {
        self.reserved += qty;
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
        .load("fulfilment", "o-1")
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
        fresh_state.load("fulfilment", "o-2").await.expect("load"),
        Some(SagaState { version: 1, .. })
    ));
}
