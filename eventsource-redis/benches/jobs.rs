//! Job queue beside BullMQ, same Redis, same run (issue 18's matrix): jobs/s adding with 1 and
//! 16 concurrent producers, jobs/s processing pre-added jobs at worker concurrency 1 and 16,
//! and add → start latency at a paced 1,000 jobs/s. Jobs carry the seed's options (attempts 3,
//! exponential backoff 1 s, keep the last 100 completed); handlers do nothing.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379/ BULLMQ_DIR=/tmp/bullmq-bench cargo bench -p
//! eventsource-redis --bench jobs`, where `BULLMQ_DIR` holds a `node_modules` with `bullmq`
//! (`npm install bullmq@5` there): the bench copies `benches/bullmq/bench.mjs` into it and runs
//! it with Node after its own scenarios. Without `BULLMQ_DIR` only this side runs. Keys go
//! under a fresh prefix and are deleted at the end.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_redis::Keys;
use eventsource_redis::jobs::{Backoff, Job, JobOptions, Queue, Worker, WorkerOptions};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// Jobs per throughput scenario.
const JOBS: usize = 10_000;
/// Paced latency run: this many jobs per second for this long.
const RATE: u64 = 1_000;
const PACED: Duration = Duration::from_secs(5);
/// Worker concurrency of the latency run.
const LATENCY_CONCURRENCY: usize = 16;

fn seed_options() -> JobOptions {
    JobOptions::default()
        .with_attempts(3)
        .with_backoff(Backoff::exponential(Duration::from_secs(1)))
        .with_keep_completed(100)
}

fn data() -> serde_json::Value {
    serde_json::json!({ "repository": 42, "config": { "depth": 3 } })
}

fn epoch_micros() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6
}

fn queue(conn: &ConnectionManager, prefix: &str, name: &str) -> Queue {
    Queue::with_keys(conn.clone(), name, &Keys::new(prefix)).with_default_options(seed_options())
}

/// Adds `JOBS` jobs from `producers` tasks, each awaiting its add before the next.
async fn add(queue: &Queue, producers: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let (queue, next) = (queue.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < JOBS {
                    queue.add("bench", data()).await.expect("add");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer");
    }
    JOBS as f64 / started.elapsed().as_secs_f64()
}

/// Processes the `JOBS` jobs already in `queue` with a no-op handler at `concurrency`.
async fn process(queue: &Queue, concurrency: usize) -> f64 {
    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        queue.clone(),
        |_job: Job| async { Ok(serde_json::Value::Null) },
        WorkerOptions::default().with_concurrency(concurrency),
    );
    let started = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // Completed jobs are trimmed to 100, so "done" is: nothing waiting, nothing running.
    loop {
        let counts = queue.counts().await.expect("counts");
        if counts.waiting == 0 && counts.active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = JOBS as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await.expect("join").expect("worker");
    rate
}

/// Adds `RATE` jobs/s for `PACED` (each stamped with its add time) to a running worker; returns
/// the add → handler start latencies (ms), sorted.
async fn latency(queue: &Queue) -> Vec<f64> {
    let lags = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        queue.clone(),
        {
            let lags = Arc::clone(&lags);
            move |job: Job| {
                let lag = (epoch_micros() - job.data()["t"].as_f64().unwrap_or(0.0)) / 1e3;
                lags.lock().expect("lock").push(lag);
                async { Ok(serde_json::Value::Null) }
            }
        },
        WorkerOptions::default().with_concurrency(LATENCY_CONCURRENCY),
    );
    let running = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = RATE * PACED.as_secs();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * RATE as f64) as u64).min(total);
        for _ in sent..due {
            let queue = queue.clone();
            tokio::spawn(async move {
                let data = serde_json::json!({ "repository": 42, "t": epoch_micros() });
                queue.add("bench", data).await.expect("add");
            });
        }
        sent = due;
    }
    while lags.lock().expect("lock").len() < total as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.expect("join").expect("worker");
    let mut lags = std::mem::take(&mut *lags.lock().expect("lock"));
    lags.sort_by(f64::total_cmp);
    lags
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// BullMQ's figures from `bench.mjs`, run by Node in `dir`, keyed like ours.
fn bullmq(dir: &str, url: &str) -> HashMap<String, f64> {
    let script = std::path::Path::new(dir).join("eventsource-jobs-bench.mjs");
    std::fs::write(&script, include_str!("bullmq/bench.mjs")).expect("write bench.mjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .env("REDIS_URL", url)
        .env("JOBS", JOBS.to_string())
        .env("RATE", RATE.to_string())
        .env("PACED_MS", PACED.as_millis().to_string())
        .env("LATENCY_CONCURRENCY", LATENCY_CONCURRENCY.to_string())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "bench.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench.mjs prints one JSON object")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str())?;
    let conn = client.get_connection_manager().await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());

    let mut ours: Vec<(&str, f64, String)> = Vec::new();
    let q1 = queue(&conn, &prefix, "p1");
    let q16 = queue(&conn, &prefix, "p16");
    ours.push(("add1", add(&q1, 1).await, load()));
    ours.push(("add16", add(&q16, 16).await, load()));
    ours.push(("process1", process(&q1, 1).await, load()));
    ours.push(("process16", process(&q16, 16).await, load()));
    let lags = latency(&queue(&conn, &prefix, "lat")).await;
    let load_latency = load();
    ours.push(("p50", percentile(&lags, 0.50), load_latency.clone()));
    ours.push(("p99", percentile(&lags, 0.99), load_latency));
    delete_keys(&conn, &prefix).await?;

    let theirs = match std::env::var("BULLMQ_DIR") {
        Ok(dir) => bullmq(&dir, &url),
        Err(_) => HashMap::new(),
    };
    println!("| scenario | eventsource-redis | BullMQ | ratio | load avg (ours / BullMQ) |");
    println!("|---|---|---|---|---|");
    for (key, value, load) in ours {
        let (label, unit, lower_is_better) = match key {
            "add1" => ("add, 1 producer".to_owned(), "jobs/s", false),
            "add16" => ("add, 16 producers".to_owned(), "jobs/s", false),
            "process1" => ("process, concurrency 1".to_owned(), "jobs/s", false),
            "process16" => ("process, concurrency 16".to_owned(), "jobs/s", false),
            "p50" => (format!("add → start p50 at {RATE}/s"), "ms", true),
            _ => (format!("add → start p99 at {RATE}/s"), "ms", true),
        };
        let fmt = |v: f64| {
            if unit == "ms" {
                format!("{v:.2} {unit}")
            } else {
                format!("{v:.0} {unit}")
            }
        };
        let (other, ratio) = match theirs.get(key) {
            Some(&b) => {
                let better = if lower_is_better {
                    "lower is better"
                } else {
                    "higher is better"
                };
                (fmt(b), format!("{:.2}x ({better})", value / b))
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        let load = match theirs.get(&format!("load_{key}")) {
            Some(b) => format!("{load} / {b:.2}"),
            None => load,
        };
        println!("| {label} | {} | {other} | {ratio} | {load} |", fmt(value));
    }
    Ok(())
}

async fn delete_keys(conn: &ConnectionManager, prefix: &str) -> redis::RedisResult<()> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn.clone())
        .await?;
    for chunk in keys.chunks(1_000) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn.clone())
            .await?;
    }
    Ok(())
}
