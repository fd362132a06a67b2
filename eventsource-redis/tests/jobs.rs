//! The job queue on a real Redis: priority order, delays, dedup ids, retention, counts,
//! pause / resume and the events stream.

mod jobs_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_redis::jobs::{
    Job, JobCounts, JobError, JobEvent, JobOptions, JobState, MAX_PRIORITY,
};
use jobs_support::{all_events, eventually, fast, queue, start};
use serde_json::json;

type Log = Arc<Mutex<Vec<String>>>;

/// A handler that records the ids it ran and returns the job's data.
fn recorder(
    log: &Log,
) -> impl Fn(Job) -> futures::future::Ready<Result<serde_json::Value, eventsource_redis::jobs::BoxError>>
+ Send
+ Sync
+ 'static {
    let log = Arc::clone(log);
    move |job: Job| {
        log.lock().unwrap().push(job.id().to_owned());
        futures::future::ready(Ok(job.data().clone()))
    }
}

#[tokio::test]
async fn jobs_run_by_priority_then_in_the_order_added() {
    let Some(queue) = queue().await else { return };
    let mut expected = Vec::new();
    let mut added = Vec::new();
    for (i, priority) in [5u32, 1, 10, 1, 0, 5, 0].into_iter().enumerate() {
        let options = JobOptions::default().with_priority(priority);
        let job = queue.add_with("p", json!(i), &options).await.unwrap();
        added.push((priority, i, job.id));
    }
    added.sort();
    expected.extend(added.into_iter().map(|(_, _, id)| id));
    let log = Log::default();
    let worker = start(&queue, recorder(&log), fast());
    eventually(Duration::from_secs(5), "all jobs", || async {
        log.lock().unwrap().len() == expected.len()
    })
    .await;
    worker.stop().await;
    assert_eq!(*log.lock().unwrap(), expected);
}

#[tokio::test]
async fn a_delayed_job_waits_for_its_delay() {
    let Some(queue) = queue().await else { return };
    let log = Log::default();
    let worker = start(&queue, recorder(&log), fast());
    let added_at = Instant::now();
    let options = JobOptions::default().with_delay(Duration::from_millis(400));
    let id = queue
        .add_with("later", json!(1), &options)
        .await
        .unwrap()
        .id;
    queue.add("now", json!(2)).await.unwrap();
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().state,
        JobState::Delayed
    );
    eventually(Duration::from_secs(5), "the delayed job", || async {
        log.lock().unwrap().contains(&id)
    })
    .await;
    let waited = added_at.elapsed();
    worker.stop().await;
    assert!(waited >= Duration::from_millis(390), "ran after {waited:?}");
    assert!(
        waited < Duration::from_millis(1_500),
        "ran after {waited:?}"
    );
    assert_eq!(log.lock().unwrap()[0], "2", "the undelayed job ran first");
}

#[tokio::test]
async fn a_job_id_deduplicates_and_bad_options_are_refused() {
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default().with_job_id("invoice-7");
    let first = queue.add_with("mail", json!(1), &options).await.unwrap();
    let second = queue.add_with("mail", json!(2), &options).await.unwrap();
    assert_eq!((first.id.as_str(), first.created), ("invoice-7", true));
    assert_eq!((second.id.as_str(), second.created), ("invoice-7", false));
    assert_eq!(queue.counts().await.unwrap().waiting, 1);
    let job = queue.job("invoice-7").await.unwrap().unwrap();
    assert_eq!(job.data, json!(1), "the first job is kept as it was");

    // Still deduplicated once completed and kept.
    let log = Log::default();
    let worker = start(&queue, recorder(&log), fast());
    eventually(Duration::from_secs(5), "the job", || async {
        queue.counts().await.unwrap().completed == 1
    })
    .await;
    worker.stop().await;
    assert!(
        !queue
            .add_with("mail", json!(3), &options)
            .await
            .unwrap()
            .created
    );

    for bad in [
        JobOptions::default().with_job_id("42"),
        JobOptions::default().with_job_id(""),
        JobOptions::default().with_priority(MAX_PRIORITY + 1),
    ] {
        let refused = queue.add_with("mail", json!(0), &bad).await;
        assert!(
            matches!(refused, Err(JobError::InvalidOptions(_))),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn only_the_last_n_finished_jobs_are_kept() {
    let Some(queue) = queue().await else { return };
    let queue = queue.with_default_options(
        JobOptions::default()
            .with_keep_completed(3)
            .with_keep_failed(2),
    );
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            queue
                .add("keep", json!({ "fail": i % 2 == 1 }))
                .await
                .unwrap()
                .id,
        );
    }
    let worker = start(
        &queue,
        |job: Job| async move {
            if job.data()["fail"] == json!(true) {
                Err("odd".into())
            } else {
                Ok(json!(null))
            }
        },
        fast(),
    );
    eventually(Duration::from_secs(5), "all jobs", || async {
        let c = queue.counts().await.unwrap();
        c.waiting + c.active + c.delayed == 0
    })
    .await;
    worker.stop().await;
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.completed, counts.failed), (3, 2));
    // Kept: the last three even ids (4, 6, 8 → ids 5, 7, 9) and last two odd ones.
    for (i, id) in ids.iter().enumerate() {
        let kept = matches!(i, 4 | 6 | 8 | 7 | 9);
        assert_eq!(queue.job(id).await.unwrap().is_some(), kept, "job {i}");
    }
}

