//! Order flow: commands append events to PostgreSQL, the relay publishes them exactly once to
//! Redis Streams, one consumer group projects order totals into PostgreSQL (exactly-once
//! effects), another sends notifications (prints them). A flagged order carries an event the
//! notifier has no template for: it lands in the dead-letter stream on its first delivery.
//!
//! Needs a PostgreSQL and a Redis server:
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run -p order-flow
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

use std::time::Duration;

use eventsource_core::{
    Aggregate, CommandContext, DomainEvent, EventHandler, Handle, RecordedEvent, Repository,
    TenantId,
};
use eventsource_postgres::{
    MIGRATOR, PgCheckpointStore, PgEventStore, PgProjection, PgProjectionHandler,
};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(name = "order-placed")]
    Placed { customer: String, cents: i64 },
    #[event(name = "order-flagged")]
    Flagged { reason: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "order", event = OrderEvent)]
struct Order {
    placed: bool,
    flagged: bool,
}

impl OrderEventHandler for Order {
    fn when_placed(&mut self, _: order_event::Placed) {
        self.placed = true;
    }

    fn when_flagged(&mut self, _: order_event::Flagged) {
        self.flagged = true;
    }
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String, cents: i64 },
    Flag { reason: String },
}

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("the order is already placed")]
    AlreadyPlaced,
    #[error("only a placed order can be flagged")]
    NotPlaced,
}

impl Handle for Order {
    type Command = OrderCommand;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.placed => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { customer, cents } => {
                Ok(vec![OrderEvent::Placed { customer, cents }])
            }
            OrderCommand::Flag { .. } if !self.placed => Err(OrderError::NotPlaced),
            OrderCommand::Flag { reason } => Ok(vec![OrderEvent::Flagged { reason }]),
        }
    }
}

const CREATE_TOTALS: &str = "CREATE TABLE IF NOT EXISTS order_flow_totals \
     (tenant text PRIMARY KEY, orders bigint NOT NULL, cents bigint NOT NULL)";
const ADD_ORDER: &str = "INSERT INTO order_flow_totals (tenant, orders, cents) VALUES ($1, 1, $2) \
     ON CONFLICT (tenant) DO UPDATE SET orders = order_flow_totals.orders + 1, \
     cents = order_flow_totals.cents + EXCLUDED.cents";

#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("no notification template for {0}")]
    NoTemplate(String),
    #[error(transparent)]
    Decode(#[from] eventsource_core::EventDecodeError),
}

/// Prints a notification per placed order; has no template for flagged orders.
struct Notifier;

