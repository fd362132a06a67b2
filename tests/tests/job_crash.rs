//! Job workers SIGKILLed at random while 10,000 jobs run (issue 18): each job completes exactly
//! once, or fails once its attempts are spent or it stalled twice; none is lost.
//!
//! Three workers run as child processes (`src/bin/job_child.rs`), so a kill is a real crash:
//! jobs die mid-run holding their locks, which expire after a second; a surviving worker's
//! stalled check puts them back (no attempt spent; a second stall fails the job, BullMQ's
//! default `maxStalledCount`). Every 100th job fails on purpose.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventsource_redis::Keys;
use eventsource_redis::jobs::{Backoff, JobEvent, JobOptions, JobState, Queue};
use futures::StreamExt as _;
use support::child::{ChildProcess, job_worker};

const JOBS: usize = 10_000;
const KILLS: usize = 60;
const WORKERS: usize = 3;
const CONCURRENCY: usize = 16;
const ATTEMPTS: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_no_job_and_complete_each_once() {
    let Some(redis_url) = support::service_url("REDIS_URL") else {
        return;
    };
    let conn = redis::Client::open(redis_url.as_str())
        .expect("REDIS_URL")
        .get_connection_manager()
        .await
        .expect("connect to Redis");
    let prefix = support::unique("jobcrash");
    let queue = Queue::with_keys(conn, "crash", &Keys::new(&prefix)).with_events_max_len(1_000_000);
    let options = JobOptions::default()
        .with_attempts(ATTEMPTS)
        .with_backoff(Backoff::exponential(Duration::from_millis(10)));
    let started = Instant::now();
    let ids = add_jobs(&queue, &options).await;
    assert_eq!(ids.len(), JOBS);

    let mut workers: Vec<ChildProcess> = Vec::new();
    for _ in 0..WORKERS {
        workers.push(job_worker(&redis_url, &prefix, CONCURRENCY));
    }
    for worker in &mut workers {
        worker.ready().await;
    }
    let mut unfinished_at_kill = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(100..400))).await;
        let counts = queue.counts().await.expect("counts");
        unfinished_at_kill.push(counts.waiting + counts.active + counts.delayed);
        let victim = workers.swap_remove(rand::random_range(0..workers.len()));
        victim.kill().await;
        let mut fresh = job_worker(&redis_url, &prefix, CONCURRENCY);
        fresh.ready().await;
        workers.push(fresh);
    }
    let killing = started.elapsed();
    let busy_kills = unfinished_at_kill.iter().filter(|n| **n > 0).count();
    assert!(busy_kills >= 50, "only {busy_kills} kills while jobs ran");

    support::wait_for("every job to finish", async || {
        let c = queue.counts().await.expect("counts");
        c.waiting + c.active + c.delayed == 0
    })
    .await;
    let elapsed = started.elapsed();
    drop(workers);

    let counts = queue.counts().await.expect("counts");
    assert_eq!(counts.completed + counts.failed, JOBS as u64, "{counts:?}");

    let (completed, failed, stalls) = event_counts(&queue).await;
    let mut problems = Vec::new();
    let mut stalled_out = 0;
    for id in &ids {
        let job = queue
            .job(id)
            .await
            .expect("job")
            .expect("a job is never lost");
        let (c, f) = (
            completed.get(id).copied().unwrap_or(0),
            failed.get(id).copied().unwrap_or(0),
        );
        let deliberate = job.data["fail"] == serde_json::json!(true);
        match job.state {
            JobState::Completed if (c, f) == (1, 0) && !deliberate => {
                if job.return_value.as_ref() != Some(&job.data) {
                    problems.push(format!("job {id} completed with {:?}", job.return_value));
                }
            }
            JobState::Failed if (c, f) == (0, 1) => {
                let reason = job.failed_reason.unwrap_or_default();
                if reason.contains("job stalled more than 1 times") {
                    stalled_out += 1;
                } else if !deliberate || job.attempts_made != ATTEMPTS {
                    problems.push(format!(
                        "job {id} failed after {} attempts with {reason:?}",
                        job.attempts_made
                    ));
                }
            }
            state => problems.push(format!(
                "job {id} ({}): {state:?} after {} attempts, {c} completed and {f} failed events",
                if deliberate { "failing" } else { "succeeding" },
                job.attempts_made
            )),
        }
    }
    eprintln!(
        "{JOBS} jobs, {KILLS} kills ({busy_kills} while jobs ran) in {killing:?}; all done in \
         {elapsed:?}; {stalls} stalled attempts taken back, {stalled_out} jobs failed for stalling \
         twice; {counts:?}"
    );
    assert!(
        problems.is_empty(),
        "{}",
        problems[..problems.len().min(20)].join("\n")
    );
    assert!(stalls > 0, "the kills hit running jobs");
}

/// Adds the jobs (every 100th fails on purpose) and returns their ids.
async fn add_jobs(queue: &Queue, options: &JobOptions) -> BTreeSet<String> {
    // 64 adds in flight at a time: one connection, each answer within its response timeout.
    futures::stream::iter(0..JOBS)
        .map(|i| async move {
            let data = serde_json::json!({ "n": i, "fail": i % 100 == 99 });
            queue.add_with("work", data, options).await.expect("add").id
        })
        .buffer_unordered(64)
        .collect()
        .await
}

type PerJob = BTreeMap<String, usize>;

/// Completed and failed events per job, and the number of stalled attempts taken back.
async fn event_counts(queue: &Queue) -> (PerJob, PerJob, usize) {
    let (mut completed, mut failed) = (PerJob::new(), PerJob::new());
    let mut stalls = 0;
    let mut after = "0".to_owned();
    loop {
        let page = queue.events(&after, 1_000).await.expect("events");
        let Some((last, _)) = page.last() else { break };
        after.clone_from(last);
        for (_, event) in page {
            match event {
                JobEvent::Completed { id, .. } => *completed.entry(id).or_default() += 1,
                JobEvent::Failed { id, .. } => *failed.entry(id).or_default() += 1,
                JobEvent::Stalled { .. } => stalls += 1,
                _ => {}
            }
        }
    }
    (completed, failed, stalls)
}