#[tokio::test]
async fn retention_keeps_the_last_finished_even_within_one_millisecond() {
    // Quick jobs finish several per millisecond. Their ids fall as text as they are added, so
    // ordering a tie by id would keep the first finished instead of the last.
    let Some(queue) = queue().await else { return };
    let options = JobOptions::default().with_keep_completed(3);
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = format!("job-{:02}", 99 - i);
        queue
            .add_with("quick", json!(i), &options.clone().with_job_id(&id))
            .await
            .unwrap();
        ids.push(id);
    }
    let log: Log = Arc::default();
    let worker = start(&queue, recorder(&log), fast());
    eventually(Duration::from_secs(5), "all jobs", || async {
        log.lock().unwrap().len() == 40 && queue.counts().await.unwrap().waiting == 0
    })
    .await;
    worker.stop().await;
    let ran = log.lock().unwrap().clone();
    for id in &ids {
        let kept = ran[ran.len() - 3..].contains(id);
        assert_eq!(
            queue.job(id).await.unwrap().is_some(),
            kept,
            "job {id}, run order {ran:?}"
        );
    }
}

#[tokio::test]
async fn counts_follow_every_state() {
    let Some(queue) = queue().await else { return };
    assert_eq!(queue.counts().await.unwrap(), JobCounts::default());
    queue.add("a", json!(1)).await.unwrap();
    queue.add("b", json!(2)).await.unwrap();
    let delayed = JobOptions::default().with_delay(Duration::from_mins(1));
    queue.add_with("c", json!(3), &delayed).await.unwrap();
    let c = queue.counts().await.unwrap();
    assert_eq!((c.waiting, c.delayed, c.active), (2, 1, 0));

    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let worker = start(
        &queue,
        {
            let (release, started) = (Arc::clone(&release), Arc::clone(&started));
            move |job: Job| {
                let (release, started) = (Arc::clone(&release), Arc::clone(&started));
                async move {
                    started.notify_one();
                    release.notified().await;
                    if job.name() == "a" {
                        Ok(json!(1))
                    } else {
                        Err("b fails".into())
                    }
                }
            }
        },
        fast(),
    );
    started.notified().await;
    let c = queue.counts().await.unwrap();
    assert_eq!((c.waiting, c.active, c.delayed), (1, 1, 1));
    release.notify_one();
    started.notified().await;
    release.notify_one();
    eventually(Duration::from_secs(5), "both finished", || async {
        let c = queue.counts().await.unwrap();
        c.completed == 1 && c.failed == 1
    })
    .await;
    worker.stop().await;
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.waiting, c.active, c.delayed, c.completed, c.failed),
        (0, 0, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_paused_queue_runs_nothing_until_resumed() {
    let Some(queue) = queue().await else { return };
    queue.pause().await.unwrap();
    assert!(queue.is_paused().await.unwrap());
    let id = queue.add("held", json!(1)).await.unwrap().id;
    let log = Log::default();
    let worker = start(&queue, recorder(&log), fast());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(queue.counts().await.unwrap().waiting, 1);
    queue.resume().await.unwrap();
    assert!(!queue.is_paused().await.unwrap());
    eventually(Duration::from_secs(5), "the job", || async {
        log.lock().unwrap().contains(&id)
    })
    .await;
    worker.stop().await;
    let events = all_events(&queue).await;
    assert_eq!(events[0], JobEvent::Paused);
    assert_eq!(
        events[1],
        JobEvent::Added {
            id: id.clone(),
            name: "held".into()
        }
    );
    assert_eq!(events[2], JobEvent::Resumed);
    assert_eq!(
        events[3],
        JobEvent::Completed {
            id,
            name: "held".into(),
            result: json!(1)
        }
    );
}

#[tokio::test]
async fn an_idle_worker_wakes_when_a_delayed_job_falls_due() {
    let Some(queue) = queue().await else { return };
    let log = Log::default();
    let options = JobOptions::default().with_delay(Duration::from_millis(1_100));
    let added_at = Instant::now();
    let id = queue
        .add_with("later", json!(1), &options)
        .await
        .unwrap()
        .id;
    // Doubling idle polls (1, 2, 4 … 1,024 ms) would look next at about 2 s: only the due time
    // brings the worker back at 1.1 s.
    let slow = fast()
        .with_max_idle_poll(Duration::from_secs(5))
        .with_stalled_interval(Duration::from_secs(5));
    let worker = start(&queue, recorder(&log), slow);
    eventually(Duration::from_secs(3), "the delayed job", || async {
        log.lock().unwrap().contains(&id)
    })
    .await;
    let waited = added_at.elapsed();
    worker.stop().await;
    assert!(waited >= Duration::from_millis(1_090), "{waited:?}");
    assert!(waited < Duration::from_millis(1_700), "{waited:?}");
}

#[tokio::test]
async fn an_events_max_len_of_zero_writes_no_events() {
    let Some(queue) = queue().await else { return };
    let queue = queue.with_events_max_len(0);
    queue.add("quiet", json!(1)).await.unwrap();
    queue.pause().await.unwrap();
    assert!(queue.events("0", 10).await.unwrap().is_empty());
}
