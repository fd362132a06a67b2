//! Shared helpers of the job queue tests.
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::future::Future;
use std::time::Duration;

use eventsource_redis::Keys;
use eventsource_redis::jobs::{JobEvent, JobHandler, Queue, Worker, WorkerOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A queue under a fresh key prefix, or `None` when `REDIS_URL` is unset outside CI.
pub async fn queue() -> Option<Queue> {
    queue_and_front().await.map(|(queue, _)| queue)
}

/// A queue under a fresh key prefix and the front of its keys (`<prefix>:jobs:{test}:`).
pub async fn queue_and_front() -> Option<(Queue, String)> {
    let url = crate::support::redis_url()?;
    let (_, conn) = crate::support::connect(&url).await;
    let keys = Keys::new(&crate::support::prefix());
    Some((
        Queue::with_keys(conn, "test", &keys),
        keys.job_queue("test"),
    ))
}

/// Fast options for tests.
pub fn fast() -> WorkerOptions {
    WorkerOptions::default()
        .with_max_idle_poll(Duration::from_millis(10))
        .with_lock_duration(Duration::from_millis(500))
        .with_stalled_interval(Duration::from_millis(50))
}

/// A running worker and how to stop it.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), eventsource_redis::jobs::JobError>>,
}

impl Running {
    /// Graceful stop; the worker must end without error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn start<H: JobHandler>(queue: &Queue, handler: H, options: WorkerOptions) -> Running {
    let shutdown = CancellationToken::new();
    let worker = Worker::new(queue.clone(), handler, options);
    let task = tokio::spawn(worker.run(shutdown.clone()));
    Running { shutdown, task }
}

/// Polls `check` every 10 ms until it is true; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every event of the queue's stream.
pub async fn all_events(queue: &Queue) -> Vec<JobEvent> {
    let mut out = Vec::new();
    let mut after = "0".to_owned();
    loop {
        let page = queue.events(&after, 500).await.unwrap();
        let Some((last, _)) = page.last() else {
            return out;
        };
        after.clone_from(last);
        out.extend(page.into_iter().map(|(_, e)| e));
    }
}
