//! Order saga: a checkout reserves the order's stock, charges its payment and ships it. A
//! declined payment cancels the order and releases the stock (compensation); an order not paid
//! before its deadline is cancelled and its stock released (a durable deadline, fired by
//! `PgDeadlineRunner`).
//!
//! The saga's state, the events its commands append and its record of handled events commit in
//! one PostgreSQL transaction per event (`PgSagaHandler`). The same saga runs two ways, each for
//! a tenant of its own: from a Redis consumer group, fed by the relay that publishes the log to
//! Redis Streams, and from the PostgreSQL log directly (`PgSagaRunner`, from a checkpoint, under
//! a lease). Six orders per tenant cover the three outcomes; the program checks that every
//! order ended as expected, with its stock and payment to match, prints a summary and exits
//! non-zero otherwise (or after 25 s).
//!
//! Needs a PostgreSQL and a Redis server:
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run -p order-saga
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

mod domain;
mod saga;

use std::collections::BTreeMap;
use std::time::Duration;

use eventsource_core::{
    CommandContext, EventStore, LogFilter, SagaKey, SagaStore, TenantId, VersionRange,
};
use eventsource_postgres::{
    MIGRATOR, PgCheckpointStore, PgDeadlineRunner, PgEventStore, PgSagaHandler, PgSagaRunner,
    PgSagaStore, ProjectionOptions,
};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{DECLINED_CARD, OrderCommand, Status};
use crate::saga::{Checkout, CheckoutState, DECLINED, Phase, Shop, TIMED_OUT};

/// How long a customer has to pay.
const PAYMENT_WINDOW: Duration = Duration::from_secs(3);

/// How the program's run time is bounded.
const TIME_LIMIT: Duration = Duration::from_secs(25);

