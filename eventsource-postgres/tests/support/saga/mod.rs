//! The saga test kit: a stock aggregate, a saga reserving stock for placed orders, deciders
//! that stall or replay stored batches, and helpers to build events and read the results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use eventsource_core::{
    Aggregate, CommandContext, CommandDecider, Decided, DomainEvent, EventId, EventStore,
    ExpectedVersion, Handle, LogPosition, Metadata, NewEvent, RecordedEvent, Repository, Saga,
    StreamId, TenantId, Version, VersionRange,
};
use eventsource_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub mod stepper;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum StockEvent {
    #[event(name = "stock-reserved")]
    Reserved { order: String, qty: u32 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "stock", event = StockEvent)]
pub struct Stock {
    pub reserved: u32,
}

impl StockEventHandler for Stock {
    fn when_reserved(&mut self, e: stock_event::Reserved) {
        self.reserved += e.qty;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Handle for Stock {
    type Command = (String, u32);
    type Error = Never;

    fn handle(&self, (order, qty): (String, u32)) -> Result<Vec<StockEvent>, Never> {
        Ok(vec![StockEvent::Reserved { order, qty }])
    }
}

/// Reserves one unit of `sku-a` and one of `sku-b` per placed order; counts orders.
#[derive(Clone, Copy)]
pub struct Fulfilment;

impl Saga for Fulfilment {
    const NAME: &'static str = "fulfilment";
    type State = u32;
    type Command = (String, (String, u32));
    type Error = Never;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        (event.event_type == "order-placed")
            .then(|| event.payload["saga"].as_str().map(str::to_owned))?
    }

    fn react(&self, orders: &mut u32, event: &RecordedEvent) -> Result<Vec<Self::Command>, Never> {
        *orders += 1;
        let order = event.stream.aggregate_id().to_owned();
        Ok(vec![
            ("sku-a".into(), (order.clone(), 1)),
            ("sku-b".into(), (order, 1)),
        ])
    }
}

/// Decides through a repository; told to, it stops for good at its second command (after the
/// first command's events were appended in the saga's transaction) and says so.
#[derive(Clone)]
pub struct Stalling {
    pub stock: Repository<Stock, PgEventStore>,
    pub stall: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    pub stalled: Arc<Notify>,
}

impl CommandDecider<(String, (String, u32))> for Stalling {
    type Error = eventsource_core::CommandError<Never>;

    async fn decide(
        &self,
        command: (String, (String, u32)),
        ctx: &CommandContext,
    ) -> Result<Option<Decided>, Self::Error> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 1 && self.stall.load(Ordering::SeqCst) {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        self.stock.decide(command, ctx).await
    }
}

pub fn order_placed(tenant: &TenantId, saga: &str, order: &str, position: u64) -> RecordedEvent {
    RecordedEvent {
        event_id: EventId::new(),
        stream: StreamId::new(tenant.clone(), "order", order),
        version: Version::new(1),
        position: LogPosition::new(position, position),
        event_type: "order-placed".into(),
        schema_version: 1,
        recorded_at: chrono::Utc::now(),
        metadata: Metadata::default(),
        payload: serde_json::json!({ "saga": saga }),
    }
}

pub async fn reservations(
    store: &PgEventStore,
    tenant: &TenantId,
    sku: &str,
) -> Vec<RecordedEvent> {
    store
        .read_stream(
            &StreamId::new(tenant.clone(), "stock", sku),
            VersionRange::all(),
        )
        .await
        .expect("read")
}

/// Decides each command as a batch stored already (an idempotent replay of it).
#[derive(Clone)]
pub struct Replaying {
    pub tenant: TenantId,
    pub stored: Vec<(String, NewEvent)>,
}

impl CommandDecider<(String, (String, u32))> for Replaying {
    type Error = eventsource_core::CommandError<Never>;

    async fn decide(
        &self,
        (sku, _): (String, (String, u32)),
        _: &CommandContext,
    ) -> Result<Option<Decided>, Self::Error> {
        let event = self.stored.iter().find(|(s, _)| *s == sku).expect("stored");
        let stream = StreamId::new(self.tenant.clone(), "stock", &sku);
        Ok(Some(Decided::new(
            stream,
            ExpectedVersion::NoStream,
            vec![event.1.clone()],
        )))
    }
}

/// Waits until no backend named `name` is left. The client hears a terminated backend's FATAL
/// before that backend has released its row locks; until it is gone, a runner skips the
/// locked deadlines (SKIP LOCKED) and would fire none.
pub async fn wait_until_gone(admin: &sqlx::PgPool, name: &str) {
    for _ in 0..500 {
        let alive: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(name)
                .fetch_one(admin)
                .await
                .expect("activity");
        if alive == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the terminated backend {name} is still there after 5 s");
}

/// Lets the application role of [`app_role_pool`](super::app_role_pool) use the saga tables
/// (row level security still applies to it). Under the advisory lock `app_role_pool` takes:
/// concurrent GRANTs can fail with "tuple concurrently updated".
pub async fn grant_saga_tables(admin: &sqlx::PgPool) {
    let mut tx = admin.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(7245001)")
        .execute(&mut *tx)
        .await
        .expect("lock");
    sqlx::query(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON saga_instances, saga_handled TO eventsource_app",
    )
    .execute(&mut *tx)
    .await
    .expect("grant the saga tables");
    tx.commit().await.expect("commit the grant");
}
