//! Durable sagas under crashes (issue 15, ADR 0017): an order saga ([`OrderSaga`]: reserve
//! stock → charge payment → ship; a declined payment releases the stock; a passed deadline
//! cancels the order and releases the stock) runs on the headline path — PostgreSQL → relay →
//! Redis consumer group → [`PgSagaHandler`] and [`PgDeadlineRunner`] — in child processes
//! (`src/bin/relay_child.rs`, `src/bin/saga_child.rs`), and
//!
//! - 1,000 orders are placed in 60 slices, and after each slice a saga runner or the relay is
//!   killed with SIGKILL at a random point (each kill finds orders in flight), 60 times, each
//!   respawned at once: every fifth saga runner under a new consumer name, leaving its
//!   predecessor's pending entries to be reclaimed by the others; every fourth relay kill is
//!   followed by a relay that stalls in its first checkpoint save, after Redis answered, and
//!   is killed there;
//! - with 200 orders in flight, PostgreSQL itself is restarted twice (fast stop, start; the
//!   second time after 3 s down) under the running processes, which must ride it out without
//!   a restart of their own.
//!
//! In both, at the end: every order ends in exactly one terminal state, the one its kind
//! decides (completed, or cancelled as declined or timed out); each command's events were
//! appended once (every order's events, counted by type across the stock, payment, shipment,
//! order and deadline streams, are its story, each once); each compensation (the stock's
//! release) ran once, and only for cancelled orders; each deadline fired once, only for orders
//! paid by hand; nothing is pending: no saga instance keeps a deadline, no deadline is due
//! even an hour later, no entry of the stream is pending in the group or dead-lettered, and
//! the group has read the whole stream.
//!
//! Each runs on a single Redis and on a Redis Cluster (issue 17, item 5).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventsource_core::{RecordedEvent, TenantId};
use eventsource_postgres::{MIGRATOR, PgDeadlineRunner, PgEventStore};
use eventsource_redis::{Keys, RedisConnection};
use eventsource_tests::order_saga::{Aggregates, Kind, OrderEvent, OrderState, SAGA, Stage};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::child::{self, ChildProcess};
use tokio::process::Command;

/// The processes of one run: a relay and two saga runners, each respawned when killed.
struct Fleet {
    db_url: String,
    redis_url: String,
    prefix: String,
    tenant: TenantId,
    relay_name: String,
    relay: Option<ChildProcess>,
    sagas: [Option<ChildProcess>; 2],
}

impl Fleet {
    async fn start(db_url: &str, redis_url: &str, tenant: &TenantId) -> Self {
        let mut fleet = Self {
            db_url: db_url.to_owned(),
            redis_url: redis_url.to_owned(),
            prefix: support::unique("saga-crash"),
            tenant: tenant.clone(),
            relay_name: support::unique("saga-crash-relay"),
            relay: None,
            sagas: [None, None],
        };
        fleet.relay = Some(fleet.spawn_relay(false).await);
        for slot in 0..2 {
            fleet.sagas[slot] = Some(fleet.spawn_saga(&format!("saga-{slot}")).await);
        }
        fleet
    }

    fn stream_key(&self) -> String {
        Keys::new(&self.prefix).tenant_stream(&self.tenant)
    }

    async fn spawn_relay(&self, stall: bool) -> ChildProcess {
        let mut relay = child::relay(
            &self.db_url,
            &self.redis_url,
            &self.relay_name,
            &self.prefix,
            &self.tenant,
            stall,
        );
        relay.ready().await;
        relay
    }

    /// A saga runner, as `consumer` of the group.
    async fn spawn_saga(&self, consumer: &str) -> ChildProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_saga_child"));
        command
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", &self.redis_url)
            .env("SAGA_PREFIX", &self.prefix)
            .env("SAGA_TENANT", self.tenant.as_str())
            .env("SAGA_CONSUMER", consumer);
        let mut saga = ChildProcess::spawn("saga runner", command);
        saga.ready().await;
        saga
    }

    /// Kills the relay and starts another; told to `stall`, the next one stops in its first
    /// checkpoint save, after Redis answered, is killed there and replaced. Returns whether
    /// it stalled.
    async fn kill_relay(&mut self, stall: bool) -> bool {
        self.relay.take().expect("a relay").kill().await;
        let mut stalled = false;
        if stall {
            let mut relay = self.spawn_relay(true).await;
            stalled = relay
                .said("stalled", Duration::from_secs(1))
                .await
                .is_some();
            relay.kill().await;
        }
        self.relay = Some(self.spawn_relay(false).await);
        stalled
    }

    /// Kills saga runner `slot` and starts another as `consumer`: under the same name it
    /// finds its predecessor's pending entries at once; under a new one it leaves them to be
    /// reclaimed once idle (3 s) by any runner.
    async fn kill_saga(&mut self, slot: usize, consumer: &str) {
        self.sagas[slot].take().expect("a saga runner").kill().await;
        self.sagas[slot] = Some(self.spawn_saga(consumer).await);
    }

    /// Kills every process, after checking none stopped on its own.
    async fn stop(mut self) {
        for process in [self.relay.take()]
            .into_iter()
            .chain(self.sagas.iter_mut().map(Option::take))
            .flatten()
        {
            process.kill().await;
        }
    }
}

