//! A saga run by a Redis consumer group: orders placed through one aggregate reserve stock in
//! another. The consumer is killed mid-way and a second one takes over; every order reserves
//! its stock exactly once, with correlation and causation carried from the order; on a single
//! Redis and on a Redis Cluster.

mod support;

use std::time::Duration;

use eventsource_core::{
    Aggregate, CommandContext, CommandDispatcher, DomainEvent, EventStore, Handle,
    InMemoryCheckpointStore, InMemoryEventStore, InMemorySagaStore, RecordedEvent, Repository,
    Saga, SagaHandler, TenantId, VersionRange,
};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(name = "order-placed")]
    Placed { sku: String, qty: u32 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
struct Order {
    placed: bool,
}

impl OrderEventHandler for Order {
    fn when_placed(&mut self, _: order_event::Placed) {
        self.placed = true;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("order already placed")]
struct AlreadyPlaced;

impl Handle for Order {
    type Command = (String, u32);
    type Error = AlreadyPlaced;

    fn handle(&self, (sku, qty): (String, u32)) -> Result<Vec<OrderEvent>, AlreadyPlaced> {
        if self.placed {
            return Err(AlreadyPlaced);
        }
        Ok(vec![OrderEvent::Placed { sku, qty }])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum StockEvent {
    #[event(name = "stock-reserved")]
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

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Stock {
    type Command = (String, u32);
    type Error = Never;

    fn handle(&self, (order, qty): (String, u32)) -> Result<Vec<StockEvent>, Never> {
        Ok(vec![StockEvent::Reserved { order, qty }])
    }
}

struct Fulfilment;

/// Dispatches after a pause, so the first consumer is still busy when it is killed.
#[derive(Clone)]
struct Slow<D>(D);

impl<C: Send + 'static, D: CommandDispatcher<C>> CommandDispatcher<C> for Slow<D> {
    type Error = D::Error;

    async fn dispatch(&self, command: C, ctx: &CommandContext) -> Result<(), D::Error> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.0.dispatch(command, ctx).await
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    reserved: bool,
}

#[derive(Debug, thiserror::Error)]
enum FulfilmentError {
    #[error(transparent)]
    Decode(#[from] eventsource_core::EventDecodeError),
}

impl Saga for Fulfilment {
    const NAME: &'static str = "fulfilment";
    type State = Progress;
    type Command = (String, (String, u32));
    type Error = FulfilmentError;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "order-placed").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        progress: &mut Progress,
        event: &RecordedEvent,
    ) -> Result<Vec<Self::Command>, FulfilmentError> {
        let OrderEvent::Placed { sku, qty } = event.decode::<OrderEvent>()?.payload;
        progress.reserved = true;
        let order = event.stream.aggregate_id().to_owned();
        Ok(vec![(sku, (order, qty))])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_a_consumer_group_survives_a_killed_consumer() {
    survives_a_killed_consumer("REDIS_URL").await;
}

/// The same on a Redis Cluster (`REDIS_CLUSTER_URLS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_saga_in_a_consumer_group_survives_a_killed_consumer() {
    survives_a_killed_consumer("REDIS_CLUSTER_URLS").await;
}

/// The saga's first consumer aborted mid-way, a second one finishing; `redis_var` names the
/// Redis: one URL, or a cluster's nodes separated by commas.
async fn survives_a_killed_consumer(redis_var: &str) {
    let Some(url) = support::service_url(redis_var) else {
        return;
    };
    let (client, conn) = support::redis(&url).await;
    let keys = Keys::new(&support::unique("e2e"));
    let tenant = TenantId::default();

    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let stock = Repository::<Stock, _>::new(store.clone());
    for i in 0..40u32 {
        orders
            .execute(&format!("o-{i}"), (format!("sku-{}", i % 4), 1 + i % 3))
            .await
            .unwrap();
    }

    let shutdown = CancellationToken::new();
    let publisher = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "e2e-relay",
        RelayOptions::default().with_max_idle_poll(Duration::from_millis(20)),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(publisher.run(shutdown.clone()));

    let saga_states = InMemorySagaStore::new();
    let stream_key = keys.tenant_stream(&tenant);
    let options = RunnerOptions::default()
        .with_idle_reclaim(Duration::from_millis(300))
        .with_block_timeout(Duration::from_millis(100));
    let runner = |name: &str, slow: bool| {
        ConsumerRunner::new(
            conn.clone(),
            client.clone(),
            [stream_key.clone()],
            "fulfilment",
            name,
            SagaHandler::new(Fulfilment, Slow(stock.clone()), saga_states.clone()),
            options.clone().with_batch_size(if slow { 10 } else { 100 }),
        )
        .with_store(store.clone())
    };
    let expected: u32 = (0..40u32).map(|i| 1 + i % 3).sum();
    let reserved = async || {
        let mut total = 0;
        for s in 0..4 {
            total += stock
                .load(&format!("sku-{s}"))
                .await
                .unwrap()
                .state()
                .reserved;
        }
        total
    };

    // The first consumer is killed (its task aborted) once it has started reserving.
    let first = tokio::spawn(runner("consumer-a", true).run(CancellationToken::new()));
    support::wait_for("the first reservations", async || reserved().await > 0).await;
    first.abort();
    let _ = first.await;
    assert!(
        reserved().await < expected,
        "killed mid-way, not after the work"
    );

    let second = tokio::spawn(runner("consumer-b", false).run(shutdown.clone()));
    support::wait_for("every order reserved", async || {
        reserved().await == expected
    })
    .await;
    // Give a duplicate, if any, the time to land before checking there is none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    second.await.unwrap().unwrap();
    relay.await.unwrap().unwrap();

    let mut reservations = 0;
    for s in 0..4 {
        let events = store
            .read_stream(&stock.stream_id(&format!("sku-{s}")), VersionRange::all())
            .await
            .unwrap();
        for e in &events {
            let cause = e.metadata.causation_id.expect("caused by an order");
            let order = store
                .read_by_correlation(&tenant, e.metadata.correlation_id.unwrap())
                .await
                .unwrap();
            assert_eq!(
                order[0].event_id.as_uuid(),
                &cause,
                "correlation leads to the order"
            );
        }
        reservations += events.len();
    }
    assert_eq!(reservations, 40, "each order reserved exactly once");
    assert_eq!(reserved().await, expected);
}
