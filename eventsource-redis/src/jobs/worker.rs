//! Workers: take jobs, run them under a renewed lock, record the outcome.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_core::RetryPolicy;
use futures::FutureExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::JobError;
use super::options::{Backoff, WorkerOptions, millis};
use super::queue::{Queue, number};
use super::scripts;
use crate::error::{error_chain, panic_message};

/// The error a handler fails an attempt with; its text (with its sources) is kept as the job's
/// failed reason.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A job handed to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    id: String,
    name: String,
    data: serde_json::Value,
    attempts_made: u32,
    token: String,
    backoff: Backoff,
    queue: Queue,
}

impl Job {
    /// The id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name given to [`Queue::add`].
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data given to [`Queue::add`].
    #[must_use]
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }

    /// Attempts finished before this one (0 on the first attempt).
    #[must_use]
    pub fn attempts_made(&self) -> u32 {
        self.attempts_made
    }

    /// Records progress (any JSON, a percentage for example) and publishes a
    /// [`JobEvent::Progress`](super::JobEvent::Progress). Fails with [`JobError::LockLost`]
    /// once this attempt no longer holds the job.
    pub async fn progress(&self, progress: serde_json::Value) -> Result<(), JobError> {
        let q = &self.queue;
        let held: i64 = scripts::PROGRESS
            .key(&q.keys.active)
            .key(&q.keys.events)
            .arg(&q.keys.front)
            .arg(&self.id)
            .arg(&self.token)
            .arg(progress.to_string())
            .arg(q.events_max_len)
            .invoke_async(&mut q.conn.clone())
            .await?;
        if held == 1 {
            Ok(())
        } else {
            Err(JobError::LockLost {
                id: self.id.clone(),
            })
        }
    }
}

/// Runs a job; `Ok` completes it with the returned value, `Err` (or a panic) fails the attempt.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one attempt of `job`.
    fn handle(&self, job: Job) -> impl Future<Output = Result<serde_json::Value, BoxError>> + Send;
}

impl<F, Fut> JobHandler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, BoxError>> + Send,
{
    fn handle(&self, job: Job) -> impl Future<Output = Result<serde_json::Value, BoxError>> + Send {
        self(job)
    }
}

/// Takes jobs from a [`Queue`] and runs up to `concurrency` of them at once.
///
/// Each job runs under a lock (a deadline in the queue's `active` set) that the worker renews
/// every half lock duration. If the worker dies, the lock expires; any worker's periodic
/// stalled check then puts the job back in `wait`. A stall spends no attempt (the handler may
/// never have started: the reply handing the job over can be lost); a job stalled more than
/// [`max_stalled`](WorkerOptions::with_max_stalled) times fails. A job completes at most once: a result from an attempt that lost its
/// lock is refused. Delivery to handlers is therefore at least once, like BullMQ's.
///
/// ```no_run
/// # use eventsource_redis::jobs::{Queue, Worker, WorkerOptions};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let queue = Queue::new(conn, "analysis");
/// let worker = Worker::new(
///     queue,
///     |job: eventsource_redis::jobs::Job| async move {
///         job.progress(serde_json::json!(50)).await?;
///         Ok(serde_json::json!({ "analysed": job.data()["repository"] }))
///     },
///     WorkerOptions::default().with_concurrency(5),
/// );
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(worker.run(shutdown.clone()));
/// // ... on SIGTERM: running jobs finish, no new one starts.
/// shutdown.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
pub struct Worker<H> {
    queue: Queue,
    handler: Arc<H>,
    options: WorkerOptions,
}

impl<H> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What one fetch gave.
enum Fetched {
    Job(Box<Job>),
    /// Nothing to run; the next delayed job is due in this long, if any.
    Idle(Option<Duration>),
}