async fn connect(db_url: &str) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect(db_url)
        .await
        .expect("connect to the database");
    MIGRATOR.run(&pool).await.expect("migrations");
    pool
}

/// Places the orders `orders` of `tenant`: `o-<i>` of [`Kind::of`]`(i)` on one of 40 stock
/// items.
async fn place_orders(pool: &PgPool, tenant: &TenantId, orders: std::ops::Range<usize>) {
    let aggregates = Aggregates::new(&PgEventStore::new(pool.clone()), tenant);
    for i in orders {
        let order = format!("o-{i}");
        let placed = OrderEvent::Placed {
            order: order.clone(),
            sku: format!("sku-{}", i % 40),
            kind: Kind::of(i),
        };
        aggregates
            .orders()
            .execute(&order, placed)
            .await
            .unwrap_or_else(|e| panic!("place {order}: {e:?}"));
    }
}

/// How many orders of `tenant` ended, and how many events it has.
async fn progress(pool: &PgPool, tenant: &TenantId) -> (usize, u64) {
    let (ended, events): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type IN ('order-completed', 'order-cancelled')),
                count(*)
         FROM events WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(pool)
    .await
    .expect("count the events");
    (
        usize::try_from(ended).expect("a count"),
        u64::try_from(events).expect("a count"),
    )
}