/// How a customer pays, if at all.
#[derive(Debug, Clone, Copy)]
enum Pays {
    With(&'static str),
    Never,
}

/// An order of the story.
struct Story {
    id: &'static str,
    sku: &'static str,
    qty: u32,
    cents: i64,
    pays: Pays,
}

const ORDERS: [Story; 6] = [
    Story {
        id: "o-1",
        sku: "sku-a",
        qty: 2,
        cents: 1_999,
        pays: Pays::With("4242-4242-4242-4242"),
    },
    Story {
        id: "o-2",
        sku: "sku-b",
        qty: 1,
        cents: 4_500,
        pays: Pays::With("5555-5555-5555-4444"),
    },
    Story {
        id: "o-3",
        sku: "sku-a",
        qty: 3,
        cents: 2_500,
        pays: Pays::With(DECLINED_CARD),
    },
    Story {
        id: "o-4",
        sku: "sku-b",
        qty: 2,
        cents: 990,
        pays: Pays::With(DECLINED_CARD),
    },
    Story {
        id: "o-5",
        sku: "sku-a",
        qty: 1,
        cents: 1_200,
        pays: Pays::Never,
    },
    Story {
        id: "o-6",
        sku: "sku-b",
        qty: 4,
        cents: 3_300,
        pays: Pays::Never,
    },
];

impl Story {
    /// The status the order must end in.
    fn expected(&self) -> Status {
        match self.pays {
            Pays::With(DECLINED_CARD) => Status::Cancelled(DECLINED.to_owned()),
            Pays::With(_) => Status::Shipped,
            Pays::Never => Status::Cancelled(TIMED_OUT.to_owned()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect(&std::env::var("DATABASE_URL")?)
        .await?;
    MIGRATOR.run(&pool).await?;
    let client = redis::Client::open(std::env::var("REDIS_URL")?)?;
    let conn = client.get_connection_manager().await?;
    let store = PgEventStore::new(pool.clone());
    let checkout = Checkout {
        window: chrono::Duration::from_std(PAYMENT_WINDOW)?,
    };

    // Tenants of this run, so the story reads the same on every run against the same servers.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let via_redis = TenantId::new(format!("shop-redis-{run}"));
    let via_log = TenantId::new(format!("shop-log-{run}"));
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let keys = Keys::default();
    let relay = RedisRelay::new(
        store.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        "order-saga-relay",
        RelayOptions::default().with_max_idle_poll(Duration::from_millis(50)),
    )
    .with_keys(&keys);
    let deadlines = PgDeadlineRunner::new(pool.clone()).with_poll(Duration::from_millis(50));
    let consumer = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [keys.tenant_stream(&via_redis)],
        "checkout",
        "checkout-1",
        PgSagaHandler::new(pool.clone(), checkout, Shop::new(&store, &via_redis)),
        RunnerOptions::default()
            .with_block_timeout(Duration::from_millis(200))
            .with_max_deliveries(5),
    )
    .with_store(store.clone());
    let log_runner = PgSagaRunner::new(
        store.clone(),
        PgSagaHandler::new(pool.clone(), checkout, Shop::new(&store, &via_log)),
        ProjectionOptions::default()
            .with_max_idle_poll(Duration::from_millis(50))
            .with_instance_id(format!("checkout-{run}"))
            .with_filter(LogFilter::tenant(via_log.clone())),
    );
    let (stop1, stop2, stop3, stop4) = (
        shutdown.clone(),
        shutdown.clone(),
        shutdown.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move { relay.run(stop1).await.map_err(anyhow::Error::from) });
    tasks.spawn(async move { deadlines.run(stop2).await.map_err(anyhow::Error::from) });
    tasks.spawn(async move { consumer.run(stop3).await.map_err(anyhow::Error::from) });
    tasks.spawn(async move { log_runner.run(stop4).await.map_err(anyhow::Error::from) });

    let paths = [("redis", via_redis), ("log", via_log)];
    let outcome = tokio::time::timeout(TIME_LIMIT, async {
        for (_, tenant) in &paths {
            play(&pool, &Shop::new(&store, tenant), tenant).await?;
        }
        let mut ok = true;
        for (path, tenant) in &paths {
            ok &= settle(&Shop::new(&store, tenant), path).await?;
        }
        anyhow::Ok(ok)
    })
    .await;

    shutdown.cancel();
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    let ok =
        outcome.map_err(|_| anyhow::anyhow!("the orders did not settle in {TIME_LIMIT:?}"))??;
    println!("ran in {:.1} s", started.elapsed().as_secs_f64());
    anyhow::ensure!(ok, "an order ended otherwise than expected");
    Ok(())
}

/// Places every order, waits for the saga to reserve their stock, then pays those that pay.
async fn play(pool: &sqlx::PgPool, shop: &Shop, tenant: &TenantId) -> anyhow::Result<()> {
    let ctx = CommandContext::new().with_source("order-saga example");
    for o in &ORDERS {
        let place = OrderCommand::Place {
            sku: o.sku.to_owned(),
            qty: o.qty,
            cents: o.cents,
        };
        shop.orders.execute_with(o.id, place, &ctx).await?;
    }
    let sagas = PgSagaStore::new(pool.clone());
    for o in &ORDERS {
        let key = SagaKey::new(
            tenant.clone(),
            <Checkout as eventsource_core::Saga>::NAME,
            o.id,
        );
        loop {
            if let Some(state) = sagas.load(&key).await? {
                let state: CheckoutState = serde_json::from_value(state.state)?;
                anyhow::ensure!(
                    state.phase == Phase::AwaitingPayment,
                    "{} is {:?} before it was paid",
                    o.id,
                    state.phase
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Pays::With(card) = o.pays {
            let pay = OrderCommand::SubmitPayment {
                card: card.to_owned(),
            };
            shop.orders.execute_with(o.id, pay, &ctx).await?;
        }
    }
    Ok(())
}

/// Waits until every order ended, then checks it ended as expected, with the stock still
/// reserved for shipped orders only and the payments charged for them only. Prints a summary.
async fn settle(shop: &Shop, path: &str) -> anyhow::Result<bool> {
    let mut statuses = Vec::new();
    for o in &ORDERS {
        let status = loop {
            let status = shop.orders.load(o.id).await?.state().status.clone();
            if matches!(status, Status::Shipped | Status::Cancelled(_)) {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        statuses.push(status);
    }
    let mut ok = true;
    let mut kept: BTreeMap<&str, i64> = BTreeMap::new();
    for (o, status) in ORDERS.iter().zip(&statuses) {
        let charged = shop.payments.load(o.id).await?.state().charged;
        let shipped = *status == Status::Shipped;
        if shipped {
            *kept.entry(o.sku).or_default() += i64::from(o.qty);
        }
        let good = *status == o.expected() && charged == if shipped { o.cents } else { 0 };
        ok &= good;
        println!(
            "{path:>5} {}: {:<32} charged {:>3}.{:02}  {}",
            o.id,
            match status {
                Status::Cancelled(reason) => format!("cancelled, {reason}"),
                other => format!("{other:?}").to_lowercase(),
            },
            charged / 100,
            charged % 100,
            if good { "as expected" } else { "UNEXPECTED" }
        );
    }
    for sku in ["sku-a", "sku-b"] {
        let reserved = shop.stock.load(sku).await?.state().reserved;
        let expected = kept.get(sku).copied().unwrap_or(0);
        // Each order reserves once; each cancelled one releases once.
        let events = shop
            .stock
            .store()
            .read_stream(&shop.stock.stream_id(sku), VersionRange::all())
            .await?;
        let count = |kind: &str| events.iter().filter(|e| e.event_type == kind).count();
        let orders = ORDERS.iter().filter(|o| o.sku == sku);
        let cancelled = orders.clone().filter(|o| o.expected() != Status::Shipped);
        let good = reserved == expected
            && count("stock-reserved") == orders.count()
            && count("stock-released") == cancelled.count();
        ok &= good;
        println!(
            "{path:>5} {sku}: {reserved} units reserved, {} reservations, {} released  {}",
            count("stock-reserved"),
            count("stock-released"),
            if good { "as expected" } else { "UNEXPECTED" }
        );
    }
    Ok(ok)
}
