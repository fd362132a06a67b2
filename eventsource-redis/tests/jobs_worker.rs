//! Job workers on a real Redis: backoff timing, attempts exhausted, panics, stalled-job
//! recovery, progress, graceful shutdown.

mod jobs_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_redis::jobs::{Backoff, Job, JobError, JobEvent, JobOptions, JobState, Queue};
use jobs_support::{all_events, eventually, fast, queue, queue_and_front, start};
use serde_json::json;

/// A handler that fails every attempt, recording when each started.
fn always_failing(
    times: &Arc<Mutex<Vec<Instant>>>,
) -> impl Fn(Job) -> futures::future::Ready<Result<serde_json::Value, eventsource_redis::jobs::BoxError>>
+ Send
+ Sync
+ 'static {
    let times = Arc::clone(times);
    move |job: Job| {
        times.lock().unwrap().push(Instant::now());
        futures::future::ready(Err(
            format!("attempt {} broke", job.attempts_made() + 1).into()
        ))
    }
}

async fn finished(queue: &Queue, id: &str) -> bool {
    matches!(
        queue.job(id).await.unwrap().map(|j| j.state),
        Some(JobState::Completed | JobState::Failed)
    )
}

/// Runs one always-failing job with `options` to its end; its id and attempt start times.
async fn fail_to_the_end(queue: &Queue, options: &JobOptions) -> (String, Vec<Instant>) {
    let times = Arc::default();
    let worker = start(queue, always_failing(&times), fast());
    let id = queue.add_with("flaky", json!(1), options).await.unwrap().id;
    eventually(Duration::from_secs(5), "the job to fail", || {
        finished(queue, &id)
    })
    .await;
    worker.stop().await;
    let times = times.lock().unwrap().clone();
    (id, times)
}

#[tokio::test]
async fn spent_attempts_fail_the_job_with_the_last_error_after_fixed_backoff() {
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default()
        .with_attempts(3)
        .with_backoff(Backoff::fixed(Duration::from_millis(200)));
    let (id, times) = fail_to_the_end(&queue, &options).await;
    let job = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts_made, 3);
    assert_eq!(job.failed_reason.as_deref(), Some("attempt 3 broke"));
    assert_eq!(times.len(), 3);
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= Duration::from_millis(195), "retried after {gap:?}");
        assert!(gap < Duration::from_millis(600), "retried after {gap:?}");
    }
    let events: Vec<_> = all_events(&queue)
        .await
        .into_iter()
        .filter(|e| !matches!(e, JobEvent::Added { .. }))
        .collect();
    assert_eq!(
        events,
        vec![
            JobEvent::Retrying {
                id: id.clone(),
                reason: "attempt 1 broke".into(),
                attempts_made: 1,
                delay_ms: 200
            },
            JobEvent::Retrying {
                id: id.clone(),
                reason: "attempt 2 broke".into(),
                attempts_made: 2,
                delay_ms: 200
            },
            JobEvent::Failed {
                id,
                name: "flaky".into(),
                reason: "attempt 3 broke".into(),
                attempts_made: 3
            },
        ]
    );
}

#[tokio::test]
async fn exponential_backoff_doubles_the_wait() {
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default()
        .with_attempts(4)
        .with_backoff(Backoff::exponential(Duration::from_millis(100)));
    let (_, times) = fail_to_the_end(&queue, &options).await;
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 3);
    for (gap, want) in gaps.iter().zip([100, 200, 400]) {
        let want = Duration::from_millis(want);
        assert!(
            *gap >= want.saturating_sub(Duration::from_millis(5)),
            "{gaps:?}"
        );
        assert!(*gap < want + Duration::from_millis(300), "{gaps:?}");
    }
}

#[test]
fn jitter_draws_each_delay_within_its_band() {
    let backoff = Backoff::exponential(Duration::from_secs(1)).with_jitter(0.25);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let d = backoff.delay(2);
        assert!(
            d >= Duration::from_millis(1_500) && d <= Duration::from_secs(2),
            "{d:?}"
        );
        seen.insert(d);
    }
    assert!(seen.len() > 100, "jitter spreads delays");
    let clamped = Backoff::fixed(Duration::from_secs(1)).with_jitter(7.0);
    assert!(clamped.delay(1) <= Duration::from_secs(1));
}

#[tokio::test]
async fn a_panicking_handler_fails_the_attempt() {
    let Some(queue) = queue().await else { return };
    let worker = start(
        &queue,
        |job: Job| async move {
            assert_ne!(job.name(), "panics", "boom");
            Ok(json!(null))
        },
        fast(),
    );
    let id = queue.add("panics", json!(1)).await.unwrap().id;
    eventually(Duration::from_secs(5), "the job to fail", || {
        finished(&queue, &id)
    })
    .await;
    worker.stop().await;
    let job = queue.job(&id).await.unwrap().unwrap();
    let reason = job.failed_reason.unwrap();
    assert!(reason.starts_with("handler panicked: "), "{reason}");
    assert!(reason.contains("boom"), "{reason}");
}