impl<H: JobHandler> Worker<H> {
    /// A worker of `queue` running `handler`.
    pub fn new(queue: Queue, handler: H, options: WorkerOptions) -> Self {
        Self {
            queue,
            handler: Arc::new(handler),
            options,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops taking jobs and waits for the running
    /// ones to finish (graceful shutdown). Transient Redis failures are retried with backoff;
    /// a permanent one stops the worker (after its running jobs finish) with that error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), JobError> {
        let permits = Arc::new(Semaphore::new(self.options.concurrency));
        let mut running = JoinSet::new();
        let mut next_stalled_check = Instant::now();
        let mut idle = Duration::from_millis(1);
        let errors = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(2));
        let mut failures = 0;
        let outcome = loop {
            while running.try_join_next().is_some() {}
            // The stalled check runs on time even while every slot is busy.
            if Instant::now() >= next_stalled_check {
                next_stalled_check = Instant::now() + self.options.stalled_interval;
                match self.queue.move_stalled(self.options.max_stalled).await {
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(queue = %self.queue.name, error = %error_chain(&e), "stalled check failed");
                    }
                    Err(e) => break Err(e),
                }
            }
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break Ok(()),
                },
                () = tokio::time::sleep_until(next_stalled_check.into()) => continue,
                () = shutdown.cancelled() => break Ok(()),
            };
            if shutdown.is_cancelled() {
                break Ok(());
            }
            match fetch(&self.queue, self.options.lock_duration).await {
                Ok(Fetched::Job(job)) => {
                    failures = 0;
                    idle = Duration::from_millis(1);
                    let handler = Arc::clone(&self.handler);
                    let lock = self.options.lock_duration;
                    let (queue, shutdown) = (self.queue.clone(), shutdown.clone());
                    running.spawn(async move {
                        // Under load each slot fetches its next job itself, so fetches run in
                        // parallel; once the queue is empty the slot goes back to the main loop,
                        // the only one that polls an idle queue.
                        let mut job = *job;
                        loop {
                            if let Some(next) = run_job(&*handler, job, lock, &shutdown).await {
                                job = next;
                                continue;
                            }
                            if shutdown.is_cancelled() {
                                break;
                            }
                            match fetch(&queue, lock).await {
                                Ok(Fetched::Job(next)) => job = *next,
                                _ => break,
                            }
                        }
                        drop(permit);
                    });
                }
                Ok(Fetched::Idle(due)) => {
                    failures = 0;
                    drop(permit);
                    let until_check = next_stalled_check.saturating_duration_since(Instant::now());
                    let wait = due.map_or(idle, |due| due.min(idle)).min(until_check);
                    idle = (idle * 2).min(self.options.max_idle_poll);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
                Err(e) if e.is_retryable() => {
                    drop(permit);
                    failures += 1;
                    tracing::warn!(queue = %self.queue.name, error = %error_chain(&e), "job queue unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(errors.delay(failures)) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        while running.join_next().await.is_some() {}
        outcome
    }
}

/// Takes the next job, if one is ready, under a lock of `lock`.
async fn fetch(q: &Queue, lock: Duration) -> Result<Fetched, JobError> {
    let token = uuid::Uuid::new_v4().to_string();
    let reply: Vec<String> = scripts::MOVE_TO_ACTIVE
        .key(&q.keys.wait)
        .key(&q.keys.delayed)
        .key(&q.keys.active)
        .key(&q.keys.meta)
        .arg(&q.keys.front)
        .arg(&token)
        .arg(millis(lock))
        .invoke_async(&mut q.conn.clone())
        .await?;
    Ok(parse_fetched(q, token, &reply))
}

/// A reply of the scripts' `take_next`.
fn parse_fetched(q: &Queue, token: String, reply: &[String]) -> Fetched {
    match reply.first().map(String::as_str) {
        Some("job") if reply.len() >= 2 => {
            let id = reply[1].clone();
            let fields: HashMap<String, String> = reply[2..]
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            let data = match fields.get("data").map(|d| serde_json::from_str(d)) {
                Some(Ok(data)) => data,
                _ => serde_json::Value::Null,
            };
            let backoff = Backoff::decode(
                fields.get("backoff").map(String::as_str),
                fields.get("backoffDelay").map(String::as_str),
                fields.get("backoffJitter").map(String::as_str),
            );
            Fetched::Job(Box::new(Job {
                name: fields.get("name").cloned().unwrap_or_default(),
                attempts_made: number(&fields, "attemptsMade"),
                id,
                data,
                token,
                backoff,
                queue: q.clone(),
            }))
        }
        Some("empty") => Fetched::Idle(
            reply
                .get(1)
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
        ),
        _ => Fetched::Idle(None),
    }
}

impl Queue {
    /// Takes back jobs whose lock expired; workers call this every stalled interval with their
    /// [`max_stalled`](WorkerOptions::with_max_stalled). A stall spends no attempt: the job goes
    /// back to `wait`, or to `failed` ("job stalled more than N times") once stalled more than
    /// `max_stalled` times. Returns how many were taken back.
    pub async fn move_stalled(&self, max_stalled: u32) -> Result<u64, JobError> {
        let moved: u64 = scripts::MOVE_STALLED
            .key(&self.keys.active)
            .key(&self.keys.wait)
            .key(&self.keys.failed)
            .key(&self.keys.events)
            .arg(&self.keys.front)
            .arg(self.events_max_len)
            .arg(format!(
                "job stalled more than {max_stalled} times: its lock expired before it finished"
            ))
            .arg(max_stalled)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if moved > 0 {
            tracing::info!(queue = %self.name, moved, "took back stalled jobs");
        }
        Ok(moved)
    }
}

/// Runs one attempt with its lock renewed, then records the outcome.
///
/// Unless `shutdown` is cancelled by then, a completion takes the next ready job in the same
/// script and returns it.
async fn run_job<H: JobHandler>(
    handler: &H,
    job: Job,
    lock: Duration,
    shutdown: &CancellationToken,
) -> Option<Job> {
    // Renewal stops by itself once the lock is lost; the handler runs on (its result will be
    // refused) since a future cannot be stopped safely at an arbitrary point.
    let renewer = AbortOnDrop(tokio::spawn({
        let job = job.clone();
        async move {
            loop {
                tokio::time::sleep(lock / 2).await;
                match extend_lock(&job, lock).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %error_chain(&e), "renewing a job lock failed");
                    }
                }
            }
        }
    }));
    let outcome = std::panic::AssertUnwindSafe(handler.handle(job.clone()))
        .catch_unwind()
        .await;
    drop(renewer);
    let recorded = match outcome {
        Ok(Ok(result)) => {
            let next = (!shutdown.is_cancelled()).then(|| (uuid::Uuid::new_v4().to_string(), lock));
            match complete(&job, &result, next).await {
                Ok((held, next)) => {
                    if !held {
                        tracing::warn!(job = %job.id, "lock expired before the job ended");
                    }
                    return next;
                }
                Err(e) => Err(e),
            }
        }
        Ok(Err(e)) => fail(&job, &error_chain(e.as_ref())).await,
        Err(panic) => fail(&job, &panic_message(panic.as_ref())).await,
    };
    // A lost lock or an unrecorded outcome: the job runs again after its lock expires.
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(job = %job.id, "lock expired before the job ended"),
        Err(e) => tracing::warn!(job = %job.id, error = %error_chain(&e), "outcome not recorded"),
    }
    None
}

