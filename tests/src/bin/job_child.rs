//! A job worker as a process of its own, for `tests/job_crash.rs` to kill with SIGKILL.
//!
//! Runs the queue `crash` under `JOB_PREFIX` on `REDIS_URL` with `JOB_CONCURRENCY` jobs at once
//! and a one-second lock, until killed. Each job sleeps 20 to 180 ms (by its id) and returns its
//! data; a job whose data has `"fail": true` fails every attempt. Prints `ready` once connected.

use std::time::Duration;

use eventsource_redis::Keys;
use eventsource_redis::jobs::{Job, Queue, Worker, WorkerOptions};
use eventsource_tests::child::{say, var};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conn = redis::Client::open(var("REDIS_URL")?)?
        .get_connection_manager()
        .await?;
    let queue = Queue::with_keys(conn, "crash", &Keys::new(&var("JOB_PREFIX")?))
        .with_events_max_len(1_000_000);
    let concurrency: usize = var("JOB_CONCURRENCY")?.parse()?;
    let worker = Worker::new(
        queue,
        |job: Job| async move {
            let n: u64 = job.id().parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(20 + n * 7_919 % 160)).await;
            if job.data()["fail"] == serde_json::json!(true) {
                return Err("deliberate failure".into());
            }
            Ok(job.data().clone())
        },
        WorkerOptions::default()
            .with_concurrency(concurrency)
            .with_lock_duration(Duration::from_secs(1))
            .with_stalled_interval(Duration::from_millis(200))
            .with_max_idle_poll(Duration::from_millis(20)),
    );
    say("ready");
    worker.run(CancellationToken::new()).await?;
    Ok(())
}