/// A handler that signals it started and then never returns: its worker "dies" when its task
/// is aborted (no completion, no lock renewal).
fn hanging(
    started: &Arc<tokio::sync::Notify>,
) -> impl Fn(
    Job,
) -> futures::future::Pending<Result<serde_json::Value, eventsource_redis::jobs::BoxError>>
+ Send
+ Sync
+ 'static {
    let started = Arc::clone(started);
    move |_job: Job| {
        started.notify_one();
        futures::future::pending()
    }
}

#[tokio::test]
async fn a_job_whose_worker_died_runs_again_after_its_lock_expires() {
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default().with_attempts(2);
    let id = queue
        .add_with("survivor", json!(7), &options)
        .await
        .unwrap()
        .id;
    let started = Arc::new(tokio::sync::Notify::new());
    let dead = start(&queue, hanging(&started), fast());
    started.notified().await;
    dead.task.abort();
    let died = Instant::now();

    let worker = start(
        &queue,
        |job: Job| async move { Ok(json!({ "attempt": job.attempts_made() + 1 })) },
        fast(),
    );
    eventually(Duration::from_secs(5), "the job to run again", || {
        finished(&queue, &id)
    })
    .await;
    let waited = died.elapsed();
    worker.stop().await;
    assert!(
        waited >= Duration::from_millis(400),
        "ran again after {waited:?}"
    );
    let job = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    // The stall spent no attempt.
    assert_eq!(job.return_value, Some(json!({ "attempt": 1 })));
    assert!(all_events(&queue).await.contains(&JobEvent::Stalled {
        id,
        attempts_made: 0
    }));
}

#[tokio::test]
async fn a_job_stalled_more_than_max_stalled_times_fails() {
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default().with_attempts(5);
    let id = queue
        .add_with("doomed", json!(1), &options)
        .await
        .unwrap()
        .id;
    let started = Arc::new(tokio::sync::Notify::new());
    // The default allows one stall: the second fails the job, attempts unspent.
    for _ in 0..2 {
        let dead = start(
            &queue,
            hanging(&started),
            fast().with_stalled_interval(Duration::from_mins(1)),
        );
        started.notified().await;
        dead.task.abort();
        eventually(Duration::from_secs(5), "the stalled check", || async {
            queue.move_stalled(1).await.unwrap() == 1
        })
        .await;
    }
    let job = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts_made, 0);
    let reason = job.failed_reason.unwrap();
    assert!(reason.contains("job stalled more than 1 times"), "{reason}");
}

#[tokio::test]
async fn a_long_job_keeps_its_lock_while_it_runs() {
    let Some(queue) = queue().await else { return };
    let id = queue.add("long", json!(1)).await.unwrap().id;
    let runs = Arc::new(Mutex::new(0));
    let worker = start(
        &queue,
        {
            let runs = Arc::clone(&runs);
            move |_job: Job| {
                *runs.lock().unwrap() += 1;
                async move {
                    // Four lock durations.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(json!("done"))
                }
            }
        },
        fast().with_concurrency(2),
    );
    eventually(Duration::from_secs(5), "the job", || finished(&queue, &id)).await;
    worker.stop().await;
    assert_eq!(*runs.lock().unwrap(), 1, "never taken back while renewed");
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().state,
        JobState::Completed
    );
}

#[tokio::test]
async fn progress_is_stored_and_published_and_refused_after_the_lock_is_lost() {
    let Some(queue) = queue().await else { return };
    let id = queue.add("progress", json!(1)).await.unwrap().id;
    let kept: Arc<Mutex<Option<Job>>> = Arc::default();
    let worker = start(
        &queue,
        {
            let kept = Arc::clone(&kept);
            move |job: Job| {
                let kept = Arc::clone(&kept);
                async move {
                    job.progress(json!(50)).await?;
                    job.progress(json!({ "step": "done" })).await?;
                    *kept.lock().unwrap() = Some(job);
                    Ok(json!(1))
                }
            }
        },
        fast(),
    );
    eventually(Duration::from_secs(5), "the job", || finished(&queue, &id)).await;
    worker.stop().await;
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(info.progress, Some(json!({ "step": "done" })));
    let progress: Vec<_> = all_events(&queue)
        .await
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::Progress { progress, .. } => Some(progress),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![json!(50), json!({ "step": "done" })]);
    let job = kept.lock().unwrap().take().unwrap();
    assert!(matches!(
        job.progress(json!(99)).await,
        Err(JobError::LockLost { .. })
    ));
}

#[tokio::test]
async fn shutdown_waits_for_running_jobs_and_starts_no_new_one() {
    let Some(queue) = queue().await else { return };
    let first = queue.add("slow", json!(1)).await.unwrap().id;
    let second = queue.add("slow", json!(2)).await.unwrap().id;
    let started = Arc::new(tokio::sync::Notify::new());
    let worker = start(
        &queue,
        {
            let started = Arc::clone(&started);
            move |_job: Job| {
                started.notify_one();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(json!(null))
                }
            }
        },
        fast(),
    );
    started.notified().await;
    let stopping = Instant::now();
    worker.stop().await;
    assert!(stopping.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        queue.job(&first).await.unwrap().unwrap().state,
        JobState::Completed
    );
    assert_eq!(
        queue.job(&second).await.unwrap().unwrap().state,
        JobState::Waiting
    );
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.active, counts.waiting), (0, 1));
}

