//! The Redis bus beside raw redis-rs doing the same work, same Redis, same run: publish →
//! handler latency at a paced 1,000 and 10,000 events/s on the live (Pub/Sub) and the durable
//! (Streams, consumer group) paths, and Streams-path throughput with `publish_batch`, by a
//! default bus and by one [`without_live_path`](RedisBus::without_live_path).
//!
//! Events carry a ~330-byte JSON payload (an analysis result). The raw side publishes that
//! payload as is: `PUBLISH` / `SUBSCRIBE` for the live path, `XADD` (`topic`, `data`) and
//! `XREADGROUP` + `XACK` for the durable one, pipelined like the bus.
//!
//! The throughput rows also give the CPU time per event of this process (publishing and
//! handling, both in this process) and of Redis, the least of the rounds: on a shared machine
//! outside load moves the rates far more than it moves these.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p eventsource-redis --bench bus`
//! (keys go under a fresh prefix and are deleted at the end); `BUS_ONLY=throughput` or
//! `BUS_ONLY=latency` runs one half.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_core::bus::{
    BoxError, BusEvent, EventBus, Pattern, SubscribeOptions, SubscriptionId,
};
use eventsource_redis::{Keys, RedisBus, RunnerOptions};
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

#[path = "support/cpu.rs"]
mod cpu;
use cpu::redis_cpu;

/// Paced runs last this long.
const PACED: Duration = Duration::from_secs(3);
/// Throughput run: this many events, published in batches of `BATCH`.
const EVENTS: u64 = 200_000;
const BATCH: usize = 1_000;
/// Batches published at once (each a pipeline on the shared multiplexed connection).
const IN_FLIGHT: usize = 4;
/// Throughput runs per side (the best counts).
const ROUNDS: usize = 3;
const TOPIC: &str = "analysis.completed";

fn epoch_micros() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6
}

/// A realistic event payload (~330 bytes of JSON), stamped with the time it is published.
fn payload(n: u64) -> serde_json::Value {
    serde_json::json!({
        "analysis_id": format!("a1b2c3d4-0000-4000-8000-{n:012}"),
        "project_id": "p-7f3e9a", "user_id": "u-42", "tenant": "acme",
        "status": "completed", "duration_ms": 1834,
        "summary": { "files": 412, "issues": 17, "critical": 2, "high": 5, "score": 87.5 },
        "languages": ["rust", "typescript", "sql"],
        "commit": "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432",
        "t": epoch_micros(),
    })
}

fn lag_ms(payload: &serde_json::Value) -> f64 {
    (epoch_micros() - payload["t"].as_f64().unwrap_or(0.0)) / 1e3
}

/// What the handlers saw: latencies (ms) and a count.
#[derive(Clone, Default)]
struct Sink {
    lags: Arc<Mutex<Vec<f64>>>,
    seen: Arc<AtomicU64>,
}

impl Sink {
    fn record(&self, payload: &serde_json::Value) {
        self.lags.lock().expect("lock").push(lag_ms(payload));
        self.seen.fetch_add(1, Ordering::Relaxed);
    }

    async fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_mins(2);
        while self.seen.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "events lost: {n} expected");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn percentiles(&self) -> (f64, f64) {
        let mut lags = std::mem::take(&mut *self.lags.lock().expect("lock"));
        lags.sort_by(f64::total_cmp);
        let at = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
        (at(0.50), at(0.99))
    }
}

/// Calls `publish(n)` for `rate * PACED` events at `rate` per second (every millisecond, the
/// events then due, each on its own task so a slow reply does not hold the pace back).
async fn paced<F, Fut>(rate: u64, publish: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let total = rate * PACED.as_secs();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        for n in sent..due {
            tokio::spawn(publish(n));
        }
        sent = due;
    }
    total
}

fn bus(conn: &ConnectionManager, client: &redis::Client, keys: &Keys) -> RedisBus {
    RedisBus::new(conn.clone(), client.clone(), "bench").with_keys(keys.clone())
}

