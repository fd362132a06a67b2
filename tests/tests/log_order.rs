//! Under concurrent writers of every kind, every stream's versions increase along the global
//! log, as `read_all`, `read_log` and the relay's Redis streams show it (issue 13).
//!
//! Sixteen writers over two tenants share a few hot streams and own a few each, for a bounded
//! time. They append with `Any`, `StreamExists` and `Exact`, through a store with group commit
//! and one without, through the repository (cached and not), and inside transactions held open
//! for up to 25 ms, some rolled back; a transaction told to retry is retried whole with the
//! same events. Each writer records the labels of the events it committed; every reader must
//! show exactly those, once each, every stream in version order. And no writer deadlocks:
//! groups of one tenant or several, and transactions appending in stream order, lock streams
//! rows in that one order.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, Repository,
    StoreError, StreamId, TenantId, Version, read_log,
};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore, begin_tenant};
use eventsource_redis::{Keys, RedisRelay, RelayOptions};
use futures::TryStreamExt as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::order::{Counter, exactly_once_error, tick, version_order_error};
use tokio_util::sync::CancellationToken;

const WRITERS: u64 = 16;
const WRITING: Duration = Duration::from_secs(8);
const HOT_STREAMS: u64 = 3;
const OWN_STREAMS: u64 = 3;

/// Whether `err` asks the caller to retry its whole transaction (it is older than a stream's
/// last writer).
fn is_retry_transaction(err: &StoreError) -> bool {
    matches!(err, StoreError::RetryTransaction { .. })
}

/// What a writer needs: both stores, repositories over them, its tenant and streams.
#[derive(Clone)]
struct Writer {
    id: u64,
    pool: PgPool,
    grouped: PgEventStore,
    plain: PgEventStore,
    cached: Repository<Counter, PgEventStore>,
    uncached: Repository<Counter, PgEventStore>,
    tenant: TenantId,
    /// Transactions told to retry, over every writer.
    retried: Arc<AtomicU64>,
}

impl Writer {
    fn hot(&self, k: u64) -> StreamId {
        StreamId::new(self.tenant.clone(), "counter", format!("hot-{k}"))
    }

    fn own(&self, k: u64) -> StreamId {
        StreamId::new(self.tenant.clone(), "counter", format!("w{}-{k}", self.id))
    }

    fn pick_stream(&self) -> StreamId {
        if rand::random_bool(0.6) {
            self.hot(rand::random_range(0..HOT_STREAMS))
        } else {
            self.own(rand::random_range(0..OWN_STREAMS))
        }
    }

    fn store(&self) -> &PgEventStore {
        if rand::random_bool(0.5) {
            &self.grouped
        } else {
            &self.plain
        }
    }

    /// Labels are unique across the run: the writer's id, then its own counter.
    fn events(&self, next: &mut u64, n: u64) -> Vec<NewEvent> {
        (0..n)
            .map(|_| {
                *next += 1;
                tick(self.id * 1_000_000 + *next)
            })
            .collect()
    }

    /// Appends until `deadline`; returns the labels committed.
    async fn run(self, deadline: Instant) -> Vec<u64> {
        let mut committed = Vec::new();
        let mut next = 0u64;
        while Instant::now() < deadline {
            let choice = rand::random_range(0..10u32);
            match choice {
                0..=2 => self.append(&mut next, &mut committed).await,
                3..=4 => self.command(&mut next, &mut committed).await,
                _ => self.transaction(&mut next, &mut committed).await,
            }
        }
        committed
    }

    /// One append outside a transaction, with a random expectation.
    async fn append(&self, next: &mut u64, committed: &mut Vec<u64>) {
        let stream = self.pick_stream();
        let size = rand::random_range(1..=3);
        let events = self.events(next, size);
        let store = self.store();
        let expected = match rand::random_range(0..3u32) {
            0 => ExpectedVersion::Any,
            1 => ExpectedVersion::StreamExists,
            _ => ExpectedVersion::Exact(store.stream_version(&stream).await.expect("version")),
        };
        let labels: Vec<u64> = events.iter().map(label_of).collect();
        // A retry with the same events is idempotent, so an unavailable store is retried until
        // the outcome is known.
        for _ in 0..20 {
            match store.append(&stream, expected, events.clone()).await {
                Ok(_) => {
                    committed.extend(labels);
                    return;
                }
                Err(StoreError::Conflict { .. }) => return,
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("append to {stream} at {expected}: {e:?}"),
            }
        }
        panic!("the append to {stream} never got through");
    }