/// Stops the lock renewal when the attempt ends, also when the worker's task is aborted.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn extend_lock(job: &Job, lock: Duration) -> Result<bool, JobError> {
    let q = &job.queue;
    let held: i64 = scripts::EXTEND_LOCK
        .key(&q.keys.active)
        .arg(&q.keys.front)
        .arg(&job.id)
        .arg(&job.token)
        .arg(millis(lock))
        .invoke_async(&mut q.conn.clone())
        .await?;
    Ok(held == 1)
}

/// Completes the job (false if this attempt lost its lock) and, given a token and a lock for
/// it, takes the next ready job in the same script.
async fn complete(
    job: &Job,
    result: &serde_json::Value,
    next: Option<(String, Duration)>,
) -> Result<(bool, Option<Job>), JobError> {
    let q = &job.queue;
    let (token, lock) = next.unwrap_or_default();
    let reply: Vec<String> = scripts::COMPLETE
        .key(&q.keys.active)
        .key(&q.keys.completed)
        .key(&q.keys.events)
        .key(&q.keys.wait)
        .key(&q.keys.delayed)
        .key(&q.keys.meta)
        .arg(&q.keys.front)
        .arg(&job.id)
        .arg(&job.token)
        .arg(result.to_string())
        .arg(q.events_max_len)
        .arg(&token)
        .arg(millis(lock))
        .invoke_async(&mut q.conn.clone())
        .await?;
    let held = reply.first().map(String::as_str) == Some("done");
    let next = match parse_fetched(q, token, reply.get(1..).unwrap_or_default()) {
        Fetched::Job(next) => Some(*next),
        Fetched::Idle(_) => None,
    };
    Ok((held, next))
}

/// Fails the attempt (retry after the job's backoff, or failed for good); false if this
/// attempt lost its lock.
async fn fail(job: &Job, reason: &str) -> Result<bool, JobError> {
    let q = &job.queue;
    let delay = job.backoff.delay(job.attempts_made + 1);
    let done: i64 = scripts::FAIL
        .key(&q.keys.active)
        .key(&q.keys.wait)
        .key(&q.keys.delayed)
        .key(&q.keys.failed)
        .key(&q.keys.events)
        .arg(&q.keys.front)
        .arg(&job.id)
        .arg(&job.token)
        .arg(reason)
        .arg(millis(delay))
        .arg(q.events_max_len)
        .invoke_async(&mut q.conn.clone())
        .await?;
    Ok(done != 0)
}