async fn subscribe(bus: &RedisBus, sink: &Sink, options: SubscribeOptions) -> SubscriptionId {
    let sink = sink.clone();
    bus.subscribe(
        Pattern::parse("analysis.*").expect("pattern"),
        Arc::new(move |event: BusEvent| {
            sink.record(&event.payload);
            async { Ok::<(), BoxError>(()) }
        }),
        options,
    )
    .await
    .expect("subscribe")
}

async fn bus_latency(bus: RedisBus, rate: u64, options: SubscribeOptions) -> (f64, f64) {
    let sink = Sink::default();
    let id = subscribe(&bus, &sink, options).await;
    let bus = Arc::new(bus);
    let total = paced(rate, |n| {
        let bus = Arc::clone(&bus);
        async move {
            bus.publish(BusEvent::new(TOPIC, payload(n)))
                .await
                .expect("publish");
        }
    })
    .await;
    sink.wait_for(total).await;
    bus.unsubscribe(id).await.expect("unsubscribe");
    sink.percentiles()
}

async fn raw_pubsub_latency(
    conn: &ConnectionManager,
    client: &redis::Client,
    rate: u64,
) -> (f64, f64) {
    let sink = Sink::default();
    let channel = format!("raw-bench-{}", uuid::Uuid::new_v4().simple());
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let reader = tokio::spawn({
        let sink = sink.clone();
        async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: serde_json::Value =
                    serde_json::from_slice(message.get_payload_bytes()).expect("json");
                sink.record(&payload);
            }
        }
    });
    let total = paced(rate, |n| {
        let (mut conn, channel) = (conn.clone(), channel.clone());
        async move {
            let _: u64 = conn
                .publish(&channel, payload(n).to_string())
                .await
                .expect("publish");
        }
    })
    .await;
    sink.wait_for(total).await;
    reader.abort();
    sink.percentiles()
}

/// A raw consumer: `XREADGROUP COUNT batch BLOCK 500` on its own connection, then `XACK`.
fn raw_consumer(
    client: &redis::Client,
    conn: &ConnectionManager,
    key: &str,
    batch: usize,
    sink: &Sink,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (client, mut conn, key, sink, stop) = (
        client.clone(),
        conn.clone(),
        key.to_owned(),
        sink.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        // Its own connection, with a response timeout above the block.
        let config =
            ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        let mut blocking = client
            .get_connection_manager_with_config(config)
            .await
            .expect("conn");
        let options = StreamReadOptions::default()
            .group("raw", "c")
            .count(batch)
            .block(500);
        while !stop.is_cancelled() {
            let reply: Option<StreamReadReply> = blocking
                .xread_options(&[&key], &[">"], &options)
                .await
                .expect("xreadgroup");
            let Some(reply) = reply else { continue };
            for stream in reply.keys {
                let mut ids = Vec::with_capacity(stream.ids.len());
                for entry in stream.ids {
                    let data: String = entry.get("data").expect("data field");
                    let payload: serde_json::Value = serde_json::from_str(&data).expect("json");
                    sink.record(&payload);
                    ids.push(entry.id);
                }
                let _: u64 = conn.xack(&key, "raw", &ids).await.expect("xack");
            }
        }
    })
}

async fn raw_group(conn: &ConnectionManager, key: &str) {
    let _: () = conn
        .clone()
        .xgroup_create_mkstream(key, "raw", "$")
        .await
        .expect("group");
}

async fn raw_streams_latency(
    conn: &ConnectionManager,
    client: &redis::Client,
    keys: &Keys,
    rate: u64,
) -> (f64, f64) {
    let key = format!("{}:raw-latency-{rate}", keys.prefix());
    raw_group(conn, &key).await;
    let (sink, stop) = (Sink::default(), CancellationToken::new());
    let consumer = raw_consumer(client, conn, &key, 100, &sink, &stop);
    let total = paced(rate, |n| {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let _: String = conn
                .xadd(
                    &key,
                    "*",
                    &[
                        ("topic", TOPIC.to_owned()),
                        ("data", payload(n).to_string()),
                    ],
                )
                .await
                .expect("xadd");
        }
    })
    .await;
    sink.wait_for(total).await;
    stop.cancel();
    consumer.await.expect("consumer");
    let _: () = conn.clone().del(&key).await.expect("del");
    sink.percentiles()
}