    /// One command through a repository.
    async fn command(&self, next: &mut u64, committed: &mut Vec<u64>) {
        let id = if rand::random_bool(0.6) {
            format!("hot-{}", rand::random_range(0..HOT_STREAMS))
        } else {
            format!("w{}-{}", self.id, rand::random_range(0..OWN_STREAMS))
        };
        let repository = if rand::random_bool(0.5) {
            &self.cached
        } else {
            &self.uncached
        };
        *next += 1;
        let label = self.id * 1_000_000 + *next;
        match repository.execute(&id, label).await {
            Ok(_) => committed.push(label),
            // Conflicts outlasted the retry policy on a hot stream: nothing was written.
            Err(e) if e.is_conflict() => {}
            Err(e) => panic!("command on {id}: {e:?}"),
        }
    }

    /// A transaction of one to three appends to distinct streams (in stream order, as the
    /// group commit locks them, so they cannot deadlock with it), held open for up to 25 ms,
    /// rolled back one time in six. Retried whole, with the same events, when told to.
    async fn transaction(&self, next: &mut u64, committed: &mut Vec<u64>) {
        let (appends, hold, roll_back) = {
            let count = rand::random_range(1..=3);
            let mut streams: Vec<StreamId> = (0..count).map(|_| self.pick_stream()).collect();
            streams.sort();
            streams.dedup();
            let appends: Vec<(StreamId, u32, Vec<NewEvent>)> = streams
                .into_iter()
                .map(|s| {
                    let size = rand::random_range(1..=3);
                    (s, rand::random_range(0..3u32), self.events(next, size))
                })
                .collect();
            (
                appends,
                Duration::from_millis(rand::random_range(0..=25)),
                rand::random_bool(1.0 / 6.0),
            )
        };
        for _ in 0..50 {
            let mut tx = begin_tenant(&self.pool, &self.tenant).await.expect("begin");
            let mut outcome = Ok(());
            for (stream, kind, events) in &appends {
                let expected = match kind {
                    0 => ExpectedVersion::Any,
                    1 => ExpectedVersion::StreamExists,
                    _ => ExpectedVersion::Exact(
                        self.grouped.stream_version(stream).await.expect("version"),
                    ),
                };
                if let Err(e) =
                    PgEventStore::append_in_tx(&mut tx, stream, expected, events.clone()).await
                {
                    outcome = Err(e);
                    break;
                }
            }
            match outcome {
                Ok(()) => {
                    tokio::time::sleep(hold).await;
                    if roll_back {
                        tx.rollback().await.expect("roll back");
                    } else {
                        tx.commit().await.expect("commit");
                        committed.extend(
                            appends
                                .iter()
                                .flat_map(|(_, _, es)| es.iter().map(label_of)),
                        );
                    }
                    return;
                }
                // The caller's choice: a transaction whose expectation failed is given up.
                Err(StoreError::Conflict { .. }) => {
                    tx.rollback().await.expect("roll back");
                    return;
                }
                Err(e) if is_retry_transaction(&e) => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    drop(tx);
                }
                Err(e) if e.is_retryable() => drop(tx),
                Err(e) => panic!("transaction of writer {}: {e:?}", self.id),
            }
        }
        panic!("a transaction of writer {} never got through", self.id);
    }
}

fn label_of(event: &NewEvent) -> u64 {
    event.payload["label"].as_u64().expect("a labelled event")
}

