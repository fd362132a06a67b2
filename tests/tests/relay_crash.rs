//! The headline flow, PostgreSQL → relay → Redis, with the relay killed (SIGKILL) at random
//! points while writers append: every Redis key ends up equal to the store's log for it, each
//! event once, in log order, every stream in version order (issue 13, DESIGN §5.1, §8); on a
//! single Redis and on a Redis Cluster (issue 17).
//!
//! The relay runs as a child process (`src/bin/relay_child.rs`) so that a kill is a real crash:
//! no destructor, no lease release, a checkpoint transaction cut wherever it was. Every fourth
//! incarnation is told to stall in its first checkpoint save, after Redis answered, and is
//! killed there: the next one must re-send that batch without duplicating it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, RecordedEvent, Repository, StoreError, StreamId,
    TenantId,
};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore};
use eventsource_redis::{Keys, RedisConnection, RedisRelay, RelayOptions, Router};
use eventsource_tests::routing::TenantAndType;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::order::{Counter, exactly_once_error, tick, version_order_error};
use tokio_util::sync::CancellationToken;

const KILLS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_at_random_points_publishes_the_postgres_log_once_in_order() {
    killed_at_random_points("REDIS_URL").await;
}

/// The same on a Redis Cluster of three masters (`REDIS_CLUSTER_URLS`, its nodes): the
/// tenant's keys share one hash slot, so the relay's scripts and pipelines run on its master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_a_relay_killed_at_random_points_publishes_the_log_once_in_order() {
    killed_at_random_points("REDIS_CLUSTER_URLS").await;
}

