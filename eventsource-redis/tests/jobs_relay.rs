//! The job events relay on a real Redis: queue lifecycle events onto the bus, in order, on
//! their topics, at least once from a durable cursor; outcomes into the store, once each.

mod jobs_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::bus::{
    BoxError, BusEvent, EventBus, InMemoryBus, Pattern, Priority, SubscribeOptions,
};
use eventsource_core::{
    EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, StoreError, StreamId, TenantId,
};
use eventsource_redis::jobs::{
    JOB_EVENT_FIELD, Job, JobEvent, JobEventsRelay, JobEventsStoreRelay, JobOptions, Queue,
    RelayError,
};
use eventsource_redis::{Keys, RedisBus};
use jobs_support::{all_events, eventually, fast, queue, queue_and_front, start};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<BusEvent>>>;

/// An in-memory bus with a subscription recording every `jobs.*` event.
async fn recorded_bus() -> (Arc<dyn EventBus>, Seen) {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let seen = Seen::default();
    let sink = Arc::clone(&seen);
    bus.subscribe(
        Pattern::parse("jobs.*").unwrap(),
        Arc::new(move |event: BusEvent| {
            sink.lock().unwrap().push(event);
            async { Ok::<(), BoxError>(()) }
        }),
        SubscribeOptions::default(),
    )
    .await
    .unwrap();
    (bus, seen)
}

