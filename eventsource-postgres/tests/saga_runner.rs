//! `PgSagaRunner` (issue 15, item 7): a saga fed from the PostgreSQL log from a checkpoint,
//! under a lease, reaches the outcomes at-least-once delivery to its `PgSagaHandler` reaches;
//! a restart resumes from the checkpoint and a replay from behind it duplicates no effect; a
//! second runner of the same saga waits for the first.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eventsource_core::{
    Aggregate, CommandContext, CommandDecider, Decided, DomainEvent, EventHandler, EventStore,
    Handle, LogFilter, LogPosition, RecordedEvent, Rejection, Repository, Saga, SagaError, SagaKey,
    SagaStore, TenantId, VersionRange,
};
use eventsource_postgres::{
    PgEventStore, PgProjectionError, PgSagaHandler, PgSagaRunner, PgSagaStore, ProjectionOptions,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(name = "order-placed")]
    Placed { sku: String, qty: u32 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
struct Order;

impl OrderEventHandler for Order {
    fn when_placed(&mut self, _: order_event::Placed) {}
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Order {
    type Command = (String, u32);
    type Error = Never;

    fn handle(&self, (sku, qty): (String, u32)) -> Result<Vec<OrderEvent>, Never> {
        Ok(vec![OrderEvent::Placed { sku, qty }])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum StockEvent {
    #[event(name = "stock-reserved")]
    Reserved { order: String, qty: u32 },
}

/// Stock of 10 per sku; a reservation beyond it is rejected.
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

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("out of stock")]
struct OutOfStock;

impl Handle for Stock {
    type Command = (String, u32);
    type Error = OutOfStock;

    fn handle(&self, (order, qty): (String, u32)) -> Result<Vec<StockEvent>, OutOfStock> {
        if self.reserved + qty > 10 {
            return Err(OutOfStock);
        }
        Ok(vec![StockEvent::Reserved { order, qty }])
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
enum Outcome {
    #[default]
    Pending,
    Reserved,
    OutOfStock,
}

/// Reserves each placed order's stock; hears a refusal as the order's outcome. An order of no
/// quantity fails the saga, on every delivery.
#[derive(Clone, Default)]
struct Reservation {
    reacts: Arc<AtomicU32>,
}

#[derive(Debug, thiserror::Error)]
enum ReservationError {
    #[error(transparent)]
    Decode(#[from] eventsource_core::EventDecodeError),
    #[error("an order of nothing")]
    NoQuantity,
}

impl Saga for Reservation {
    const NAME: &'static str = "reservation";
    type State = Outcome;
    type Command = (String, (String, u32));
    type Error = ReservationError;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "order-placed").then(|| event.stream.aggregate_id().to_owned())
    }

    fn react(
        &self,
        outcome: &mut Outcome,
        event: &RecordedEvent,
    ) -> Result<Vec<Self::Command>, Self::Error> {
        self.reacts.fetch_add(1, Ordering::SeqCst);
        let OrderEvent::Placed { sku, qty } = event.decode::<OrderEvent>()?.payload;
        if qty == 0 {
            return Err(ReservationError::NoQuantity);
        }
        *outcome = Outcome::Reserved;
        Ok(vec![(sku, (event.stream.aggregate_id().to_owned(), qty))])
    }

    fn on_rejected(
        &self,
        outcome: &mut Outcome,
        _: &Rejection<'_>,
    ) -> Result<Option<Vec<Self::Command>>, Self::Error> {
        *outcome = Outcome::OutOfStock;
        Ok(Some(vec![]))
    }
}

type Handler = PgSagaHandler<Reservation, Repository<Stock, PgEventStore>>;

/// Decides after a pause: a batch of a few events outlasts a short lease.
#[derive(Clone)]
struct Slow<D>(D);

impl<C: Send + 'static, D: CommandDecider<C>> CommandDecider<C> for Slow<D> {
    type Error = D::Error;

    async fn decide(&self, command: C, ctx: &CommandContext) -> Result<Option<Decided>, D::Error> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.decide(command, ctx).await
    }
}

struct World {
    pool: PgPool,
    store: PgEventStore,
    tenant: TenantId,
    orders: Repository<Order, PgEventStore>,
    stock: Repository<Stock, PgEventStore>,
    saga: Reservation,
}

impl World {
    async fn new(prefix: &str) -> Option<Self> {
        Some(Self::on(support::pool().await?, prefix))
    }

    fn on(pool: PgPool, prefix: &str) -> Self {
        let store = PgEventStore::new(pool.clone());
        let tenant = support::tenant(prefix);
        Self {
            orders: Repository::new(store.clone()).with_tenant(tenant.clone()),
            stock: Repository::new(store.clone()).with_tenant(tenant.clone()),
            pool,
            store,
            tenant,
            saga: Reservation::default(),
        }
    }

    fn handler(&self) -> Handler {
        PgSagaHandler::new(self.pool.clone(), self.saga.clone(), self.stock.clone())
    }

    fn runner(&self, instance: &str) -> PgSagaRunner<Reservation, Repository<Stock, PgEventStore>> {
        self.runner_with(instance, self.stock.clone(), Duration::from_secs(2))
    }

    fn runner_with<D: CommandDecider<(String, (String, u32))>>(
        &self,
        instance: &str,
        decider: D,
        lease_ttl: Duration,
    ) -> PgSagaRunner<Reservation, D> {
        let options = ProjectionOptions::default()
            .with_batch_size(7)
            .with_lease_ttl(lease_ttl)
            .with_max_idle_poll(Duration::from_millis(20))
            .with_instance_id(instance)
            .with_filter(LogFilter::tenant(self.tenant.clone()));
        let handler = PgSagaHandler::new(self.pool.clone(), self.saga.clone(), decider);
        PgSagaRunner::new(self.store.clone(), handler, options)
    }

    /// The tenant's log once it shows `len` events (a commit shows once every older
    /// transaction ended, other tests' too).
    async fn log(&self, len: usize) -> Vec<RecordedEvent> {
        let filter = LogFilter::tenant(self.tenant.clone());
        for _ in 0..250 {
            let log = self
                .store
                .read_all(LogPosition::START, 100, &filter)
                .await
                .unwrap();
            if log.len() >= len {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the log did not show {len} events");
    }

    /// Places `o-{from}..o-{to}`: 3 units each of `sku-{i % 3}`, so the fourth order of a
    /// sku runs out of stock.
    async fn place(&self, from: u32, to: u32) {
        for i in from..to {
            self.orders
                .execute(&format!("o-{i}"), (format!("sku-{}", i % 3), 3))
                .await
                .unwrap();
        }
    }

    async fn outcome(&self, order: u32) -> Option<Outcome> {
        let key = SagaKey::new(
            self.tenant.clone(),
            <Reservation as Saga>::NAME,
            format!("o-{order}"),
        );
        let state = PgSagaStore::new(self.pool.clone())
            .load(&key)
            .await
            .unwrap()?;
        Some(serde_json::from_value(state.state).unwrap())
    }

    async fn outcomes(&self, orders: u32) -> Vec<Option<Outcome>> {
        let mut all = Vec::new();
        for i in 0..orders {
            all.push(self.outcome(i).await);
        }
        all
    }

    /// Every stock event of the tenant.
    async fn reservations(&self) -> usize {
        let mut n = 0;
        for s in 0..3 {
            n += self
                .store
                .read_stream(
                    &self.stock.stream_id(&format!("sku-{s}")),
                    VersionRange::all(),
                )
                .await
                .unwrap()
                .len();
        }
        n
    }

    /// Catches up until every one of the first `orders` orders has an outcome: the log shows
    /// a commit only once every older transaction ended (other tests' count too).
    async fn catch_up_to(
        &self,
        runner: &PgSagaRunner<Reservation, Repository<Stock, PgEventStore>>,
        orders: u32,
    ) -> u64 {
        let mut read = 0;
        for _ in 0..250 {
            read += runner.catch_up().await.unwrap();
            if self.outcomes(orders).await.iter().all(Option::is_some) {
                return read;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the runner did not reach every order");
    }

    /// Waits until every one of the first `orders` orders has an outcome.
    async fn wait_for_outcomes(&self, orders: u32, what: &str) {
        for _ in 0..500 {
            if self.outcomes(orders).await.iter().all(Option::is_some) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn checkpoint(&self, name: &str) -> Option<LogPosition> {
        let mut conn = self.pool.acquire().await.unwrap();
        eventsource_postgres::PgCheckpointStore::load_in_tx(&mut conn, name)
            .await
            .unwrap()
    }
}

fn expected(orders: u32) -> Vec<Option<Outcome>> {
    (0..orders)
        .map(|i| {
            Some(if i < 9 {
                Outcome::Reserved
            } else {
                Outcome::OutOfStock
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_at_least_once_delivery_reach_the_same_outcomes() {
    let (Some(from_log), Some(delivered)) = (World::new("log").await, World::new("dlv").await)
    else {
        return;
    };
    from_log.place(0, 12).await;
    delivered.place(0, 12).await;

    let runner = from_log.runner("log-1");
    assert_eq!(
        runner.name(),
        format!("saga:reservation:{}", from_log.tenant)
    );
    from_log.catch_up_to(&runner, 12).await;

    // A consumer group delivers in any order, and again: every event twice, the second
    // round backwards.
    let log = delivered.log(12).await;
    assert_eq!(log.len(), 12);
    let handler = delivered.handler();
    for event in log.iter().chain(log.iter().rev()) {
        handler.handle(event).await.unwrap();
    }

    assert_eq!(from_log.outcomes(12).await, expected(12));
    assert_eq!(delivered.outcomes(12).await, expected(12));
    assert_eq!(from_log.reservations().await, 9);
    assert_eq!(delivered.reservations().await, 9);
}

/// Through PgBouncer in transaction mode: the runner catches up, then follows the log live
/// under its lease, to the same outcomes, each reservation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_the_runner_catches_up_and_follows_the_log() {
    let Some(pool) = support::bouncer_pool(16).await else {
        return;
    };
    let world = World::on(pool, "pgb-saga");
    world.place(0, 6).await;
    let runner = world.runner("pgb-1");
    world.catch_up_to(&runner, 6).await;
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(world.runner("pgb-1").run(shutdown.clone()));
    world.place(6, 12).await;
    world.wait_for_outcomes(12, "the live runner").await;
    shutdown.cancel();
    live.await.unwrap().unwrap();
    assert_eq!(world.outcomes(12).await, expected(12));
    assert_eq!(world.reservations().await, 9, "each reservation once");
    assert!(world.checkpoint(runner.name()).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoint_and_a_replay_duplicates_nothing() {
    let Some(world) = World::new("resume").await else {
        return;
    };
    world.place(0, 6).await;
    let runner = world.runner("resume-1");
    world.catch_up_to(&runner, 6).await;
    // Read through the reservations the saga appended after the orders too, once the log
    // shows them.
    world.log(12).await;
    while runner.catch_up().await.unwrap() > 0 {}
    let checkpoint = world.checkpoint(runner.name()).await.expect("a checkpoint");

    // A new runner (a restarted process) starts after the checkpoint: nothing to read.
    let restarted = world.runner("resume-2");
    assert_eq!(restarted.catch_up().await.unwrap(), 0);
    assert_eq!(world.checkpoint(runner.name()).await, Some(checkpoint));

    // A crash after handling events but before the checkpoint moved: the checkpoint stands
    // behind them. The replay reads every event again and appends nothing twice.
    world.place(6, 12).await;
    sqlx::query("DELETE FROM checkpoints WHERE name = $1")
        .bind(runner.name())
        .execute(&world.pool)
        .await
        .unwrap();
    let read = world.catch_up_to(&restarted, 12).await;
    assert!(
        read >= 12,
        "read {read}: the replay started from the beginning"
    );
    assert_eq!(world.outcomes(12).await, expected(12));
    assert_eq!(world.reservations().await, 9, "each reservation once");
    assert!(world.checkpoint(runner.name()).await > Some(checkpoint));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_waits_for_the_first() {
    let Some(world) = World::new("lease").await else {
        return;
    };
    world.place(0, 3).await;
    let first_stop = CancellationToken::new();
    let first = tokio::spawn(world.runner("lease-1").run(first_stop.clone()));
    world
        .wait_for_outcomes(3, "the first runner's reservations")
        .await;

    let second = world.runner("lease-2");
    match second.catch_up().await {
        Err(PgProjectionError::LeaseHeld { holder, .. }) => assert_eq!(holder, "lease-1"),
        other => panic!("expected the lease held, got {other:?}"),
    }
    let second_stop = CancellationToken::new();
    let second = tokio::spawn(second.run(second_stop.clone()));
    world.place(3, 6).await;
    world
        .wait_for_outcomes(6, "the first runner's later reservations")
        .await;
    let holder: String = sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1")
        .bind(format!("saga:reservation:{}", world.tenant))
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(holder, "lease-1", "the second runner stood by");

    // The first stops (releasing the lease); the standby takes over from its checkpoint.
    first_stop.cancel();
    first.await.unwrap().unwrap();
    world.place(6, 12).await;
    world
        .wait_for_outcomes(12, "the standby's reservations")
        .await;
    second_stop.cancel();
    second.await.unwrap().unwrap();
    assert_eq!(world.outcomes(12).await, expected(12));
    assert_eq!(world.reservations().await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_halts_the_runner_with_the_checkpoint_before_it() {
    let Some(world) = World::new("halt").await else {
        return;
    };
    world.place(0, 1).await;
    world
        .orders
        .execute("o-1", ("sku-1".to_owned(), 0))
        .await
        .unwrap();
    world.place(2, 3).await;
    let log = world.log(3).await;
    let runner = world.runner("halt-1");
    let error = runner.catch_up().await.expect_err("o-1 fails");
    let PgProjectionError::Apply {
        event_id,
        position,
        source,
        ..
    } = error
    else {
        panic!("expected the event named, got {error:?}");
    };
    assert_eq!((event_id, position), (log[1].event_id, log[1].position));
    assert!(matches!(
        source,
        SagaError::React(ReservationError::NoQuantity)
    ));
    // o-0 once, o-1 once and three retries, o-2 never.
    assert_eq!(world.saga.reacts.load(Ordering::SeqCst), 5);
    assert_eq!(world.checkpoint(runner.name()).await, Some(log[0].position));
    assert_eq!(
        world.outcomes(3).await,
        [Some(Outcome::Reserved), None, None]
    );

    // Started again, it begins with the failing event.
    let again = runner.catch_up().await.expect_err("o-1 fails again");
    assert!(
        matches!(again, PgProjectionError::Apply { event_id, .. } if event_id == log[1].event_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_keeps_its_lease() {
    let Some(world) = World::new("long").await else {
        return;
    };
    world.place(0, 6).await;
    world.log(6).await;
    // Six events of 100 ms each in one batch, under a lease of 300 ms.
    let runner = world.runner_with(
        "long-1",
        Slow(world.stock.clone()),
        Duration::from_millis(300),
    );
    let first = tokio::spawn(async move { runner.catch_up().await });
    let name = format!("saga:reservation:{}", world.tenant);
    for _ in 0..250 {
        let holder: Option<String> =
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1")
                .bind(&name)
                .fetch_optional(&world.pool)
                .await
                .unwrap();
        if holder.as_deref() == Some("long-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while !first.is_finished() {
        let standby = world.runner_with("long-2", world.stock.clone(), Duration::from_millis(300));
        match standby.catch_up().await {
            Err(PgProjectionError::LeaseHeld { holder, .. }) => assert_eq!(holder, "long-1"),
            Ok(_) => assert!(first.is_finished(), "the standby took the lease mid-batch"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.await.unwrap().unwrap() >= 6, "the batch committed");
    assert_eq!(world.outcomes(6).await, expected(6));
}
