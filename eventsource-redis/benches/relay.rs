//! Relay and runner throughput beside raw redis-rs, and end-to-end latency.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p eventsource-redis --bench relay`
//! (Redis with `maxmemory-policy noeviction`; the bench writes keys under a fresh prefix and
//! deletes them at the end). With `REDIS_CLUSTER_URLS` (comma-separated node URLs) set too,
//! the relay and runner rows are repeated on the Redis Cluster beside raw redis-rs cluster
//! commands, and relay rows with 1, 2 and 3 shards are added (see `shard_rows`).
//!
//! Shapes: relay rows publish 100,000 events of one tenant (997 aggregate streams, a ~90-byte
//! JSON payload) in batches of 1,000 (raw: read 1,000 events from the same in-memory log,
//! pipeline their 1,000 `XADD`s with the same ids and fields, save the checkpoint; a second row
//! compares with the pipelines alone, as before ADR 0035); runner rows read that stream with one group, batches of 100 and one handler at a
//! time (raw: `XREADGROUP COUNT 100` + `XACK`).
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_core::{
    CheckpointStore as _, EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore,
    InMemoryEventStore, LogFilter, LogPosition, NewEvent, RecordedEvent, StreamId, TenantId,
};
use eventsource_redis::{
    ConsumerRunner, Keys, PerTenant, RedisClient, RedisConnection, RedisRelay, RelayOptions,
    RunnerOptions, codec,
};
use redis::AsyncCommands as _;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

#[path = "support/cpu.rs"]
mod cpu;
#[path = "relay/shards.rs"]
mod shards;

const EVENTS: usize = 100_000;
const BATCH: usize = 100;

struct Row {
    scenario: String,
    framework: String,
    raw: String,
    ratio: String,
}