/// Relay processes killed at random points (a quarter of them between Redis's answer and the
/// checkpoint) while writers append; then every key holds the log's events once, in order.
/// `redis_var` names the Redis: one URL, or a cluster's nodes separated by commas.
async fn killed_at_random_points(redis_var: &str) {
    let (Some(db_url), Some(redis_url)) = (
        support::service_url("DATABASE_URL"),
        support::service_url(redis_var),
    ) else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .test_before_acquire(false)
        .connect_with(PgConnectOptions::from_str(&db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&pool).await.expect("migrations");
    let conn = if redis_url.contains(',') {
        RedisConnection::open_cluster(redis_url.split(',')).await
    } else {
        RedisConnection::open(redis_url.as_str()).await
    }
    .expect("connect to Redis");
    let prefix = support::unique("crash");
    let keys = Keys::new(&prefix);
    let tenant = TenantId::new(support::unique("crash"));
    let name = support::unique("crash-relay");
    let grouped = PgEventStore::new(pool.clone());

    let done = CancellationToken::new();
    let writers = spawn_writers(&pool, &tenant, &done);

    let started = Instant::now();
    let mut stalled_kills = 0;
    for round in 0..KILLS {
        let stall = round % 4 == 3;
        let mut relay = support::child::relay(&db_url, &redis_url, &name, &prefix, &tenant, stall);
        relay.ready().await;
        if stall {
            // Killed after Redis answered, before the checkpoint moved.
            if relay
                .said("stalled", Duration::from_secs(5))
                .await
                .is_some()
            {
                stalled_kills += 1;
            }
        } else {
            tokio::time::sleep(Duration::from_micros(rand::random_range(0..30_000))).await;
        }
        relay.kill().await;
    }
    let killing = started.elapsed();
    assert!(
        stalled_kills >= KILLS / 4 - 2,
        "only {stalled_kills} kills between publish and checkpoint"
    );

    done.cancel();
    let mut committed = BTreeSet::new();
    for writer in writers {
        committed.extend(writer.await.expect("a writer panicked"));
    }

    // The last incarnation runs to the end of the log, once the log shows every commit.
    let log = support::tenant_log(&grouped, &tenant, committed.len()).await;
    let mut last = RedisRelay::new(
        grouped.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        name.clone(),
        RelayOptions::default()
            .with_instance_id("relay-under-test")
            .with_filter(LogFilter::tenant(tenant.clone())),
    )
    .with_router(TenantAndType::new(keys.clone()))
    .with_keys(&keys);
    last.catch_up().await.expect("the last relay catches up");
    eprintln!(
        "{KILLS} kills ({stalled_kills} between publish and checkpoint) in {killing:?}, {} events",
        log.len()
    );

    let mut failures = Vec::new();
    failures.extend(exactly_once_error("the store's log", &log, &committed));
    failures.extend(compare_keys(&mut conn.clone(), &keys, &log).await);
    failures.extend(version_order_error("the store's log", &log));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writers for the whole run, until `done`: commands through the repository (cached and not,
/// so with and without group commit), `Any` appends of one to three events, and transactions
/// that write their own stream before a shared one, all on shared streams. Each returns the
/// labels it committed.
fn spawn_writers(
    pool: &sqlx::PgPool,
    tenant: &TenantId,
    done: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    let grouped = PgEventStore::new(pool.clone());
    let plain = PgEventStore::new(pool.clone()).without_group_commit();
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let done = done.clone();
        let (pool, grouped, plain, tenant) =
            (pool.clone(), grouped.clone(), plain.clone(), tenant.clone());
        writers.push(tokio::spawn(async move {
            let cached = Repository::<Counter, _>::new(grouped.clone())
                .with_tenant(tenant.clone())
                .with_cache(16);
            let uncached = Repository::<Counter, _>::new(plain.clone())
                .with_tenant(tenant.clone())
                .without_cache();
            let mut committed = Vec::new();
            let mut next = w * 10_000_000;
            while !done.is_cancelled() {
                next += 1;
                match w {
                    6 | 7 => {
                        let own = StreamId::new(tenant.clone(), "ledger", format!("own-{w}"));
                        let shared = StreamId::new(
                            tenant.clone(),
                            "counter",
                            format!("order-{}", rand::random_range(0..6u32)),
                        );
                        let labels = [next, next + 1];
                        next += 1;
                        transaction_until_known(
                            &pool,
                            &tenant,
                            &[(own, labels[0]), (shared, labels[1])],
                        )
                        .await;
                        committed.extend(labels);
                    }
                    _ if w % 3 != 2 => {
                        let repository = if w % 3 == 0 { &cached } else { &uncached };
                        let id = format!("order-{}", rand::random_range(0..6u32));
                        match repository.execute(&id, next).await {
                            Ok(_) => committed.push(next),
                            Err(e) if e.is_conflict() => {}
                            Err(e) => panic!("command on {id}: {e:?}"),
                        }
                    }
                    _ => {
                        let store = if rand::random_bool(0.5) {
                            &grouped
                        } else {
                            &plain
                        };
                        let size = rand::random_range(1..=3u64);
                        let labels: Vec<u64> = (next..next + size).collect();
                        next += size;
                        let events = labels.iter().map(|l| tick(*l)).collect::<Vec<_>>();
                        let kind = if rand::random_bool(0.5) {
                            "order"
                        } else {
                            "ledger"
                        };
                        let stream = StreamId::new(
                            tenant.clone(),
                            if kind == "order" { "counter" } else { "ledger" },
                            format!("{kind}-{}", rand::random_range(0..6u32)),
                        );
                        append_until_known(store, &stream, events).await;
                        committed.extend(labels);
                    }
                }
                tokio::time::sleep(Duration::from_micros(rand::random_range(0..3_000))).await;
            }
            committed
        }));
    }

    writers
}

/// How the Redis keys differ from the store's `log` routed to them, and where they break
/// version order.
async fn compare_keys(
    redis: &mut RedisConnection,
    keys: &Keys,
    log: &[RecordedEvent],
) -> Vec<String> {
    let mut by_key: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    let router = TenantAndType::new(keys.clone());
    let mut targets = Vec::new();
    for event in log {
        targets.clear();
        router.route(event, &mut targets);
        for key in targets.drain(..) {
            by_key.entry(key).or_default().push(event.clone());
        }
    }
    assert_eq!(
        by_key.len(),
        3,
        "the tenant's stream and two aggregate types' streams"
    );
    let mut failures = Vec::new();
    for (key, want) in &by_key {
        let entries = support::order::redis_entries(redis, key).await;
        let got: Vec<RecordedEvent> = entries.iter().map(|(_, e)| e.clone()).collect();
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let positions: Vec<String> = want.iter().map(|e| e.position.to_string()).collect();
        if ids != positions {
            failures.push(format!(
                "{key}: {} entries, the log has {} events for it; entry ids differ from the \
                 log's positions",
                ids.len(),
                positions.len()
            ));
        } else if &got != want {
            failures.push(format!("{key}: an entry differs from its event in the log"));
        }
        failures.extend(version_order_error(key, &got));
    }
    failures
}

/// Appends with `Any`, retrying with the same events while the store is unavailable (a retry
/// of a stored batch is an idempotent no-op), so the append is known to have landed once.
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

/// Appends one event to each stream, with `Any`, in one transaction, retrying the whole
/// transaction with the same events until it commits.
async fn transaction_until_known(
    pool: &sqlx::PgPool,
    tenant: &TenantId,
    appends: &[(StreamId, u64)],
) {
    'attempt: for _ in 0..20 {
        let mut tx = eventsource_postgres::begin_tenant(pool, tenant)
            .await
            .expect("begin");
        for (stream, label) in appends {
            if let Err(e) = PgEventStore::append_in_tx(
                &mut tx,
                stream,
                ExpectedVersion::Any,
                vec![tick(*label)],
            )
            .await
            {
                // Told to retry the transaction, or the store was unavailable.
                assert!(
                    e.is_retryable(),
                    "append to {stream} in a transaction: {e:?}"
                );
                continue 'attempt;
            }
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..5))).await;
        tx.commit().await.expect("commit");
        return;
    }
    panic!("a transaction never got through");
}
