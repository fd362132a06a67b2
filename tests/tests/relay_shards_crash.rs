//! A pool of three relay processes over three shards, SIGKILLed at random points while
//! writers append to PostgreSQL: the survivors (or the restarted process) take the dead one's
//! shards over, and every tenant's Redis keys end equal to the store's log for them, each
//! event once, in log order (issue 17, item 3; ADR 0031); on a single Redis and on a Redis
//! Cluster (issue 17, item 5).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr as _;
use std::time::Duration;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, RecordedEvent, StoreError, StreamId, TenantId,
};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore};
use eventsource_redis::{Keys, RedisConnection, RedisRelay, RelayOptions, Router, shard_of};
use eventsource_tests::routing::TenantAndType;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::order::{exactly_once_error, tick, version_order_error};
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 3;
const KILLS: usize = 24;
const LEASE_MS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_sharded_relays_killed_at_random_publishes_once_in_order() {
    killed_at_random("REDIS_URL").await;
}

/// The same on a Redis Cluster of three masters (`REDIS_CLUSTER_URLS`): the tenants' keys lie
/// in several slots, on several masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_a_pool_of_sharded_relays_killed_at_random_publishes_once_in_order() {
    killed_at_random("REDIS_CLUSTER_URLS").await;
}

/// A pool of relay processes over three shards, one of them killed at random `KILLS` times
/// while writers append; then every key holds its events once, in order. `redis_var` names
/// the Redis: one URL, or a cluster's nodes separated by commas.
async fn killed_at_random(redis_var: &str) {
    let (Some(db_url), Some(redis_url)) = (
        support::service_url("DATABASE_URL"),
        support::service_url(redis_var),
    ) else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect_with(PgConnectOptions::from_str(&db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&pool).await.expect("migrations");
    let (_, conn) = support::redis(&redis_url).await;
    let prefix = support::unique("shards");
    let keys = Keys::new(&prefix);
    let name = support::unique("shard-relay");
    let tenants = shard_tenants();
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let store = PgEventStore::new(pool.clone());

    let done = CancellationToken::new();
    let writers = spawn_writers(&store, &tenants, &done);

    let spawn = |i: usize| {
        support::child::sharded_relay(
            &db_url,
            &redis_url,
            &name,
            &prefix,
            &tenants,
            since,
            SHARDS,
            &format!("pool-{i}"),
            LEASE_MS,
        )
    };
    let mut relays = Vec::new();
    for i in 0..3 {
        let mut relay = spawn(i);
        relay.ready().await;
        relays.push(relay);
    }
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..300))).await;
        let victim = rand::random_range(0..relays.len());
        let dead = relays.swap_remove(victim);
        dead.kill().await;
        // Sometimes back at once (its own leases taken back), sometimes after they expired
        // and another process took its shards over.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..2 * LEASE_MS))).await;
        let mut relay = spawn(victim);
        relay.ready().await;
        relays.push(relay);
    }
    done.cancel();
    let mut committed = BTreeSet::new();
    for writer in writers {
        committed.extend(writer.await.expect("a writer panicked"));
    }
    // The pool, still running, publishes the rest.
    let log = tenants_log(&store, &tenants, committed.len()).await;
    let expected = routed(&log, &keys);
    let mut redis = conn.clone();
    support::wait_for("the pool publishes every event", async || {
        for (key, want) in &expected {
            if support::order::redis_entries(&mut redis, key).await.len() < want.len() {
                return false;
            }
        }
        true
    })
    .await;
    for relay in relays {
        relay.kill().await;
    }
    // Every shard's checkpoint is past the tenants' last event: nothing left to re-send.
    let mut last = RedisRelay::new(
        store.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        name.clone(),
        RelayOptions::default()
            .with_shards(SHARDS)
            .with_filter(LogFilter::all().with_since(since)),
    )
    .with_router(TenantAndType::new(keys.clone()))
    .with_keys(&keys);
    last.catch_up().await.expect("the last relay catches up");

    let mut failures = Vec::new();
    failures.extend(exactly_once_error("the store's log", &log, &committed));
    failures.extend(compare_keys(&mut redis, &expected).await);
    eprintln!(
        "{KILLS} kills, {} events of {} tenants over {} keys",
        log.len(),
        tenants.len(),
        expected.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Tenants covering every shard, two each at least.
fn shard_tenants() -> Vec<TenantId> {
    let mut tenants: Vec<TenantId> = Vec::new();
    let mut per_shard = [0usize; SHARDS as usize];
    while per_shard.iter().any(|n| *n < 2) {
        let tenant = TenantId::new(support::unique("shard"));
        per_shard[shard_of(&tenant, SHARDS) as usize] += 1;
        tenants.push(tenant);
    }
    tenants
}

/// The events of `tenants` in log order, once the log shows `count` of them.
async fn tenants_log(
    store: &PgEventStore,
    tenants: &[TenantId],
    count: usize,
) -> Vec<RecordedEvent> {
    let mut log = Vec::new();
    support::wait_for("the log shows every commit", async || {
        log.clear();
        for tenant in tenants {
            log.extend(support::tenant_log(store, tenant, 0).await);
        }
        log.len() >= count
    })
    .await;
    log.sort_by_key(|e| e.position);
    log
}

/// The events of `log` per key the children's router sends them to.
fn routed(log: &[RecordedEvent], keys: &Keys) -> BTreeMap<String, Vec<RecordedEvent>> {
    let mut expected: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    let router = TenantAndType::new(keys.clone());
    for event in log {
        let mut targets = Vec::new();
        router.route(event, &mut targets);
        for key in targets {
            expected.entry(key).or_default().push(event.clone());
        }
    }
    expected
}

/// How each key differs from the events the log routes to it, and where it breaks version
/// order.
async fn compare_keys(
    redis: &mut RedisConnection,
    expected: &BTreeMap<String, Vec<RecordedEvent>>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (key, want) in expected {
        let entries = support::order::redis_entries(redis, key).await;
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let positions: Vec<String> = want.iter().map(|e| e.position.to_string()).collect();
        if ids != positions {
            failures.push(format!(
                "{key}: {} entries for {} events, or ids differ from the log's positions",
                ids.len(),
                positions.len()
            ));
        }
        let got: Vec<RecordedEvent> = entries.into_iter().map(|(_, e)| e).collect();
        if &got != want {
            failures.push(format!("{key}: an entry differs from its event"));
        }
        failures.extend(version_order_error(key, &got));
    }
    failures
}

/// Four writers appending one to three events to random streams of random `tenants` until
/// `done`; each returns the labels it committed.
fn spawn_writers(
    store: &PgEventStore,
    tenants: &[TenantId],
    done: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    (0..4u64)
        .map(|w| {
            let (store, tenants, done) = (store.clone(), tenants.to_vec(), done.clone());
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut next = w * 10_000_000;
                while !done.is_cancelled() {
                    let tenant = &tenants[rand::random_range(0..tenants.len())];
                    let kind = if rand::random_bool(0.5) {
                        "counter"
                    } else {
                        "ledger"
                    };
                    let stream = StreamId::new(
                        tenant.clone(),
                        kind,
                        format!("s-{}", rand::random_range(0..4u32)),
                    );
                    let size = rand::random_range(1..=3u64);
                    let labels: Vec<u64> = (next + 1..=next + size).collect();
                    next += size;
                    append_until_known(&store, &stream, labels.iter().map(|l| tick(*l)).collect())
                        .await;
                    committed.extend(labels);
                    tokio::time::sleep(Duration::from_micros(rand::random_range(0..3_000))).await;
                }
                committed
            })
        })
        .collect()
}

/// Appends with `Any`, retrying with the same events while the store is unavailable.
async fn append_until_known(
    store: &PgEventStore,
    stream: &StreamId,
    events: Vec<eventsource_core::NewEvent>,
) {
    for _ in 0..20 {
        match store
            .append(stream, ExpectedVersion::Any, events.clone())
            .await
        {
            Ok(_) => return,
            Err(e @ StoreError::Unavailable(_)) => eprintln!("append to {stream}: {e}; retrying"),
            Err(e) => panic!("append to {stream}: {e:?}"),
        }
    }
    panic!("the append to {stream} never got through");
}
