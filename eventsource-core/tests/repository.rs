//! Repository behaviour users rely on: conflict retries, the aggregate cache, metadata
//! propagation, deterministic ids, snapshots that never fail a command, typed decode errors.

use std::sync::Arc;

use eventsource_core::{
    Aggregate, CommandContext, CommandError, DomainEvent, EventStore, ExpectedVersion, Handle,
    InMemoryEventStore, InMemorySnapshotStore, LoadError, NewEvent, Repository, RetryPolicy,
    Snapshot, SnapshotPolicy, SnapshotStore, Version, VersionRange,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    #[event(name = "counter-added")]
    Added { by: u32 },
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 1)]
struct Counter {
    total: u64,
    events: u64,
}

impl CounterEventHandler for Counter {
    fn when_added(&mut self, e: counter_event::Added) {
        self.total += u64::from(*e.by);
        self.events += 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("adding zero is not a change")]
struct Zero;

impl Handle for Counter {
    type Command = u32;
    type Error = Zero;

    fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Zero> {
        if by == 0 {
            Err(Zero)
        } else {
            Ok(vec![CounterEvent::Added { by }])
        }
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(1000)
        .with_base_delay(std::time::Duration::from_micros(50))
        .with_max_delay(std::time::Duration::from_millis(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_without_cache_retry_until_all_land() {
    let repo = Repository::<Counter, _>::new(InMemoryEventStore::new())
        .without_cache()
        .with_retry(fast_retry());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    repo.execute("hot", 1).await.expect("command");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let loaded = repo.load("hot").await.expect("load");
    assert_eq!(loaded.state().total, 160);
    assert_eq!(loaded.version(), Version::new(160));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_serializes_commands_on_one_aggregate_without_conflicts() {
    let repo = Repository::<Counter, _>::new(InMemoryEventStore::new())
        .with_retry(RetryPolicy::never())
        .with_cache(100);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    let done = repo.execute("hot", 1).await.expect("no conflict needed");
                    assert_eq!(done.attempts, 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(repo.load("hot").await.expect("load").state().total, 160);
}

#[tokio::test]
async fn cached_aggregate_sees_writes_from_elsewhere_through_a_conflict() {
    let store = InMemoryEventStore::new();
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    let other = Repository::<Counter, _>::new(store.clone());
    cached.execute("c", 1).await.expect("first");
    other
        .execute("c", 10)
        .await
        .expect("a write the cache does not know");
    let done = cached
        .execute("c", 100)
        .await
        .expect("retried after reload");
    assert_eq!(done.attempts, 2, "the stale cache costs one conflict");
    assert_eq!(done.version, Version::new(3));
    let again = cached
        .execute("c", 1000)
        .await
        .expect("cache is current again");
    assert_eq!(again.attempts, 1);
    assert_eq!(cached.load("c").await.expect("load").state().total, 1111);
}

#[tokio::test]
async fn rejection_writes_nothing_and_keeps_the_domain_error() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    let err = repo.execute("c", 0).await.expect_err("zero is rejected");
    assert!(matches!(err, CommandError::Rejected(Zero)), "{err}");
    assert!(err.rejection().is_some());
    assert!(store.is_empty());
}

#[tokio::test]
async fn exhausted_retries_surface_the_conflict() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone()).with_retry(RetryPolicy::never());
    let root = repo.load("c").await.expect("load");
    Repository::<Counter, _>::new(store.clone())
        .execute("c", 5)
        .await
        .expect("competing write");
    let mut stale = root;
    stale.apply_event(CounterEvent::Added { by: 1 });
    let err = repo
        .save::<Zero>(&mut stale, &CommandContext::new())
        .await
        .expect_err("stale save");
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test]
async fn events_carry_correlation_and_causation_from_the_cause() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute_with("a", 1, &CommandContext::new().with_actor("alice"))
        .await
        .expect("root command");
    let cause = store
        .read_stream(&repo.stream_id("a"), VersionRange::all())
        .await
        .expect("read")
        .remove(0);
    let correlation = cause
        .metadata
        .correlation_id
        .expect("a fresh correlation id");
    assert_eq!(cause.metadata.causation_id, None);
    assert_eq!(cause.metadata.actor.as_deref(), Some("alice"));

    repo.execute_with("b", 2, &CommandContext::caused_by(&cause))
        .await
        .expect("reaction");
    let effect = store
        .read_stream(&repo.stream_id("b"), VersionRange::all())
        .await
        .expect("read")
        .remove(0);
    assert_eq!(effect.metadata.correlation_id, Some(correlation));
    assert_eq!(
        effect.metadata.causation_id,
        Some(*cause.event_id.as_uuid())
    );
    let correlated = store
        .read_by_correlation(repo.tenant(), correlation)
        .await
        .expect("read");
    assert_eq!(correlated.len(), 2);
}

#[tokio::test]
async fn deterministic_ids_make_a_repeated_command_idempotent() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let namespace = Uuid::now_v7();
    let ctx = CommandContext::new().with_deterministic_ids(namespace);
    let first = repo.execute_with("c", 7, &ctx).await.expect("first");
    let repeat = repo
        .execute_with("c", 7, &ctx)
        .await
        .expect("repeat after a lost ack");
    assert_eq!(repeat.version, first.version, "nothing appended twice");
    assert_eq!(store.len(), 1);
    assert_eq!(repo.load("c").await.expect("load").state().total, 7);
}

#[tokio::test]
async fn snapshots_are_taken_by_policy_and_bad_ones_are_ignored() {
    let store = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = Repository::<Counter, _>::new(store.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(5));
    for _ in 0..12 {
        repo.execute("c", 1).await.expect("command");
    }
    let stream = repo.stream_id("c");
    let taken = snapshots
        .load(&stream, 1)
        .await
        .expect("load")
        .expect("snapshot");
    assert_eq!(taken.version, Version::new(10));

    // A corrupt snapshot at a newer version is ignored: the aggregate is rebuilt from events.
    snapshots
        .save(Snapshot::new(
            stream.clone(),
            Version::new(11),
            1,
            serde_json::json!("garbage"),
        ))
        .await
        .expect("save");
    let loaded = repo.load("c").await.expect("load despite corrupt snapshot");
    assert_eq!(
        (loaded.state().total, loaded.version()),
        (12, Version::new(12))
    );

    // A snapshot of another schema version is never used.
    let other_schema = InMemorySnapshotStore::new();
    other_schema
        .save(Snapshot::new(
            stream.clone(),
            Version::new(12),
            2,
            serde_json::json!({ "total": 999, "events": 12 }),
        ))
        .await
        .expect("save");
    let repo2 =
        Repository::<Counter, _>::new(store).with_snapshots(other_schema, SnapshotPolicy::Never);
    assert_eq!(repo2.load("c").await.expect("load").state().total, 12);
}

/// A snapshot ahead of its stream (a restored event database, snapshots of another database):
/// the first command conflicts with the stream's real version, and the repository replays the
/// stream instead of retrying against the snapshot's state until its retries run out.
#[tokio::test]
async fn a_snapshot_ahead_of_its_stream_is_dropped_at_the_first_conflict() {
    let store = InMemoryEventStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let plain = Repository::<Counter, _>::new(store.clone());
    for _ in 0..5 {
        plain.execute("c", 1).await.expect("command");
    }
    let stream = plain.stream_id("c");
    snapshots
        .save(Snapshot::new(
            stream.clone(),
            Version::new(10),
            1,
            serde_json::json!({ "total": 999, "events": 10 }),
        ))
        .await
        .expect("save");
    for cached in [false, true] {
        // Few retries: reloading only the tail would exhaust them.
        let mut repo = Repository::<Counter, _>::new(store.clone())
            .with_snapshots(snapshots.clone(), SnapshotPolicy::Never)
            .with_retry(RetryPolicy::default().with_max_attempts(2));
        if cached {
            repo = repo.with_cache(16);
        }
        let done = repo
            .execute("c", 1)
            .await
            .expect("command despite the snapshot");
        let expected = if cached { 7 } else { 6 };
        assert_eq!(done.version, Version::new(expected), "cached: {cached}");
        assert_eq!(done.attempts, 2, "one conflict, then the replayed state");
        let stored = store
            .read_stream(&stream, VersionRange::all())
            .await
            .expect("read");
        assert_eq!(stored.len() as u64, expected, "cached: {cached}");
        if cached {
            // The cache holds the replayed state, not the snapshot's.
            let again = repo.execute("c", 1).await.expect("command");
            assert_eq!((again.version, again.attempts), (Version::new(8), 1));
        }
    }
    let replayed = plain.load("c").await.expect("load");
    assert_eq!(replayed.state().total, 8);
}

#[tokio::test]
async fn undecodable_event_is_a_typed_error_naming_the_event() {
    let store = Arc::new(InMemoryEventStore::new());
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute("c", 1).await.expect("good event");
    let bad = NewEvent::new(
        "counter-added",
        1,
        serde_json::json!({ "by": "not a number" }),
    );
    let bad_id = bad.event_id;
    store
        .append(
            &repo.stream_id("c"),
            ExpectedVersion::Exact(Version::new(1)),
            vec![bad],
        )
        .await
        .expect("the store takes any JSON");
    let unknown = NewEvent::new("counter-reset", 1, serde_json::json!({}));
    store
        .append(
            &repo.stream_id("d"),
            ExpectedVersion::NoStream,
            vec![unknown],
        )
        .await
        .expect("append");

    let err = repo.load("c").await.expect_err("payload does not decode");
    let LoadError::Decode(e) = err else {
        panic!("expected a decode error, got {err}")
    };
    assert_eq!(e.event_id(), bad_id);
    assert_eq!(e.event_type(), "counter-added");
    assert_eq!(e.version(), Version::new(2));
    assert!(e.to_string().contains(&bad_id.to_string()), "{e}");

    let err = repo.execute("d", 1).await.expect_err("unknown type");
    assert!(
        matches!(&err, CommandError::Decode(e) if matches!(e.reason(), eventsource_core::DecodeError::UnknownType { event_type } if event_type == "counter-reset")),
        "{err}"
    );
    // Nothing was lost: both stored events are still there.
    assert_eq!(store.len(), 3);
}

/// Commits, then reports the connection lost: the caller cannot know the append landed.
#[derive(Clone, Default)]
struct LosesNextAck {
    inner: InMemoryEventStore,
    lose: Arc<std::sync::atomic::AtomicBool>,
}

impl EventStore for LosesNextAck {
    async fn append(
        &self,
        stream: &eventsource_core::StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<eventsource_core::Appended, eventsource_core::StoreError> {
        let appended = self.inner.append(stream, expected, events).await?;
        if self.lose.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(eventsource_core::StoreError::Unavailable("ack lost".into()));
        }
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &eventsource_core::StreamId,
        range: VersionRange,
    ) -> Result<Vec<eventsource_core::RecordedEvent>, eventsource_core::StoreError> {
        self.inner.read_stream(stream, range).await
    }

