//! Job queue throughput: adding and processing jobs, to set beside BullMQ's
//! (`benches/bullmq/bench.mjs`, same scenarios, same Redis).
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p eventsource-redis --bench jobs`
//! (the bench writes keys under a fresh prefix and deletes them at the end).
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use eventsource_redis::Keys;
use eventsource_redis::jobs::{Job, Queue, Worker, WorkerOptions};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

const JOBS: usize = 20_000;
const IN_FLIGHT: usize = 64;
const CONCURRENCY: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_manager().await?;
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = Queue::with_keys(conn.clone(), "bench", &Keys::new(&prefix));
    let data = serde_json::json!({ "repository": 42, "config": { "depth": 3 } });

    let started = Instant::now();
    futures::stream::iter(0..JOBS)
        .map(|_| {
            let (queue, data) = (&queue, data.clone());
            async move { queue.add("bench", data).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|added| async move {
            added.expect("add");
        })
        .await;
    let add = started.elapsed();

    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        queue.clone(),
        |_job: Job| async { Ok(serde_json::Value::Null) },
        WorkerOptions::default().with_concurrency(CONCURRENCY),
    );
    let started = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    while queue.counts().await?.completed < JOBS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let process = started.elapsed();
    shutdown.cancel();
    running.await??;

    let rate = |d: Duration| JOBS as f64 / d.as_secs_f64();
    println!("| scenario | eventsource-redis |");
    println!("|---|---|");
    println!(
        "| add {JOBS} jobs, {IN_FLIGHT} in flight | {:.0} jobs/s |",
        rate(add)
    );
    println!(
        "| process {JOBS} no-op jobs, concurrency {CONCURRENCY} | {:.0} jobs/s |",
        rate(process)
    );

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
