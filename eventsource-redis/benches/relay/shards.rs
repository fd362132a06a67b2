//! Relay shards on the cluster (issue 17, item 3), over an in-memory log and, with
//! `DATABASE_URL`, over a PostgreSQL log (ADR 0035).

use std::time::Instant;

use eventsource_core::{
    Appended, CheckpointStore as _, EventStore, ExpectedVersion, InMemoryCheckpointStore,
    InMemoryEventStore, LogFilter, LogPosition, NewEvent, RecordedEvent, Shard, StoreError,
    StreamId, TenantId, VersionRange,
};
use eventsource_redis::{Keys, RedisConnection, RedisRelay, RelayOptions, codec};
use redis::AsyncCommands as _;

use super::{Row, fill};

const SHARD_EVENTS: usize = 60_000;
const SHARD_TENANTS: usize = 12;

/// Relay throughput on the cluster with 1, 2 and 3 shards, beside raw redis-rs doing the same
/// from as many concurrent tasks.
///
/// Shape: the log holds `SHARD_EVENTS` events of `SHARD_TENANTS` tenants (spread over the
/// cluster's masters); with `k` shards, `k` relays (each a tokio task with its own cluster
/// connection and `with_shard(i)`) catch up from the log's head before the fill, batches of
/// 1,000, and the figure is all events over the time until the last relay is done. Each relay
/// reads its tenants' events (`LogFilter::with_shard`) and publishes them. Raw: `k` tasks doing
/// the same by hand (see [`raw_sharded`]). With `DATABASE_URL` the same over a `PgEventStore`,
/// plus a row of 3 shards through a store that ignores the shard filter (each shard reads the
/// whole log, as before ADR 0035).
pub(super) async fn shard_rows(urls: &[String]) -> Vec<Row> {
    let store = InMemoryEventStore::new();
    let tenants = bench_tenants("shard-bench");
    for tenant in &tenants {
        fill(&store, tenant, SHARD_EVENTS / SHARD_TENANTS).await;
    }
    let mut rows = Vec::new();
    for shards in 1..=3u32 {
        rows.extend(
            shard_row(
                "cluster relay, memory log",
                urls,
                &store,
                None,
                &tenants,
                shards,
            )
            .await,
        );
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect(&url)
            .await
            .expect("DATABASE_URL");
        eventsource_postgres::MIGRATOR
            .run(&pool)
            .await
            .expect("migrate");
        let store = eventsource_postgres::PgEventStore::new(pool);
        let start = store.log_head().await.expect("head");
        let tenants = bench_tenants(&format!("pg-bench-{}", uuid::Uuid::new_v4().simple()));
        for tenant in &tenants {
            fill(&store, tenant, SHARD_EVENTS / SHARD_TENANTS).await;
        }
        for shards in 1..=3u32 {
            rows.extend(
                shard_row(
                    "cluster relay, PostgreSQL log",
                    urls,
                    &store,
                    start,
                    &tenants,
                    shards,
                )
                .await,
            );
        }
        rows.extend(
            shard_row(
                "cluster relay, PostgreSQL log read whole by each shard",
                urls,
                &WholeLog(store),
                start,
                &tenants,
                3,
            )
            .await,
        );
    }
    rows
}

fn bench_tenants(prefix: &str) -> Vec<String> {
    (0..SHARD_TENANTS)
        .map(|i| format!("{prefix}-{i}"))
        .collect()
}

/// Two rows: `shards` relays over `store` after `start`, beside [`raw_sharded`]; and the CPU
/// each side cost per event, of the whole machine and of the cluster's Redis nodes (on two
/// cores shared by the benchmark, PostgreSQL and six nodes, a saturated machine is why a
/// side stops growing with shards).
async fn shard_row<S: EventStore + Clone + 'static>(
    label: &str,
    urls: &[String],
    store: &S,
    start: Option<LogPosition>,
    tenants: &[String],
    shards: u32,
) -> [Row; 2] {
    let events = count(store, start, tenants).await;
    let keys = Keys::new(&format!("bench-{}", uuid::Uuid::new_v4().simple()));
    let before = Cpu::now(urls).await;
    let raw = raw_sharded(urls, &keys, store, start, events, shards).await;
    let middle = Cpu::now(urls).await;
    let started = Instant::now();
    let relays = (0..shards).map(|index| {
        let store = store.clone();
        let keys = keys.clone();
        let urls = urls.to_vec();
        tokio::spawn(async move {
            let conn = RedisConnection::open_cluster(urls).await.expect("cluster");
            let checkpoints = InMemoryCheckpointStore::new();
            if let Some(start) = start {
                // A shard without a checkpoint starts at the unsharded relay's.
                checkpoints
                    .save(&eventsource_redis::relay_checkpoint("bench"), None, start)
                    .await
                    .expect("checkpoint");
            }
            let mut relay = RedisRelay::new(
                store,
                checkpoints,
                conn,
                "bench",
                RelayOptions::default()
                    .with_batch_size(1_000)
                    .with_shards(shards)
                    .with_shard(index),
            )
            .with_keys(&keys);
            relay.catch_up().await.expect("relay")
        })
    });
    for relay in futures::future::join_all(relays).await {
        relay.expect("relay task");
    }
    let framework = events as f64 / started.elapsed().as_secs_f64();
    let after = Cpu::now(urls).await;
    cleanup(urls, &keys, tenants).await;
    let (raw_cpu, framework_cpu) = (middle.since(&before, events), after.since(&middle, events));
    [
        Row {
            scenario: format!("{label}, {shards} shard(s) ({shards} relay tasks), events/s"),
            framework: format!("{framework:.0}"),
            raw: format!("{raw:.0}"),
            ratio: format!("{:.2}x", framework / raw),
        },
        Row {
            scenario: format!("  CPU per event, machine / Redis nodes, {shards} shard(s), µs"),
            framework: format!("{:.1} / {:.1}", framework_cpu.0, framework_cpu.1),
            raw: format!("{:.1} / {:.1}", raw_cpu.0, raw_cpu.1),
            ratio: format!("{:.2}x", (raw_cpu.0) / framework_cpu.0.max(f64::EPSILON)),
        },
    ]
}