    async fn stream_version(
        &self,
        stream: &eventsource_core::StreamId,
    ) -> Result<Version, eventsource_core::StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: eventsource_core::LogPosition,
        limit: usize,
        filter: &eventsource_core::LogFilter,
    ) -> Result<Vec<eventsource_core::RecordedEvent>, eventsource_core::StoreError> {
        self.inner.read_all(after, limit, filter).await
    }

    async fn read_by_correlation(
        &self,
        tenant: &eventsource_core::TenantId,
        correlation_id: Uuid,
    ) -> Result<Vec<eventsource_core::RecordedEvent>, eventsource_core::StoreError> {
        self.inner.read_by_correlation(tenant, correlation_id).await
    }
}

#[tokio::test]
async fn a_lost_acknowledgement_is_retried_without_duplicating_through_the_cache() {
    let store = LosesNextAck::default();
    let repo = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    repo.execute("c", 1).await.expect("first");
    let ctx = CommandContext::new().with_deterministic_ids(Uuid::now_v7());
    store.lose.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = repo
        .execute_with("c", 10, &ctx)
        .await
        .expect_err("ack lost");
    assert!(
        matches!(&err, CommandError::Store(e) if e.is_retryable()),
        "{err}"
    );
    // The retry carries the same ids: the store answers with the earlier append.
    let retried = repo.execute_with("c", 10, &ctx).await.expect("retry");
    assert_eq!(retried.version, Version::new(2));
    assert_eq!(store.inner.len(), 2, "nothing was written twice");
    // The cache holds the state the store has, not a guess.
    let next = repo.execute("c", 100).await.expect("next");
    assert_eq!((next.version, next.attempts), (Version::new(3), 1));
    assert_eq!(repo.load("c").await.expect("load").state().total, 111);
}
