//! The catch-up projection runner: every event once, checkpoints advance, a second instance
//! is refused, shutdown stops it, and a failing projection keeps its checkpoint before the event.

use std::collections::BTreeMap;
use std::time::Duration;

use eventsource_core::{
    CheckpointStore, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore,
    LogFilter, NewEvent, Projection, ProjectionError, ProjectionRunner, RecordedEvent, StreamId,
    TenantId,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct CountPerStream {
    counts: BTreeMap<String, u64>,
    fail_on: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("projection refused event {0}")]
struct Refused(u64);

impl Projection for CountPerStream {
    type Error = Refused;

    fn name(&self) -> &'static str {
        "count-per-stream"
    }

    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), Refused> {
        let n = event.payload["n"].as_u64().unwrap_or(0);
        if self.fail_on == Some(n) {
            return Err(Refused(n));
        }
        *self
            .counts
            .entry(event.stream.aggregate_id().to_owned())
            .or_default() += 1;
        Ok(())
    }
}

async fn append(store: &InMemoryEventStore, tenant: &str, id: &str, n: u64) {
    store
        .append(
            &StreamId::new(TenantId::new(tenant), "thing", id),
            ExpectedVersion::Any,
            vec![NewEvent::new("n", 1, serde_json::json!({ "n": n }))],
        )
        .await
        .expect("append");
}

#[tokio::test]
async fn catch_up_applies_each_event_once_and_checkpoints() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    for n in 0..25 {
        append(&store, "acme", &format!("s{}", n % 3), n).await;
    }
    append(&store, "other", "s0", 99).await;
    let mut runner = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    )
    .with_filter(LogFilter::tenant(TenantId::new("acme")))
    .with_batch_size(4);
    assert_eq!(runner.catch_up().await.expect("catch up"), 25);
    assert_eq!(runner.catch_up().await.expect("nothing new"), 0);
    append(&store, "acme", "s0", 25).await;
    assert_eq!(runner.catch_up().await.expect("one new"), 1);
    let counts = &runner.projection().counts;
    assert_eq!(counts.values().sum::<u64>(), 26);
    assert_eq!(counts["s0"], 10);
    assert!(
        checkpoints
            .load("count-per-stream")
            .await
            .expect("load")
            .is_some()
    );
}

#[tokio::test]
async fn instances_share_progress_through_the_checkpoint() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    append(&store, "t", "a", 1).await;
    let mut first = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    );
    let mut second = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    );
    // Both read from the same checkpoint; the first to save wins.
    first.catch_up().await.expect("first");
    append(&store, "t", "a", 2).await;
    second
        .catch_up()
        .await
        .expect("second catches up from the saved checkpoint");
    assert_eq!(
        second.projection().counts["a"],
        1,
        "second saw only the new event"
    );
    checkpoints
        .save(
            "count-per-stream",
            None,
            eventsource_core::LogPosition::START,
        )
        .await
        .expect_err("a stale save is refused");
}

#[tokio::test]
async fn failing_projection_keeps_its_checkpoint_before_the_event() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    for n in 0..5 {
        append(&store, "t", "a", n).await;
    }
    let failing = CountPerStream {
        fail_on: Some(3),
        ..CountPerStream::default()
    };
    let mut runner =
        ProjectionRunner::new(store.clone(), checkpoints.clone(), failing).with_batch_size(2);
    let err = runner.catch_up().await.expect_err("event 3 fails");
    assert!(
        matches!(
            err,
            ProjectionError::Apply {
                source: Refused(3),
                ..
            }
        ),
        "{err}"
    );
    // Batches [0,1] were checkpointed; [2,3] was not, so 2 and 3 will be delivered again.
    let mut retry =
        ProjectionRunner::new(store, checkpoints, CountPerStream::default()).with_batch_size(2);
    assert_eq!(retry.catch_up().await.expect("retry"), 3);
}

#[tokio::test]
async fn run_follows_new_appends_and_stops_on_shutdown() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    let shutdown = CancellationToken::new();
    let runner = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    )
    .with_idle_poll(Duration::from_secs(30));
    let task = tokio::spawn(runner.run(shutdown.clone()));
    for n in 0..10 {
        append(&store, "t", "a", n).await;
    }
    // The append notification wakes the runner long before the 30 s idle poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let saved = checkpoints.load("count-per-stream").await.expect("load");
        if saved.is_some_and(|p| p.position() == 10) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runner did not follow appends"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    let projection = task.await.expect("join").expect("run");
    assert_eq!(projection.counts["a"], 10);
}

#[tokio::test]
async fn rebuild_replays_into_a_new_generation_and_swaps_it_in() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    for n in 0..12_000 {
        append(&store, "t", &format!("s{}", n % 7), n).await;
    }
    let mut runner = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    );
    runner.catch_up().await.expect("first build");
    let built = runner.projection().counts.clone();

    let mut reports = Vec::new();
    let old = runner
        .rebuild(CountPerStream::default(), |p| reports.push(*p))
        .await
        .expect("rebuild");
    assert_eq!(
        old.counts, built,
        "the old generation is handed back untouched"
    );
    assert_eq!(
        runner.projection().counts,
        built,
        "replay rebuilds the same model"
    );
    assert!(
        reports.len() >= 3,
        "progress after each large batch: {}",
        reports.len()
    );
    assert!(reports.windows(2).all(|w| w[0].processed < w[1].processed));
    let last = reports.last().expect("progress");
    assert_eq!((last.processed, last.total), (12_000, 12_000));
    assert!(last.rate > 0.0);

    append(&store, "t", "s0", 12_000).await;
    assert_eq!(
        runner.catch_up().await.expect("resume"),
        1,
        "the checkpoint moved with the swap"
    );
}

#[tokio::test]
async fn a_failed_rebuild_swaps_nothing() {
    let store = InMemoryEventStore::new();
    let checkpoints = InMemoryCheckpointStore::new();
    for n in 0..10 {
        append(&store, "t", "a", n).await;
    }
    let mut runner = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        CountPerStream::default(),
    );
    runner.catch_up().await.expect("build");
    let before = checkpoints.load("count-per-stream").await.expect("load");
    let failing = CountPerStream {
        fail_on: Some(4),
        ..CountPerStream::default()
    };
    runner
        .rebuild(failing, |_| {})
        .await
        .expect_err("event 4 fails");
    assert_eq!(
        runner.projection().counts["a"],
        10,
        "the serving generation stays"
    );
    assert_eq!(
        checkpoints.load("count-per-stream").await.expect("load"),
        before
    );
}