/// CPU seconds used so far by the whole machine (`/proc/stat`) and by the cluster's nodes
/// (`INFO cpu`).
struct Cpu {
    machine: f64,
    redis: f64,
}

impl Cpu {
    async fn now(urls: &[String]) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // user nice system idle iowait irq softirq steal: every field but idle and iowait.
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let busy: u64 = ticks
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, t)| t)
            .sum();
        let mut redis = 0.0;
        for url in urls {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            redis += super::cpu::redis_cpu(&mut conn).await.unwrap_or_default();
        }
        Self {
            machine: busy as f64 / 100.0,
            redis,
        }
    }

    /// Microseconds per event since `earlier`: (machine, Redis nodes).
    fn since(&self, earlier: &Cpu, events: usize) -> (f64, f64) {
        let per = |seconds: f64| seconds * 1e6 / events.max(1) as f64;
        (
            per(self.machine - earlier.machine),
            per(self.redis - earlier.redis),
        )
    }
}

/// The events of `tenants` after `start`.
async fn count<S: EventStore>(store: &S, start: Option<LogPosition>, tenants: &[String]) -> usize {
    let mut total = 0;
    for tenant in tenants {
        let filter = LogFilter::tenant(TenantId::new(tenant.as_str()));
        total += store
            .count_after(start.unwrap_or(LogPosition::START), &filter)
            .await
            .expect("count");
    }
    usize::try_from(total).expect("count")
}

/// Raw redis-rs: `shards` tasks, each reading its shard's events from the log in batches of
/// 1,000 (the same shard filter the relay gives the store), XADDing them with the same ids and
/// fields in one pipeline per key, the keys at once, then saving its checkpoint; events/s over
/// all of them.
async fn raw_sharded<S: EventStore + Clone + 'static>(
    urls: &[String],
    keys: &Keys,
    store: &S,
    start: Option<LogPosition>,
    events: usize,
    shards: u32,
) -> f64 {
    let started = Instant::now();
    let tasks = (0..shards).map(|index| {
        let urls = urls.to_vec();
        let keys = keys.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let conn = RedisConnection::open_cluster(urls).await.expect("cluster");
            let filter = LogFilter::all().with_shard(Shard::new(index, shards));
            let checkpoints = InMemoryCheckpointStore::new();
            let (mut after, mut stored) = (start.unwrap_or(LogPosition::START), None);
            loop {
                let mut batch = store.read_all(after, 1_000, &filter).await.expect("read");
                let Some(last) = batch.last().map(|e| e.position) else {
                    break;
                };
                // As the relay does, for a store that ignores the shard filter.
                batch.retain(|e| filter.matches(e));
                let mut by_key: std::collections::BTreeMap<String, Vec<&RecordedEvent>> =
                    std::collections::BTreeMap::new();
                for event in &batch {
                    let key = format!("{}:raw", keys.tenant_stream(event.tenant()));
                    by_key.entry(key).or_default().push(event);
                }
                let sends = by_key.into_iter().map(|(key, events)| {
                    let mut conn = conn.clone();
                    async move {
                        let mut pipe = redis::pipe();
                        for event in events {
                            pipe.xadd(
                                &key,
                                codec::entry_id(event.position),
                                &codec::encode_pairs(event),
                            )
                            .ignore();
                        }
                        pipe.query_async::<()>(&mut conn).await.expect("raw xadd");
                    }
                });
                futures::future::join_all(sends).await;
                checkpoints
                    .save("raw", stored, last)
                    .await
                    .expect("checkpoint");
                (after, stored) = (last, Some(last));
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.expect("raw task");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

async fn cleanup(urls: &[String], keys: &Keys, tenants: &[String]) {
    let mut conn = RedisConnection::open_cluster(urls.to_vec())
        .await
        .expect("cluster");
    for tenant in tenants {
        let stream = keys.tenant_stream(&TenantId::new(tenant.as_str()));
        let raw = format!("{stream}:raw");
        // One slot per tenant: both keys in one DEL.
        let _: () = conn.del(&[stream, raw]).await.expect("del");
    }
    let _: () = conn.del(keys.tenant_registry()).await.expect("del");
}

/// A store that ignores [`LogFilter::shard`]: every shard reads the whole log and keeps its
/// own tenants' events (the relay before ADR 0035).
#[derive(Clone)]
struct WholeLog<S>(S);

impl<S: EventStore> EventStore for WholeLog<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.0.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream(stream, range).await
    }

    async fn stream_version(
        &self,
        stream: &StreamId,
    ) -> Result<eventsource_core::Version, StoreError> {
        self.0.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut whole = filter.clone();
        whole.shard = None;
        self.0.read_all(after, limit, &whole).await
    }

    async fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: uuid::Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_by_correlation(tenant, correlation_id).await
    }

    async fn log_head(&self) -> Result<Option<LogPosition>, StoreError> {
        self.0.log_head().await
    }

    async fn count_after(&self, after: LogPosition, filter: &LogFilter) -> Result<u64, StoreError> {
        self.0.count_after(after, filter).await
    }
}