async fn fill(store: &impl EventStore, tenant: &str, n: usize) {
    let payload = serde_json::json!({"order_id": "o-123456", "amount_cents": 129_900, "currency": "EUR", "lines": 3});
    for chunk in 0..n / 10 {
        let stream = StreamId::new(TenantId::new(tenant), "order", format!("o-{}", chunk % 997));
        let events = (0..10)
            .map(|_| NewEvent::new("OrderPlaced", 1, payload.clone()))
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
}

/// The relay row: the relay through `conn`, raw pipelines of the same `XADD`s through
/// redis-rs's own connection `raw_conn` (a single node's or a cluster's), to a key sharing the
/// tenant stream's hash tag (one slot on a cluster).
async fn relay_throughput<C: ConnectionLike + Clone + Send + Sync>(
    scenario: &'static str,
    conn: &RedisConnection,
    raw_conn: &C,
    keys: &Keys,
) -> Vec<Row> {
    let store = InMemoryEventStore::new();
    fill(&store, "bench", EVENTS).await;

    // Raw: what a relay must do at least, hand-written: read a batch of 1,000 from the log,
    // XADD each event with its explicit id and the same fields in one pipeline, then save the
    // checkpoint (the relay's guarantee: the checkpoint moves only after Redis answered).
    let raw_key = format!("{}:raw-relay", keys.tenant_stream(&TenantId::new("bench")));
    let mut c = raw_conn.clone();
    let checkpoints = InMemoryCheckpointStore::new();
    let started = Instant::now();
    let (mut after, mut stored) = (LogPosition::START, None);
    loop {
        let chunk = store
            .read_all(after, 1_000, &LogFilter::all())
            .await
            .expect("read");
        let Some(last) = chunk.last().map(|e| e.position) else {
            break;
        };
        let mut pipe = redis::pipe();
        for event in &chunk {
            pipe.xadd(
                &raw_key,
                codec::entry_id(event.position),
                &codec::encode_pairs(event),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut c).await.expect("raw xadd");
        checkpoints
            .save("raw", stored, last)
            .await
            .expect("checkpoint");
        (after, stored) = (last, Some(last));
    }
    let raw = EVENTS as f64 / started.elapsed().as_secs_f64();
    let _: () = c.del(&raw_key).await.expect("del");

    // The raw side before ADR 0035, kept for comparison: the XADD pipelines alone, the log read
    // beforehand and no checkpoint.
    let events = store
        .read_all(LogPosition::START, usize::MAX, &LogFilter::all())
        .await
        .expect("read");
    let started = Instant::now();
    for chunk in events.chunks(1_000) {
        let mut pipe = redis::pipe();
        for event in chunk {
            pipe.xadd(
                &raw_key,
                codec::entry_id(event.position),
                &codec::encode_pairs(event),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut c).await.expect("raw xadd");
    }
    let xadds_alone = EVENTS as f64 / started.elapsed().as_secs_f64();

    let mut relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "bench",
        RelayOptions::default().with_batch_size(1_000),
    )
    .with_router(PerTenant::new(keys.clone()));
    let started = Instant::now();
    let n = relay.catch_up().await.expect("relay");
    let framework = n as f64 / started.elapsed().as_secs_f64();
    let _: () = c.del(&raw_key).await.expect("del");
    vec![
        Row {
            scenario: scenario.to_owned(),
            framework: format!("{framework:.0}"),
            raw: format!("{raw:.0}"),
            ratio: format!("{:.2}x", framework / raw),
        },
        Row {
            scenario: format!("{scenario} vs raw XADD pipelines alone"),
            framework: format!("{framework:.0}"),
            raw: format!("{xadds_alone:.0}"),
            ratio: format!("{:.2}x", framework / xadds_alone),
        },
    ]
}

struct Count(Arc<AtomicU64>);
impl EventHandler for Count {
    type Error = std::convert::Infallible;
    async fn handle(&self, _: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The runner row, over the stream [`relay_throughput`] wrote: a [`ConsumerRunner`] on `conn`
/// and `client`, raw `XREADGROUP COUNT 100` + `XACK` on `raw_conn`; the stream is deleted after.
async fn runner_throughput<C: ConnectionLike + Clone + Send + Sync>(
    scenario: &'static str,
    client: &RedisClient,
    conn: &RedisConnection,
    raw_conn: &C,
    keys: &Keys,
) -> Row {
    let key = keys.tenant_stream(&TenantId::new("bench"));
    let mut c = raw_conn.clone();
    let total: u64 = c.xlen(&key).await.expect("xlen");

    // Raw: XREADGROUP COUNT 100 + XACK until the group is through.
    eventsource_redis::ensure_group(&mut c, &key, "raw", &eventsource_redis::StartId::Beginning)
        .await
        .expect("group");
    let options = StreamReadOptions::default().group("raw", "c").count(BATCH);
    let started = Instant::now();
    let mut seen = 0u64;
    while seen < total {
        let reply: StreamReadReply = c
            .xread_options(&[&key], &[">"], &options)
            .await
            .expect("read");
        let ids: Vec<String> = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
        seen += ids.len() as u64;
        let _: usize = c.xack(&key, "raw", &ids).await.expect("ack");
    }
    let raw = total as f64 / started.elapsed().as_secs_f64();

    let count = Arc::new(AtomicU64::new(0));
    let runner = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [key.clone()],
        "framework",
        "c",
        Count(count.clone()),
        RunnerOptions::default().with_batch_size(BATCH),
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(runner.run(stop.clone()));
    while count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let framework = total as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.expect("join").expect("runner");
    let _: () = c.del(&key).await.expect("del");
    Row {
        scenario: scenario.to_owned(),
        framework: format!("{framework:.0}"),
        raw: format!("{raw:.0}"),
        ratio: format!("{:.2}x", framework / raw),
    }
}

struct Latency(Arc<Mutex<Vec<Duration>>>);
impl EventHandler for Latency {
    type Error = std::convert::Infallible;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        let lag = (chrono::Utc::now() - event.recorded_at)
            .to_std()
            .unwrap_or_default();
        self.0.lock().expect("lock").push(lag);
        Ok(())
    }
}

async fn end_to_end(client: &redis::Client, conn: &ConnectionManager, keys: &Keys) -> Vec<Row> {
    let store = InMemoryEventStore::new();
    let tenant = TenantId::new("latency");
    let key = keys.tenant_stream(&tenant);
    let stop = CancellationToken::new();
    let relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "latency",
        RelayOptions::default(),
    )
    .with_router(PerTenant::new(keys.clone()))
    .with_keys(keys);
    let relay = tokio::spawn(relay.run(stop.clone()));
    let lags = Arc::new(Mutex::new(Vec::new()));
    let runner = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [key],
        "latency",
        "c",
        Latency(lags.clone()),
        RunnerOptions::default(),
    )
    .with_start_id(eventsource_redis::StartId::New);
    let runner = tokio::spawn(runner.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1,000 events/s for 3 s.
    let n = 3_000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let stream = StreamId::new(tenant, "order", "o-1");
    for _ in 0..n {
        tick.tick().await;
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("OrderPlaced", 1, serde_json::json!({"n": 1}))],
            )
            .await
            .expect("append");
    }
    while lags.lock().expect("lock").len() < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    relay.await.expect("join").expect("relay");
    runner.await.expect("join").expect("runner");
    let mut lags = lags.lock().expect("lock").clone();
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    vec![
        Row {
            scenario: "append -> handler p50 @1k/s".to_owned(),
            framework: format!("{:.2} ms", pct(0.50).as_secs_f64() * 1e3),
            raw: "-".into(),
            ratio: "-".into(),
        },
        Row {
            scenario: "append -> handler p99 @1k/s".to_owned(),
            framework: format!("{:.2} ms", pct(0.99).as_secs_f64() * 1e3),
            raw: "-".into(),
            ratio: "-".into(),
        },
    ]
}