fn stream_id(event: &BusEvent) -> String {
    event.metadata.extra[JOB_EVENT_FIELD]["stream_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_bus_in_order_on_their_topics() {
    let Some(queue) = queue().await else { return };
    let (bus, seen) = recorded_bus().await;
    let worker = start(
        &queue,
        |job: Job| async move {
            if job.name() == "bad" {
                return Err(BoxError::from("boom"));
            }
            job.progress(json!(50)).await?;
            Ok(json!("done"))
        },
        fast(),
    );
    queue.add("good", json!(1)).await.unwrap();
    queue
        .add_with("bad", json!(2), &JobOptions::default().with_attempts(1))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "both jobs finished", || async {
        let counts = queue.counts().await.unwrap();
        counts.completed == 1 && counts.failed == 1
    })
    .await;
    worker.stop().await;

    let relay = JobEventsRelay::new(queue.clone(), bus)
        .unwrap()
        .with_poll_interval(Duration::from_millis(10));
    assert_eq!(relay.topic_prefix(), "jobs.test");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let expected = all_events(&queue).await;
    eventually(Duration::from_secs(5), "every event relayed", || async {
        seen.lock().unwrap().len() >= expected.len()
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    let topics: Vec<String> = seen.iter().map(|e| e.topic.clone()).collect();
    let wanted: Vec<String> = expected
        .iter()
        .map(|e| format!("jobs.test.{}", e.kind()))
        .collect();
    assert_eq!(topics, wanted);
    let ids: Vec<String> = seen.iter().map(stream_id).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    sorted.dedup();
    assert_eq!(ids, sorted, "in stream order, each once");
    for kind in ["added", "progress", "completed", "failed"] {
        assert!(topics.contains(&format!("jobs.test.{kind}")), "{kind}");
    }
    let by_topic = |topic: &str| seen.iter().find(|e| e.topic == topic).unwrap().clone();
    let completed = by_topic("jobs.test.completed").payload;
    assert_eq!(completed["result"], json!("done"));
    assert_eq!(completed["name"], json!("good"));
    assert_eq!(completed["queue"], json!("test"));
    assert_eq!(completed["event"], json!("completed"));
    assert_eq!(
        by_topic("jobs.test.progress").payload["progress"],
        json!(50)
    );
    let failed = by_topic("jobs.test.failed").payload;
    assert_eq!(failed["name"], json!("bad"));
    assert!(failed["reason"].as_str().unwrap().contains("boom"));
    assert_eq!(failed["attempts_made"], json!(1));
    assert_eq!(
        seen[0].metadata.extra[JOB_EVENT_FIELD]["queue"],
        json!("test")
    );
}

#[tokio::test]
async fn a_restarted_relay_resumes_from_its_cursor() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let bus = Arc::new(InMemoryBus::new());
    let dyn_bus: Arc<dyn EventBus> = bus.clone();
    let mut added = Vec::new();
    for i in 0..5 {
        added.push(queue.add("a", json!(i)).await.unwrap().id);
    }
    let first = JobEventsRelay::new(queue.clone(), Arc::clone(&dyn_bus))
        .unwrap()
        .with_batch_size(2);
    assert_eq!(first.cursor().await.unwrap(), "0");
    assert_eq!(first.step().await.unwrap(), 2);
    assert_eq!(first.step().await.unwrap(), 2);
    drop(first);
    for i in 5..8 {
        added.push(queue.add("a", json!(i)).await.unwrap().id);
    }
    let second = JobEventsRelay::new(queue.clone(), Arc::clone(&dyn_bus)).unwrap();
    assert_eq!(second.step().await.unwrap(), 4);
    assert_eq!(second.step().await.unwrap(), 0);

    let history = bus.history("jobs.test.added");
    let relayed: Vec<String> = history
        .iter()
        .map(|e| e.payload["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(relayed, added, "every event once, in order");
    let last = queue.events("0", 100).await.unwrap().pop().unwrap().0;
    assert_eq!(second.cursor().await.unwrap(), last);

    // Re-publishing (the cursor lost, as after a crash before it moved) gives the same ids.
    let mut conn = support::connect(&support::redis_url().unwrap()).await.1;
    let _: () = redis::AsyncCommands::del(&mut conn, format!("{front}relay:bus"))
        .await
        .unwrap();
    assert_eq!(second.step().await.unwrap(), 8);
    let again = bus.history("jobs.test.added");
    let ids = |events: &[BusEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&again[8..]), ids(&again[..8]));
    assert_eq!(again[0].id, again[8].id);
    assert_ne!(again[0].id, again[1].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_does_not_move_the_cursor() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (client, mut conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let queue = Queue::with_keys(conn.clone(), "test", &keys);
    let bus: Arc<dyn EventBus> =
        Arc::new(RedisBus::new(conn.clone(), client, "main").with_keys(keys.clone()));
    // A string where the bus's stream should be: every XADD fails with WRONGTYPE.
    let stream = keys.bus_stream("main", Priority::Normal);
    let _: () = redis::AsyncCommands::set(&mut conn, &stream, "in the way")
        .await
        .unwrap();
    queue.add("a", json!(1)).await.unwrap();
    queue.add("a", json!(2)).await.unwrap();

    let relay = JobEventsRelay::new(queue.clone(), bus)
        .unwrap()
        .with_poll_interval(Duration::from_millis(10));
    let err = relay.step().await.unwrap_err();
    assert!(matches!(err, RelayError::Bus(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(relay.cursor().await.unwrap(), "0");

    // The running relay retries without moving the cursor, and catches up once the bus works.
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.cursor().await.unwrap(), "0");
    let _: () = redis::AsyncCommands::del(&mut conn, &stream).await.unwrap();
    let last = queue.events("0", 10).await.unwrap().pop().unwrap().0;
    eventually(Duration::from_secs(5), "the cursor moved", || async {
        relay.cursor().await.unwrap() == last
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let len: usize = redis::AsyncCommands::xlen(&mut conn, &stream)
        .await
        .unwrap();
    assert_eq!(len, 2, "each event published once after the failures");
}

#[tokio::test]
async fn a_queue_name_that_is_not_a_topic_segment_needs_a_prefix() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (_, conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let memory = Arc::new(InMemoryBus::new());
    let bus: Arc<dyn EventBus> = memory.clone();
    let spaced = Queue::with_keys(conn.clone(), "my queue", &keys);
    assert!(matches!(
        JobEventsRelay::new(spaced, Arc::clone(&bus)),
        Err(RelayError::QueueNameNotASegment { .. })
    ));
    let queue = Queue::with_keys(conn, "reports.v2", &keys);
    let refused = JobEventsRelay::new(queue.clone(), Arc::clone(&bus)).unwrap_err();
    assert!(
        matches!(&refused, RelayError::QueueNameNotASegment { queue } if queue == "reports.v2"),
        "{refused:?}"
    );
    assert!(!refused.is_retryable());
    assert!(matches!(
        JobEventsRelay::with_topic_prefix(queue.clone(), Arc::clone(&bus), "jobs.reports v2"),
        Err(RelayError::InvalidTopic(_))
    ));
    let relay = JobEventsRelay::with_topic_prefix(queue.clone(), bus, "jobs.reports-v2").unwrap();
    queue.pause().await.unwrap();
    assert_eq!(relay.step().await.unwrap(), 1);
    let events = queue.events("0", 10).await.unwrap();
    assert!(matches!(events[0].1, JobEvent::Paused));
    let paused = memory.history("jobs.reports-v2.paused");
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].payload["queue"], json!("reports.v2"));
}

/// Completed and failed jobs as domain events of the `job` aggregate, one stream per job.
fn outcomes(event: &JobEvent) -> Option<(StreamId, NewEvent)> {
    let stream = |id: &str| StreamId::new(TenantId::new("t"), "job", id);
    match event {
        JobEvent::Completed { id, result, .. } => Some((
            stream(id),
            NewEvent::new("JobCompleted", 1, json!({ "result": result })),
        )),
        JobEvent::Failed { id, reason, .. } => Some((
            stream(id),
            NewEvent::new("JobFailed", 1, json!({ "reason": reason })),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_outcomes_are_appended_to_the_store_once() {
    let Some((queue, front)) = queue_and_front().await else {
        return;
    };
    let worker = start(
        &queue,
        |job: Job| async move {
            if job.name() == "bad" {
                return Err(BoxError::from("boom"));
            }
            Ok(json!(job.data().clone()))
        },
        fast(),
    );
    let good = queue.add("good", json!(7)).await.unwrap().id;
    let bad = queue
        .add_with("bad", json!(8), &JobOptions::default().with_attempts(1))
        .await
        .unwrap()
        .id;
    eventually(Duration::from_secs(5), "both jobs finished", || async {
        let counts = queue.counts().await.unwrap();
        counts.completed == 1 && counts.failed == 1
    })
    .await;
    worker.stop().await;

    let store = InMemoryEventStore::new();
    let relay = JobEventsStoreRelay::new(queue.clone(), store.clone(), outcomes)
        .with_poll_interval(Duration::from_millis(10));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(shutdown.clone()));
    let last = queue.events("0", 100).await.unwrap().pop().unwrap().0;
    eventually(Duration::from_secs(5), "the cursor at the end", || async {
        relay.cursor().await.unwrap() == last
    })
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let logged = support::log(&store).await;
    let kinds: Vec<(String, String)> = logged
        .iter()
        .map(|e| (e.stream.aggregate_id().to_owned(), e.event_type.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (good.clone(), "JobCompleted".to_owned()),
            (bad, "JobFailed".to_owned())
        ]
    );
    assert_eq!(logged[0].payload, json!({ "result": 7 }));
    assert_eq!(
        logged[0].metadata.extra[JOB_EVENT_FIELD]["queue"],
        json!("test")
    );

    // The cursor lost (a crash before it moved): the replay appends nothing twice.
    let mut conn = support::connect(&support::redis_url().unwrap()).await.1;
    let _: () = redis::AsyncCommands::del(&mut conn, format!("{front}relay:store"))
        .await
        .unwrap();
    let stream_len = queue.events("0", 100).await.unwrap().len();
    assert_eq!(
        relay.step().await.unwrap(),
        stream_len,
        "skipped ones count"
    );
    assert_eq!(relay.cursor().await.unwrap(), last);
    assert_eq!(support::log(&store).await.len(), 2);

    // The stored event has the id the bus relay gives the same job event.
    let bus = Arc::new(InMemoryBus::new());
    let bus_relay = JobEventsRelay::new(queue.clone(), bus.clone()).unwrap();
    bus_relay.step().await.unwrap();
    assert_eq!(bus.history("jobs.test.completed")[0].id, logged[0].event_id);
}

#[tokio::test]
async fn a_failed_append_does_not_move_the_cursor() {
    let Some(queue) = queue().await else { return };
    queue.add("a", json!(1)).await.unwrap();
    let bus = Arc::new(InMemoryBus::new());
    JobEventsRelay::new(queue.clone(), bus.clone())
        .unwrap()
        .step()
        .await
        .unwrap();
    let taken = bus.history("jobs.test.added")[0].id;
    // The id the job event will get is already stored elsewhere: the store refuses it.
    let store = InMemoryEventStore::new();
    let elsewhere = StreamId::new(TenantId::new("t"), "other", "1");
    store
        .append(
            &elsewhere,
            ExpectedVersion::Any,
            vec![NewEvent::new("Other", 1, json!({})).with_event_id(taken)],
        )
        .await
        .unwrap();
    let relay = JobEventsStoreRelay::new(queue.clone(), store.clone(), |event: &JobEvent| {
        Some((
            StreamId::new(TenantId::new("t"), "job", "x"),
            NewEvent::new(event.kind(), 1, json!({})),
        ))
    });
    let err = relay.step().await.unwrap_err();
    assert!(
        matches!(err, RelayError::Store(StoreError::DuplicateEventId { .. })),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(relay.cursor().await.unwrap(), "0");
    let stopped = relay.run(CancellationToken::new()).await;
    assert!(matches!(stopped, Err(RelayError::Store(_))), "{stopped:?}");
}