/// Reads every tenant's log after `start` until it holds `count` events of `tenants`.
async fn tail_all(
    store: &PgEventStore,
    start: LogPosition,
    tenants: &[TenantId],
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut after = start;
    let mut seen = Vec::new();
    while seen.len() < count {
        let page = store
            .read_all(after, 1_000, &LogFilter::all())
            .await
            .expect("read_all");
        if let Some(last) = page.last() {
            after = last.position;
        } else {
            assert!(
                Instant::now() < deadline,
                "read_all showed {} of {count} events in 60 s",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.extend(page.into_iter().filter(|e| tenants.contains(e.tenant())));
    }
    seen
}

/// Runs the writers for [`WRITING`], half of them on each tenant; returns the labels each
/// tenant's writers committed.
async fn run_writers(
    pool: &PgPool,
    grouped: &PgEventStore,
    plain: &PgEventStore,
    tenants: &[TenantId; 2],
) -> HashMap<TenantId, BTreeSet<u64>> {
    let retried = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + WRITING;
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let tenant = tenants[usize::try_from(id % 2).expect("0 or 1")].clone();
            let writer = Writer {
                id: id + 1,
                pool: pool.clone(),
                grouped: grouped.clone(),
                plain: plain.clone(),
                cached: Repository::new(grouped.clone())
                    .with_tenant(tenant.clone())
                    .with_cache(64),
                uncached: Repository::new(plain.clone())
                    .with_tenant(tenant.clone())
                    .without_cache(),
                tenant,
                retried: retried.clone(),
            };
            (writer.tenant.clone(), tokio::spawn(writer.run(deadline)))
        })
        .collect();
    let mut committed: HashMap<TenantId, BTreeSet<u64>> = HashMap::new();
    for (tenant, writer) in writers {
        let labels = writer.await.expect("a writer panicked");
        committed.entry(tenant).or_default().extend(labels);
    }
    let total: usize = committed.values().map(BTreeSet::len).sum();
    eprintln!(
        "{total} events committed by {WRITERS} writers in {:?}; {} transactions told to retry",
        started.elapsed(),
        retried.load(Ordering::Relaxed)
    );
    committed
}