#[tokio::test]
async fn concurrency_runs_that_many_jobs_at_once() {
    let Some(queue) = queue().await else { return };
    for i in 0..8 {
        queue.add("c", json!(i)).await.unwrap();
    }
    let now = Arc::new(Mutex::new((0usize, 0usize)));
    let worker = start(
        &queue,
        {
            let now = Arc::clone(&now);
            move |_job: Job| {
                let now = Arc::clone(&now);
                async move {
                    {
                        let mut n = now.lock().unwrap();
                        n.0 += 1;
                        n.1 = n.1.max(n.0);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.lock().unwrap().0 -= 1;
                    Ok(json!(null))
                }
            }
        },
        fast().with_concurrency(4),
    );
    eventually(Duration::from_secs(5), "all jobs", || async {
        queue.counts().await.unwrap().completed == 8
    })
    .await;
    worker.stop().await;
    assert_eq!(now.lock().unwrap().1, 4);
}

#[tokio::test]
async fn a_result_from_an_attempt_that_lost_its_lock_is_refused() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let options = JobOptions::default().with_attempts(2);
    let id = queue
        .add_with("twice", json!(1), &options)
        .await
        .unwrap()
        .id;
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let worker = start(
        &queue,
        {
            let (started, release) = (Arc::clone(&started), Arc::clone(&release));
            move |_job: Job| {
                let (started, release) = (Arc::clone(&started), Arc::clone(&release));
                let runs = Arc::clone(&runs);
                async move {
                    let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if run == 1 {
                        started.notify_one();
                        release.notified().await;
                    }
                    Ok(json!({ "run": run }))
                }
            }
        },
        fast().with_concurrency(2),
    );
    started.notified().await;
    // Expire the first attempt's lock as if its worker had hung, and take the job back.
    let (_, mut conn) = support::connect(&support::redis_url().unwrap()).await;
    let active = format!("{front}active");
    let _: () = redis::AsyncCommands::zadd(&mut conn, &active, &id, 0)
        .await
        .unwrap();
    assert_eq!(queue.move_stalled(1).await.unwrap(), 1);
    eventually(Duration::from_secs(5), "the second attempt", || {
        finished(&queue, &id)
    })
    .await;
    release.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.stop().await;
    let job = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(job.return_value, Some(json!({ "run": 2 })));
    let completions = all_events(&queue)
        .await
        .into_iter()
        .filter(|e| matches!(e, JobEvent::Completed { .. }))
        .count();
    assert_eq!(completions, 1);
}

#[tokio::test]
async fn a_worker_rides_out_a_lost_connection_and_stops_on_a_permanent_error() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let url = support::redis_url().unwrap();
    // The worker's own connection, whose id the test knows, to cut it.
    let (_, mut worker_conn) = support::connect(&url).await;
    let worker_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut worker_conn)
        .await
        .unwrap();
    let prefix = front.split(":jobs:").next().unwrap();
    let worker_queue = Queue::with_keys(worker_conn, "test", &eventsource_redis::Keys::new(prefix));
    let worker = start(&worker_queue, |_job: Job| async { Ok(json!("ok")) }, fast());
    let first = queue.add("before", json!(1)).await.unwrap().id;
    eventually(Duration::from_secs(5), "the first job", || {
        finished(&queue, &first)
    })
    .await;

    let (_, mut conn) = support::connect(&url).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(worker_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let second = queue.add("after", json!(2)).await.unwrap().id;
    eventually(Duration::from_secs(10), "the job after the cut", || {
        finished(&queue, &second)
    })
    .await;
    assert!(!worker.task.is_finished());

    // A key of the wrong type is no transient failure: the worker stops with the error.
    let wait = format!("{front}wait");
    let _: () = redis::AsyncCommands::set(&mut conn, &wait, "not a sorted set")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), worker.task)
        .await
        .unwrap();
    let error = ended.unwrap().unwrap_err();
    assert!(
        matches!(error, JobError::Redis(_)) && !error.is_retryable(),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_busy_worker_still_takes_back_stalled_jobs() {
    let Some(queue) = queue().await else { return };
    let stalled = queue.add("stalled", json!(0)).await.unwrap().id;
    let started = Arc::new(tokio::sync::Notify::new());
    let dead = start(&queue, hanging(&started), fast());
    started.notified().await;
    dead.task.abort();
    let busy = JobOptions::default().with_priority(5);
    for i in 0..40 {
        queue.add_with("busy", json!(i), &busy).await.unwrap();
    }
    // One slot, never idle: 40 jobs of 50 ms run back to back.
    let worker = start(
        &queue,
        |_job: Job| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(json!(null))
        },
        fast(),
    );
    eventually(Duration::from_secs(5), "the stalled job", || {
        finished(&queue, &stalled)
    })
    .await;
    let left = queue.counts().await.unwrap().waiting;
    worker.stop().await;
    assert!(left > 0, "taken back only once the busy jobs were done");
}
