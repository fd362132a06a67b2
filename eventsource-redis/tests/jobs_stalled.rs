//! The stalled check on a real Redis: a job handed to a worker whose reply was lost runs
//! without spending an attempt; an active id whose job hash was removed by hand is dropped.

mod jobs_support;
mod support;

use std::time::Duration;

use eventsource_redis::jobs::{Job, JobState, Queue};
use jobs_support::{eventually, fast, queue_and_front, start};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde_json::json;

/// Moves `id` from `wait` to `active` with an expired lock, as a fetch whose reply never
/// reached its worker leaves it.
async fn lose_the_fetch_reply(conn: &mut ConnectionManager, front: &str, id: &str) {
    let _: () = conn.zrem(format!("{front}wait"), id).await.unwrap();
    let _: () = conn.zadd(format!("{front}active"), id, 0).await.unwrap();
    let _: () = conn
        .hset_multiple(
            format!("{front}job:{id}"),
            &[("state", "active"), ("token", "lost")],
        )
        .await
        .unwrap();
}

/// A handler that returns which attempt ran it.
fn succeeding()
-> impl Fn(Job) -> futures::future::Ready<Result<serde_json::Value, eventsource_redis::jobs::BoxError>>
+ Send
+ Sync
+ 'static {
    |job: Job| futures::future::ready(Ok(json!({ "attempt": job.attempts_made() + 1 })))
}

async fn state(queue: &Queue, id: &str) -> Option<JobState> {
    queue.job(id).await.unwrap().map(|j| j.state)
}

#[tokio::test]
async fn a_job_whose_fetch_reply_was_lost_runs_with_its_only_attempt() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let (_, mut conn) = support::connect(&support::redis_url().unwrap()).await;
    let id = queue.add("once", json!(1)).await.unwrap().id;
    lose_the_fetch_reply(&mut conn, &front, &id).await;
    let worker = start(&queue, succeeding(), fast());
    eventually(Duration::from_secs(5), "the job to finish", || async {
        matches!(
            state(&queue, &id).await,
            Some(JobState::Completed | JobState::Failed)
        )
    })
    .await;
    worker.stop().await;
    let job = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed, "{:?}", job.failed_reason);
    assert_eq!(job.return_value, Some(json!({ "attempt": 1 })));
}

#[tokio::test]
async fn an_active_id_without_its_job_hash_is_dropped_by_the_stalled_check() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let (_, mut conn) = support::connect(&support::redis_url().unwrap()).await;
    let gone = queue.add("gone", json!(1)).await.unwrap().id;
    lose_the_fetch_reply(&mut conn, &front, &gone).await;
    let _: () = conn.del(format!("{front}job:{gone}")).await.unwrap();
    assert_eq!(queue.move_stalled(1).await.unwrap(), 0);
    let stub: bool = conn.exists(format!("{front}job:{gone}")).await.unwrap();
    assert!(!stub, "no stub hash is recreated");
    let active: Option<f64> = conn.zscore(format!("{front}active"), &gone).await.unwrap();
    assert_eq!(active, None);

    // A worker keeps running through the same case and runs the next job.
    let again = queue.add("gone-again", json!(2)).await.unwrap().id;
    lose_the_fetch_reply(&mut conn, &front, &again).await;
    let _: () = conn.del(format!("{front}job:{again}")).await.unwrap();
    let worker = start(&queue, succeeding(), fast());
    let next = queue.add("next", json!(3)).await.unwrap().id;
    eventually(Duration::from_secs(5), "the next job", || async {
        state(&queue, &next).await == Some(JobState::Completed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!worker.task.is_finished(), "the worker keeps running");
    worker.stop().await;
    let stub: bool = conn.exists(format!("{front}job:{again}")).await.unwrap();
    assert!(!stub);
}