/// The cluster rows, when `REDIS_CLUSTER_URLS` is set.
async fn cluster_rows() -> Vec<Row> {
    let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") else {
        println!("REDIS_CLUSTER_URLS is not set; no cluster rows");
        return Vec::new();
    };
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let client = RedisClient::open_cluster(urls.clone()).expect("REDIS_CLUSTER_URLS");
    let conn = client.connect().await.expect("connect");
    let raw_conn = redis::cluster::ClusterClient::new(urls)
        .expect("REDIS_CLUSTER_URLS")
        .get_async_connection()
        .await
        .expect("connect");
    let keys = Keys::new(&format!("bench-cluster-{}", uuid::Uuid::new_v4().simple()));
    let mut rows = relay_throughput(
        "cluster: relay, events/s (batch 1000)",
        &conn,
        &raw_conn,
        &keys,
    )
    .await;
    rows.push(
        runner_throughput(
            "cluster: runner, entries/s (batch 100)",
            &client,
            &conn,
            &raw_conn,
            &keys,
        )
        .await,
    );
    rows
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("REDIS_URL is not set; skipping the Redis benchmark");
        return;
    };
    let client = redis::Client::open(url).expect("REDIS_URL");
    let conn = client.get_connection_manager().await.expect("connect");
    let keys = Keys::new(&format!("bench-{}", uuid::Uuid::new_v4().simple()));

    let (framework_client, framework_conn) = (
        RedisClient::from(client.clone()),
        RedisConnection::from(conn.clone()),
    );
    let mut rows = relay_throughput(
        "relay, events/s (batch 1000)",
        &framework_conn,
        &conn,
        &keys,
    )
    .await;
    rows.push(
        runner_throughput(
            "runner, entries/s (batch 100)",
            &framework_client,
            &framework_conn,
            &conn,
            &keys,
        )
        .await,
    );
    rows.extend(end_to_end(&client, &conn, &keys).await);
    rows.extend(cluster_rows().await);
    if let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") {
        let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
        rows.extend(shards::shard_rows(&urls).await);
    }

    println!("| scenario | eventsource-redis | raw redis-rs | ratio |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.scenario, row.framework, row.raw, row.ratio
        );
    }

    let mut c = conn.clone();
    for tenant in ["bench", "latency"] {
        let key = keys.tenant_stream(&TenantId::new(tenant));
        let _: () = c.del(&key).await.expect("del");
    }
}