impl EventHandler for Notifier {
    type Error = NotifyError;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), NotifyError> {
        match event.decode::<OrderEvent>()?.payload {
            OrderEvent::Placed { customer, cents } => {
                println!(
                    "notify: {customer}, your order {} of {}.{:02} is placed",
                    event.stream.aggregate_id(),
                    cents / 100,
                    cents % 100
                );
                Ok(())
            }
            OrderEvent::Flagged { .. } => Err(NotifyError::NoTemplate(event.event_type.clone())),
        }
    }

    /// A missing template or an undecodable event fails the same way on every delivery.
    fn is_permanent(&self, _error: &NotifyError) -> bool {
        true
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect(&std::env::var("DATABASE_URL")?)
        .await?;
    MIGRATOR.run(&pool).await?;
    sqlx::query(CREATE_TOTALS).execute(&pool).await?;
    let client = redis::Client::open(std::env::var("REDIS_URL")?)?;
    let conn = client.get_connection_manager().await?;

    // A tenant per run, so the story reads the same on every run against the same servers.
    let tenant = TenantId::new(format!("shop-{}", uuid::Uuid::now_v7().simple()));
    let store = PgEventStore::new(pool.clone());
    let orders = Repository::<Order, _>::new(store.clone()).with_tenant(tenant.clone());
    let keys = Keys::default();
    let stream_key = keys.tenant_stream(&tenant);
    let shutdown = CancellationToken::new();

    let relay = RedisRelay::new(
        store.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        "order-flow-relay",
        RelayOptions::default().with_max_idle_poll(Duration::from_millis(50)),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    let totals = totals_projection(pool.clone(), &tenant);
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(500))
        .with_max_deliveries(3);
    let projector = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [stream_key.clone()],
        "order-totals",
        "projector-1",
        totals,
        options.clone(),
    )
    .with_store(store.clone());
    let notifier = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [stream_key.clone()],
        "notifications",
        "notifier-1",
        Notifier,
        options,
    )
    .with_store(store.clone());
    let (projector_counts, notifier_counts) = (projector.counters(), notifier.counters());
    let projector = tokio::spawn(projector.run(shutdown.clone()));
    let notifier = tokio::spawn(notifier.run(shutdown.clone()));

    let ctx = CommandContext::new().with_source("order-flow example");
    for (id, customer, cents) in [
        ("o-1", "Ada", 1_999),
        ("o-2", "Grace", 4_500),
        ("o-3", "Alan", 250),
    ] {
        let customer = customer.to_owned();
        orders
            .execute_with(id, OrderCommand::Place { customer, cents }, &ctx)
            .await?;
    }
    orders
        .execute_with(
            "o-2",
            OrderCommand::Flag {
                reason: "address mismatch".into(),
            },
            &ctx,
        )
        .await?;
    println!("appended 4 events for tenant {tenant}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while notifier_counts.dead_lettered() < 1
        || notifier_counts.handled() < 3
        || projector_counts.handled() < 4
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the flow did not complete in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Exit non-zero unless the story ended as told: three orders worth 67.49 in the read
    // model, the flagged order's event dead-lettered, four entries in the stream.
    let outcome = report(&pool, &mut conn.clone(), &tenant, &stream_key).await?;
    anyhow::ensure!(
        outcome
            == Outcome {
                orders: 3,
                cents: 6_749,
                dead_letters: vec!["order-flagged".to_owned()],
                entries: 4,
            },
        "the flow ended otherwise than told: {outcome:?}"
    );

    shutdown.cancel();
    relay.await??;
    projector.await??;
    notifier.await??;
    Ok(())
}

/// What the flow left behind.
#[derive(Debug, PartialEq)]
struct Outcome {
    orders: i64,
    cents: i64,
    /// The event types of the notifier's dead letters.
    dead_letters: Vec<String>,
    entries: u64,
}

/// Prints the dead letters, the read model and the stream's group figures, and returns them.
async fn report(
    pool: &sqlx::PgPool,
    conn: &mut redis::aio::ConnectionManager,
    tenant: &TenantId,
    stream_key: &str,
) -> anyhow::Result<Outcome> {
    let mut dead_letters = Vec::new();
    for dead in eventsource_redis::dead_letters(conn, stream_key, "notifications", 10).await? {
        dead_letters.push(
            dead.event
                .as_ref()
                .map_or("malformed", |e| e.event_type.as_str())
                .to_owned(),
        );
        println!(
            "dead letter {}: {} — {}",
            dead.id,
            dead.event
                .as_ref()
                .map_or("malformed", |e| e.event_type.as_str()),
            dead.error.as_deref().unwrap_or("no error recorded")
        );
    }
    let (count, cents): (i64, i64) =
        sqlx::query_as("SELECT orders, cents FROM order_flow_totals WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_one(pool)
            .await?;
    println!(
        "read model: {count} orders worth {}.{:02}",
        cents / 100,
        cents % 100
    );
    let stats = eventsource_redis::stats(conn, stream_key).await?;
    println!(
        "stream {stream_key}: {} entries; {}",
        stats.length,
        stats
            .groups
            .iter()
            .map(|g| format!("{} pending {} dead {}", g.name, g.pending, g.dead_letters))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Outcome {
        orders: count,
        cents,
        dead_letters,
        entries: stats.length,
    })
}

/// Order totals per tenant in PostgreSQL.
struct OrderTotals {
    name: String,
}

impl PgProjection for OrderTotals {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        if event.event_type == "order-placed" {
            sqlx::query(ADD_ORDER)
                .bind(event.tenant().as_str())
                .bind(event.payload["cents"].as_i64().unwrap_or(0))
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// The totals, changed in the same transaction that records the event's position, so a
/// redelivered event is skipped.
fn totals_projection(pool: sqlx::PgPool, tenant: &TenantId) -> PgProjectionHandler<OrderTotals> {
    PgProjectionHandler::new(
        pool,
        OrderTotals {
            name: format!("order-totals-{tenant}"),
        },
    )
}