/// Streams throughput: `EVENTS` events in batches of `BATCH`, `IN_FLIGHT` batches at once,
/// while one consumer handles them. Returns (publish events/s, published-to-handled events/s).
async fn bus_throughput(bus: RedisBus) -> (f64, f64) {
    let bus = bus.with_runner_options(
        RunnerOptions::default()
            .with_batch_size(BATCH)
            .with_block_timeout(Duration::from_millis(500)),
    );
    let sink = Sink::default();
    let id = subscribe(
        &bus,
        &sink,
        SubscribeOptions::default().with_group("throughput"),
    )
    .await;
    let started = Instant::now();
    futures::stream::iter(0..EVENTS / BATCH as u64)
        .map(|batch| {
            let events = (0..BATCH as u64)
                .map(|i| BusEvent::new(TOPIC, payload(batch * BATCH as u64 + i)))
                .collect();
            bus.publish_batch(events)
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|published| async move { published.expect("publish_batch") })
        .await;
    let published = EVENTS as f64 / started.elapsed().as_secs_f64();
    sink.wait_for(EVENTS).await;
    let handled = EVENTS as f64 / started.elapsed().as_secs_f64();
    bus.unsubscribe(id).await.expect("unsubscribe");
    (published, handled)
}

async fn raw_throughput(
    conn: &ConnectionManager,
    client: &redis::Client,
    keys: &Keys,
) -> (f64, f64) {
    let key = format!("{}:raw-throughput", keys.prefix());
    raw_group(conn, &key).await;
    let (sink, stop) = (Sink::default(), CancellationToken::new());
    let consumer = raw_consumer(client, conn, &key, BATCH, &sink, &stop);
    let c = conn.clone();
    let started = Instant::now();
    futures::stream::iter(0..EVENTS / BATCH as u64)
        .map(|batch| {
            let mut pipe = redis::pipe();
            for i in 0..BATCH as u64 {
                let data = payload(batch * BATCH as u64 + i).to_string();
                pipe.xadd(&key, "*", &[("topic", TOPIC.to_owned()), ("data", data)])
                    .ignore();
            }
            let mut c = c.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|added| async move { added.expect("xadd") })
        .await;
    let published = EVENTS as f64 / started.elapsed().as_secs_f64();
    sink.wait_for(EVENTS).await;
    let handled = EVENTS as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    consumer.await.expect("consumer");
    let _: () = conn.clone().del(&key).await.expect("del");
    (published, handled)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat` (ticks of
/// 1/100 s, Linux's `USER_HZ`); 0 where that file does not exist.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn row(scenario: &str, framework: f64, raw: f64, unit: &str) {
    let (f, r, better) = if unit == "ms" || unit == "µs/event" {
        (
            format!("{framework:.2} {unit}"),
            format!("{raw:.2} {unit}"),
            "lower is better",
        )
    } else {
        (
            format!("{framework:.0} {unit}"),
            format!("{raw:.0} {unit}"),
            "higher is better",
        )
    };
    println!(
        "| {scenario} | {f} | {r} | {:.2}x ({better}) | {} |",
        framework / raw,
        load()
    );
}

/// The throughput rows: best of `ROUNDS` per side, CPU per event the least of them.
async fn throughput(conn: &ConnectionManager, client: &redis::Client, keys: &Keys) {
    // Best of `ROUNDS` per side, the sides interleaved in a rotating order: on a shared
    // machine outside load only ever slows a run down, and the first run of a process
    // pays for warming up.
    let mut best = [(0.0f64, 0.0f64); 3];
    // CPU per event of the whole run (publishing and handling), the least of the rounds:
    // less sensitive to outside load than the rates.
    let mut cpu = [(f64::MAX, f64::MAX); 3];
    for round in 0..ROUNDS {
        for turn in 0..3 {
            let side = (round + turn) % 3;
            let fresh = || {
                RedisBus::new(conn.clone(), client.clone(), &format!("tp-{round}-{side}"))
                    .with_keys(keys.clone())
            };
            let (client_before, redis_before) = (
                process_cpu(),
                redis_cpu(&mut conn.clone()).await.expect("info"),
            );
            let (published, handled) = match side {
                0 => bus_throughput(fresh()).await,
                1 => bus_throughput(fresh().without_live_path()).await,
                _ => raw_throughput(conn, client, keys).await,
            };
            let per_event = |seconds: f64| seconds * 1e6 / EVENTS as f64;
            let client_cpu = per_event(process_cpu() - client_before);
            let redis_cpu =
                per_event(redis_cpu(&mut conn.clone()).await.expect("info") - redis_before);
            best[side] = (best[side].0.max(published), best[side].1.max(handled));
            cpu[side] = (cpu[side].0.min(client_cpu), cpu[side].1.min(redis_cpu));
        }
    }
    let [(f_pub, f_all), (s_pub, s_all), (r_pub, r_all)] = best;
    let shape =
        format!("{EVENTS} events, batches of {BATCH}, {IN_FLIGHT} in flight, best of {ROUNDS}");
    row(
        &format!("Streams publish, {shape}"),
        f_pub,
        r_pub,
        "events/s",
    );
    row(
        &format!("Streams publish → handled, {shape}"),
        f_all,
        r_all,
        "events/s",
    );
    row(
        &format!("Streams publish without the live path, {shape}"),
        s_pub,
        r_pub,
        "events/s",
    );
    row(
        &format!("Streams publish → handled without the live path, {shape}"),
        s_all,
        r_all,
        "events/s",
    );
    let [
        (f_client, f_redis),
        (s_client, s_redis),
        (r_client, r_redis),
    ] = cpu;
    row(
        "client CPU per event (publish and handle)",
        f_client,
        r_client,
        "µs/event",
    );
    row("Redis CPU per event", f_redis, r_redis, "µs/event");
    row(
        "client CPU per event without the live path",
        s_client,
        r_client,
        "µs/event",
    );
    row(
        "Redis CPU per event without the live path",
        s_redis,
        r_redis,
        "µs/event",
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("REDIS_URL is not set; skipping the bus benchmark");
        return;
    };
    let client = redis::Client::open(url).expect("REDIS_URL");
    let conn = client.get_connection_manager().await.expect("connect");
    let keys = Keys::new(&format!("bench-{}", uuid::Uuid::new_v4().simple()));

    println!("| scenario | RedisBus | raw redis-rs | ratio | load avg |");
    println!("|---|---:|---:|---:|---:|");
    // `BUS_ONLY=latency` or `BUS_ONLY=throughput` runs one half.
    let only = std::env::var("BUS_ONLY").unwrap_or_default();
    let rates: &[u64] = if only == "throughput" {
        &[]
    } else {
        &[1_000, 10_000]
    };
    for &rate in rates {
        let live = SubscribeOptions::default().live();
        let (f50, f99) = bus_latency(bus(&conn, &client, &keys), rate, live).await;
        let (r50, r99) = raw_pubsub_latency(&conn, &client, rate).await;
        row(&format!("live (Pub/Sub) p50 at {rate}/s"), f50, r50, "ms");
        row(&format!("live (Pub/Sub) p99 at {rate}/s"), f99, r99, "ms");
    }
    for &rate in rates {
        let group = SubscribeOptions::default().with_group(format!("latency-{rate}"));
        let (f50, f99) = bus_latency(bus(&conn, &client, &keys), rate, group).await;
        let (r50, r99) = raw_streams_latency(&conn, &client, &keys, rate).await;
        row(
            &format!("durable (Streams) p50 at {rate}/s"),
            f50,
            r50,
            "ms",
        );
        row(
            &format!("durable (Streams) p99 at {rate}/s"),
            f99,
            r99,
            "ms",
        );
    }
    if only != "latency" {
        throughput(&conn, &client, &keys).await;
    }

    let mut c = conn.clone();
    let bench_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut c)
        .await
        .expect("keys");
    for chunk in bench_keys.chunks(1_000) {
        let _: () = c.del(chunk).await.expect("del");
    }
}