/// Waits up to `limit` until `count` orders ended, the relay published the whole log and the
/// group read and acknowledged all of it; returns how long that took.
async fn wait_until_settled(
    pool: &PgPool,
    redis: &mut RedisConnection,
    fleet: &Fleet,
    count: usize,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let key = fleet.stream_key();
    loop {
        let (ended, events) = progress(pool, &fleet.tenant).await;
        let stats = eventsource_redis::stats(redis, &key).await.expect("stats");
        let group = stats.groups.iter().find(|g| g.name == SAGA);
        let drained = group.is_some_and(|g| g.pending == 0 && g.lag == Some(0));
        if ended >= count && stats.length == events && drained {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not settled in {limit:?}: {ended} of {count} orders ended, {} of {events} events \
             published, group {group:?}",
            stats.length
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The order an event belongs to: its payload names it (a deadline event, as its instance).
fn order_of(event: &RecordedEvent) -> Option<&str> {
    event.payload["order"]
        .as_str()
        .or_else(|| event.payload["instance"].as_str())
}

/// Everything that breaks the invariants in the module's documentation, for orders
/// `0..count` of `fleet`'s tenant.
async fn violations(
    pool: &PgPool,
    redis: &mut RedisConnection,
    fleet: &Fleet,
    count: usize,
) -> Vec<String> {
    let tenant = &fleet.tenant;
    let mut failures = Vec::new();
    let log = support::tenant_log(&PgEventStore::new(pool.clone()), tenant, 0).await;
    let mut stories: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for event in &log {
        match order_of(event) {
            Some(order) => stories
                .entry(order)
                .or_default()
                .push(event.event_type.as_str()),
            None => failures.push(format!("{} names no order", event.event_type)),
        }
    }
    let mut wrong = Vec::new();
    for i in 0..count {
        let order = format!("o-{i}");
        let mut got = stories.remove(order.as_str()).unwrap_or_default();
        got.sort_unstable();
        let mut want = Kind::of(i).story().to_vec();
        want.sort_unstable();
        if got != want {
            wrong.push(format!("{order}: {got:?}, not {want:?}"));
        }
    }
    if !wrong.is_empty() {
        failures.push(format!(
            "{} of {count} orders' events are not their story, each once; first: {}",
            wrong.len(),
            wrong[0]
        ));
    }
    if !stories.is_empty() {
        failures.push(format!("events of unknown orders: {stories:?}"));
    }
    let reasons: Vec<(String, String)> = log
        .iter()
        .filter(|e| e.event_type == "order-cancelled")
        .map(|e| {
            let reason = e.payload["reason"].as_str().unwrap_or_default().to_owned();
            (order_of(e).unwrap_or_default().to_owned(), reason)
        })
        .collect();
    for (order, reason) in reasons {
        let i: usize = order[2..].parse().expect("o-<i>");
        let want = if Kind::of(i) == Kind::Declined {
            "declined"
        } else {
            "timeout"
        };
        if reason != want {
            failures.push(format!("{order} cancelled as {reason}, not {want}"));
        }
    }
    failures.extend(state_violations(pool, tenant, count).await);

    let runner = PgDeadlineRunner::new(pool.clone()).for_tenant(tenant.clone());
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let fired = runner.fire_due(later).await.expect("fire deadlines");
    if fired > 0 {
        failures.push(format!("{fired} deadlines were still pending"));
    }
    let stats = eventsource_redis::stats(redis, &fleet.stream_key())
        .await
        .expect("stats");
    match stats.groups.iter().find(|g| g.name == SAGA) {
        Some(g) if g.pending == 0 && g.dead_letters == 0 && g.lag == Some(0) => {}
        other => failures.push(format!("the group is not drained: {other:?}")),
    }
    failures
}

/// What is wrong with the saga instances' stored states: each order's instance is in the
/// terminal stage its kind decides, keeps no deadline, and ran the stock's release once if it
/// was cancelled.
async fn state_violations(pool: &PgPool, tenant: &TenantId, count: usize) -> Vec<String> {
    let rows: Vec<(
        String,
        serde_json::Value,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as(
        "SELECT instance, state, deadline_at FROM saga_instances
             WHERE tenant_id = $1 AND saga = $2",
    )
    .bind(tenant.as_str())
    .bind(SAGA)
    .fetch_all(pool)
    .await
    .expect("saga instances");
    let mut failures = Vec::new();
    if rows.len() != count {
        failures.push(format!("{} saga instances for {count} orders", rows.len()));
    }
    let mut wrong = Vec::new();
    for (instance, state, deadline) in rows {
        let state: OrderState = serde_json::from_value(state).expect("a state that decodes");
        let i: usize = instance[2..].parse().expect("o-<i>");
        let (want, released) = match Kind::of(i) {
            Kind::Ok => (Stage::Completed, 0),
            Kind::Declined | Kind::Manual => (Stage::Cancelled, 1),
        };
        if state.stage != want || state.compensations.ran().len() != released || deadline.is_some()
        {
            wrong.push(format!(
                "{instance}: {:?}, {} compensations ran, deadline {deadline:?}",
                state.stage,
                state.compensations.ran().len()
            ));
        }
    }
    if !wrong.is_empty() {
        failures.push(format!(
            "{} saga instances are not as their order's kind decides; first: {}",
            wrong.len(),
            wrong[0]
        ));
    }
    failures
}

async fn redis(url: &str) -> RedisConnection {
    support::redis(url).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_runners_and_the_relay_killed_at_random_points_finish_every_order_once() {
    killed_at_random_points("REDIS_URL").await;
}

/// The same on a Redis Cluster (`REDIS_CLUSTER_URLS`): the relay, the saga runners' reads,
/// acks and reclaims go through cluster connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_saga_runners_and_the_relay_killed_at_random_finish_every_order_once() {
    killed_at_random_points("REDIS_CLUSTER_URLS").await;
}

/// 1,000 orders placed in 60 slices, a saga runner or the relay killed after each;
/// `redis_var` names the Redis: one URL, or a cluster's nodes separated by commas.
async fn killed_at_random_points(redis_var: &str) {
    const ORDERS: usize = 1_000;
    const KILLS: usize = 60;
    let (Some(db_url), Some(redis_url)) = (
        support::service_url("DATABASE_URL"),
        support::service_url(redis_var),
    ) else {
        return;
    };
    let pool = connect(&db_url).await;
    let mut conn = redis(&redis_url).await;
    let tenant = TenantId::new(support::unique("saga-crash"));
    let started = Instant::now();
    let mut fleet = Fleet::start(&db_url, &redis_url, &tenant).await;

    // Each round places the next slice of the orders, lets the processes work on them for up to
    // 0.4 s and kills one: every kill finds orders in flight.
    let (mut relay_kills, mut stalled, mut saga_kills) = (0, 0, 0);
    let mut in_flight = Vec::new();
    for round in 0..KILLS {
        let placed = (round + 1) * ORDERS / KILLS;
        place_orders(&pool, &tenant, round * ORDERS / KILLS..placed).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(20..400))).await;
        in_flight.push(placed - progress(&pool, &tenant).await.0);
        if round % 3 == 0 {
            relay_kills += 1;
            if fleet.kill_relay(relay_kills % 4 == 0).await {
                stalled += 1;
            }
        } else {
            saga_kills += 1;
            let slot = rand::random_range(0..2);
            let consumer = if saga_kills % 5 == 0 {
                format!("saga-{slot}-{round}")
            } else {
                format!("saga-{slot}")
            };
            fleet.kill_saga(slot, &consumer).await;
        }
    }
    let killing = started.elapsed();
    let settling =
        wait_until_settled(&pool, &mut conn, &fleet, ORDERS, Duration::from_mins(1)).await;
    // Give a duplicate, if any, the time to land before looking for one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures = violations(&pool, &mut conn, &fleet, ORDERS).await;
    fleet.stop().await;
    eprintln!(
        "{ORDERS} orders; {KILLS} kills ({relay_kills} of the relay, {stalled} of them between \
         publish and checkpoint; {saga_kills} of saga runners) in {killing:?}, orders in flight \
         at each kill {}..={}; settled {settling:?} later",
        in_flight.iter().min().expect("kills"),
        in_flight.iter().max().expect("kills")
    );
    assert!(
        in_flight.iter().all(|n| *n > 0),
        "a kill found no order in flight: {in_flight:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_runners_and_the_relay_ride_out_a_postgres_restart() {
    ride_out_a_postgres_restart("REDIS_URL").await;
}

/// The same with the saga runners and the relay on a Redis Cluster (`REDIS_CLUSTER_URLS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_saga_runners_and_the_relay_ride_out_a_postgres_restart() {
    ride_out_a_postgres_restart("REDIS_CLUSTER_URLS").await;
}

/// 200 orders, PostgreSQL restarted twice under the running processes; `redis_var` names the
/// Redis.
async fn ride_out_a_postgres_restart(redis_var: &str) {
    const ORDERS: usize = 200;
    let Some(redis_url) = support::service_url(redis_var) else {
        return;
    };
    let Some(cluster) = support::cluster::Cluster::start() else {
        return;
    };
    let db_url = cluster.url();
    let pool = connect(&db_url).await;
    let mut conn = redis(&redis_url).await;
    let tenant = TenantId::new(support::unique("saga-restart"));
    let mut fleet = Fleet::start(&db_url, &redis_url, &tenant).await;
    place_orders(&pool, &tenant, 0..ORDERS).await;

    // Twice: once the first orders ended, at once; and once most did, while the deadlines of
    // orders paid by hand (due 1.5 s after their order was placed) are pending, down for 3 s
    // (longer than a deadline runner's retries last).
    let mut restarts = Vec::new();
    for (threshold, down) in [(20, 0), (120, 3_000)] {
        let started = Instant::now();
        let ended = loop {
            // A connection of its own: the pool's died with the server.
            let probe = PgPoolOptions::new()
                .max_connections(1)
                .connect(&db_url)
                .await
                .expect("connect");
            let (ended, _) = progress(&probe, &tenant).await;
            probe.close().await;
            if ended >= threshold {
                break ended;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {ended} orders ended in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let started = Instant::now();
        cluster.restart(Duration::from_millis(down));
        restarts.push((ended, started.elapsed()));
    }
    assert!(
        restarts.iter().all(|(ended, _)| *ended < ORDERS),
        "a restart came after every order ended: it proved nothing"
    );
    // The test's own connections died with the server.
    let pool = connect(&db_url).await;
    let settling =
        wait_until_settled(&pool, &mut conn, &fleet, ORDERS, Duration::from_mins(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures = violations(&pool, &mut conn, &fleet, ORDERS).await;
    let survived = [fleet.relay.as_mut()]
        .into_iter()
        .chain(fleet.sagas.iter_mut().map(Option::as_mut))
        .flatten()
        .all(|process| process.exited().is_none());
    assert!(
        survived,
        "a process stopped instead of riding out the restarts"
    );
    fleet.stop().await;
    eprintln!(
        "{ORDERS} orders; PostgreSQL restarted with (orders ended, restart took) {restarts:?}; \
         settled {settling:?} later"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