/// Each tenant's Redis stream (key and events), once the relays have published every
/// committed event and stopped.
async fn relay_streams(
    redis: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    tenants: &[TenantId],
    committed: &HashMap<TenantId, BTreeSet<u64>>,
    stop: CancellationToken,
    relays: Vec<tokio::task::JoinHandle<Result<(), eventsource_redis::RedisStoreError>>>,
) -> Vec<(String, Vec<RecordedEvent>)> {
    for tenant in tenants {
        let key = keys.tenant_stream(tenant);
        let want = committed[tenant].len();
        support::wait_for(
            &format!("the relay to publish {want} events to {key}"),
            async || {
                let len: usize = redis::AsyncCommands::xlen(redis, &key).await.expect("XLEN");
                len >= want
            },
        )
        .await;
    }
    stop.cancel();
    for relay in relays {
        relay
            .await
            .expect("join")
            .expect("the relay ran without error");
    }
    let mut streams = Vec::new();
    for tenant in tenants {
        let key = keys.tenant_stream(tenant);
        let entries = support::order::redis_entries(redis, &key).await;
        for (id, event) in &entries {
            assert_eq!(
                id,
                &event.position.to_string(),
                "entry ids are log positions"
            );
        }
        streams.push((key, entries.into_iter().map(|(_, e)| e).collect()));
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stream_stays_in_version_order_along_every_reader_under_mixed_writers() {
    let (Some(db_url), Some(redis_url)) = (
        support::service_url("DATABASE_URL"),
        support::service_url("REDIS_URL"),
    ) else {
        return;
    };
    let options = PgConnectOptions::from_str(&db_url).expect("DATABASE_URL");
    let pool = PgPoolOptions::new()
        .max_connections(48)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&pool).await.expect("migrations");
    let client = redis::Client::open(redis_url.as_str()).expect("REDIS_URL");
    let conn = client
        .get_connection_manager()
        .await
        .expect("connect to Redis");
    let keys = Keys::new(&support::unique("order"));

    let grouped = PgEventStore::new(pool.clone());
    let plain = PgEventStore::new(pool.clone()).without_group_commit();
    let tenants = [
        TenantId::new(support::unique("order-a")),
        TenantId::new(support::unique("order-b")),
    ];
    let start = support::order::log_start(&pool).await;
    let deadlocks_before = deadlocks(&db_url).await;

    // The relays tail each tenant's log while the writers run, as in production.
    let stop = CancellationToken::new();
    let relays: Vec<_> = tenants
        .iter()
        .map(|tenant| {
            let relay = RedisRelay::new(
                grouped.clone(),
                PgCheckpointStore::new(pool.clone()),
                conn.clone(),
                format!("order-{}", tenant.as_str()),
                RelayOptions::default()
                    .with_batch_size(200)
                    .with_max_idle_poll(Duration::from_millis(20))
                    .with_filter(LogFilter::tenant(tenant.clone())),
            )
            .with_keys(&keys);
            tokio::spawn(relay.run(stop.clone()))
        })
        .collect();

    let committed = run_writers(&pool, &grouped, &plain, &tenants).await;
    let total: usize = committed.values().map(BTreeSet::len).sum();
    assert!(
        total > 300,
        "only {total} events committed: the test proves little"
    );

    // Every reader is checked before the test fails, so its message says which ones broke.
    let mut failures = Vec::new();
    let mut check = |what: String, events: &[RecordedEvent], labels: &BTreeSet<u64>| {
        failures.extend(version_order_error(&what, events));
        failures.extend(exactly_once_error(&what, events, labels));
    };

    // read_all over every tenant.
    let all = tail_all(&grouped, start, &tenants, total).await;
    for tenant in &tenants {
        let of_tenant: Vec<RecordedEvent> = all
            .iter()
            .filter(|e| e.tenant() == tenant)
            .cloned()
            .collect();
        check(
            format!("read_all (every tenant), {tenant}"),
            &of_tenant,
            &committed[tenant],
        );
    }

    // read_log, core's paged reader, per tenant and in small pages.
    for tenant in &tenants {
        let events: Vec<RecordedEvent> =
            read_log(&grouped, start, 97, LogFilter::tenant(tenant.clone()))
                .try_collect()
                .await
                .expect("read_log");
        check(format!("read_log, {tenant}"), &events, &committed[tenant]);
    }

    // The relay's stream of each tenant, once it has published everything.
    let streams = relay_streams(&mut conn.clone(), &keys, &tenants, &committed, stop, relays).await;
    for (tenant, (key, events)) in tenants.iter().zip(streams) {
        check(format!("Redis stream {key}"), &events, &committed[tenant]);
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A backend reports its deadlocks to the statistics when it ends, at the latest.
    pool.close().await;
    assert_eq!(
        deadlocks(&db_url).await,
        deadlocks_before,
        "writers deadlocked (the server log names the statements)"
    );
    assert_streams_were_hot(&db_url, &tenants).await;
}

/// The deadlocks the server detected in the test's database so far, read on a connection of
/// its own with fresh statistics.
async fn deadlocks(db_url: &str) -> i64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(PgConnectOptions::from_str(db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    // Backends flush their statistics as they exit: wait (a while at most) for the test's
    // closed connections to be gone.
    for _ in 0..100 {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'",
        )
        .fetch_one(&pool)
        .await
        .expect("the other backends");
        if others == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&pool)
        .await
        .expect("fresh statistics");
    let count = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .expect("the deadlock count");
    pool.close().await;
    count
}

/// Each tenant's hot streams took many appends: the writers contended on them.
async fn assert_streams_were_hot(db_url: &str, tenants: &[TenantId]) {
    let store = PgEventStore::new(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(PgConnectOptions::from_str(db_url).expect("DATABASE_URL"))
            .await
            .expect("connect to DATABASE_URL"),
    );
    for tenant in tenants {
        for k in 0..HOT_STREAMS {
            let hot = StreamId::new(tenant.clone(), "counter", format!("hot-{k}"));
            assert!(
                store.stream_version(&hot).await.expect("version") > Version::new(20),
                "{hot} was not hot"
            );
        }
    }
}
