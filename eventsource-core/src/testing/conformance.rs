//! The event-store contract as reusable async tests.
//!
//! Every [`EventStore`] implementation runs the same cases against itself with
//! [`conformance_tests!`](crate::conformance_tests), which expands to one `#[tokio::test]` per
//! case. Each case works in a tenant of its own, so one store (one database) can serve all of
//! them, even concurrently. The cases panic with a message on the first violation.
//!
//! ```text
//! // In a backend crate's tests:
//! eventsource_core::conformance_tests!(async { my_backend::connect().await });
//! ```
//!
//! Every case panics on a violation, like any test; that is their purpose.
#![allow(clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, Utc};
use futures::TryStreamExt as _;
use serde_json::json;
use uuid::Uuid;

use crate::checkpoint::CheckpointStore;
use crate::envelope::{
    EventId, LogPosition, Metadata, NewEvent, RecordedEvent, StreamId, TenantId, Version,
};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{EventStore, ExpectedVersion, LogFilter, StoreError, VersionRange, read_log};

pub mod bus;
mod order;
mod saga;

pub use order::streams_stay_in_version_order_along_the_log;
pub use saga::{
    a_recorded_event_is_never_saved_twice, a_redelivered_event_from_another_stream_is_handled_once,
    a_state_of_another_schema_version_is_a_typed_error, deadlines_are_due_until_marked_fired,
    deduplication_is_per_event_not_a_high_water_mark, pruning_never_lets_a_duplicate_through,
    saga_instances_are_per_tenant, saga_state_round_trips_under_its_version,
};

/// Expands to one `#[tokio::test]` per conformance case for the store built by the expression.
///
/// - `conformance_tests!(expr)`: a store built synchronously;
/// - `conformance_tests!(async expr)`: `expr` is a future of the store;
/// - `conformance_tests!(optional async expr)`: `expr` is a future of `Option<store>`; `None`
///   skips the case (for example when a service URL is unset outside CI — the factory decides,
///   and should panic instead when `CI` is set).
///
/// The store type must be `EventStore + Clone + 'static`. The calling crate needs `tokio` with
/// the `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    (optional async $store:expr) => {
        $crate::conformance_tests!(@cases (async { $store.await }) ;
            append_assigns_versions_and_positions,
            expected_version_is_enforced,
            conflict_writes_nothing,
            reappending_the_same_ids_is_idempotent,
            reusing_an_id_elsewhere_is_rejected,
            empty_append_is_rejected,
            read_stream_honours_ranges,
            envelope_round_trips,
            read_all_pages_in_log_order,
            read_all_filters_by_date,
            count_after_counts_what_read_all_returns,
            read_by_correlation_is_tenant_scoped,
            tenants_are_isolated,
            concurrent_exact_appends_lose_nothing,
            concurrent_any_appends_lose_nothing,
            streams_stay_in_version_order_along_the_log,
            tailing_reader_sees_each_event_once,
        );
    };
    (async $store:expr) => {
        $crate::conformance_tests!(optional async async { ::core::option::Option::Some($store.await) });
    };
    ($store:expr) => {
        $crate::conformance_tests!(optional async async { ::core::option::Option::Some($store) });
    };
    (@cases $make:expr ; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let ::core::option::Option::Some(store) = $make.await {
                    $crate::testing::conformance::$case(&store).await;
                }
            }
        )*
    };
}

fn tenant() -> TenantId {
    TenantId::new(format!("conformance-{}", Uuid::now_v7().simple()))
}

fn stream(tenant: &TenantId, id: &str) -> StreamId {
    StreamId::new(tenant.clone(), "conformance", id)
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

fn events(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn numbers(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

/// Reads `filter`'s whole log once it holds at least `expected` events.
///
/// A gap-free log may show a committed event only once every older transaction has ended
/// (PostgreSQL does), so an event appended a moment ago can be hidden by someone else's
/// transaction still in flight. The contract is "every event, once, in order", not "at once".
async fn settled_log<S: EventStore>(
    store: &S,
    filter: LogFilter,
    expected: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log: Vec<RecordedEvent> = read_log(store, LogPosition::START, 100, filter.clone())
            .try_collect()
            .await
            .expect("reading the log");
        if log.len() >= expected || tokio::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn tenant_log<S: EventStore>(
    store: &S,
    tenant: &TenantId,
    expected: usize,
) -> Vec<RecordedEvent> {
    settled_log(store, LogFilter::tenant(tenant.clone()), expected).await
}

/// Appends to a new stream: versions start at 1, positions increase, `Appended` reports both.
pub async fn append_assigns_versions_and_positions<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    let first = store
        .append(&s, ExpectedVersion::NoStream, events(0..3))
        .await
        .expect("first append");
    assert_eq!(first.version, Version::new(3));
    assert!(first.first_position < first.last_position);
    let second = store
        .append(&s, ExpectedVersion::Exact(Version::new(3)), events(3..4))
        .await
        .expect("second append");
    assert_eq!(second.version, Version::new(4));
    assert!(second.first_position > first.last_position);
    assert_eq!(second.first_position, second.last_position);
    assert_eq!(
        store.stream_version(&s).await.expect("version"),
        Version::new(4)
    );
    assert_eq!(
        store
            .stream_version(&stream(&t, "none"))
            .await
            .expect("version"),
        Version::ZERO
    );
    let stored = store
        .read_stream(&s, VersionRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = stored.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(numbers(&stored), vec![0, 1, 2, 3]);
    assert_eq!(stored[0].position, first.first_position);
    assert_eq!(stored[2].position, first.last_position);
    assert_eq!(stored[3].position, second.last_position);
}

/// Each `ExpectedVersion` kind admits exactly the versions it promises; a conflict reports
/// the expectation and the actual version.
pub async fn expected_version_is_enforced<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    let conflict =
        |r: Result<_, StoreError>, want_expected: ExpectedVersion, want_actual: u64| match r {
            Err(StoreError::Conflict {
                stream,
                expected,
                actual,
            }) => {
                assert_eq!(stream, s);
                assert_eq!(expected, want_expected);
                assert_eq!(actual, Version::new(want_actual));
            }
            other => panic!("expected a conflict, got {other:?}"),
        };
    conflict(
        store
            .append(&s, ExpectedVersion::StreamExists, events(0..1))
            .await,
        ExpectedVersion::StreamExists,
        0,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(Version::new(1)), events(0..1))
            .await,
        ExpectedVersion::Exact(Version::new(1)),
        0,
    );
    store
        .append(&s, ExpectedVersion::Exact(Version::ZERO), events(0..1))
        .await
        .expect("Exact(0) on a new stream");
    conflict(
        store
            .append(&s, ExpectedVersion::NoStream, events(1..2))
            .await,
        ExpectedVersion::NoStream,
        1,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(Version::ZERO), events(1..2))
            .await,
        ExpectedVersion::Exact(Version::ZERO),
        1,
    );
    store
        .append(&s, ExpectedVersion::StreamExists, events(1..2))
        .await
        .expect("StreamExists");
    store
        .append(&s, ExpectedVersion::Any, events(2..3))
        .await
        .expect("Any");
    let any_new = stream(&t, "b");
    let appended = store
        .append(&any_new, ExpectedVersion::Any, events(0..2))
        .await
        .expect("Any on a new stream");
    assert_eq!(appended.version, Version::new(2));
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(Version::new(2)), events(3..4))
            .await,
        ExpectedVersion::Exact(Version::new(2)),
        3,
    );
    assert!(
        store
            .append(&s, ExpectedVersion::Exact(Version::new(3)), events(3..4))
            .await
            .is_ok()
    );
}

/// A conflicting append leaves no trace in the stream or the log.
pub async fn conflict_writes_nothing<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..2))
        .await
        .expect("append");
    let err = store
        .append(
            &s,
            ExpectedVersion::Exact(Version::new(1)),
            events(100..105),
        )
        .await
        .expect_err("stale expectation");
    assert!(err.is_conflict() && err.is_retryable(), "{err}");
    let stored = store
        .read_stream(&s, VersionRange::all())
        .await
        .expect("read");
    assert_eq!(numbers(&stored), vec![0, 1]);
    assert_eq!(numbers(&tenant_log(store, &t, 2).await), vec![0, 1]);
}

/// Re-appending a batch whose ids are stored returns the original outcome without duplicating,
/// whatever the expectation.
pub async fn reappending_the_same_ids_is_idempotent<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    let batch = events(0..3);
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("first");
    let again = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("same ids, same expectation");
    assert_eq!(again, first);
    let later = store
        .append(&s, ExpectedVersion::Exact(Version::new(3)), events(3..4))
        .await
        .expect("next");
    let replay = store
        .append(&s, ExpectedVersion::Any, batch.clone())
        .await
        .expect("same ids after the stream moved on");
    assert_eq!(replay, first);
    let replay = store
        .append(&s, ExpectedVersion::StreamExists, batch)
        .await
        .expect("same ids, the stream exists");
    assert_eq!(replay, first);
    assert_eq!(later.version, Version::new(4));
    assert_eq!(
        store.stream_version(&s).await.expect("version"),
        Version::new(4),
        "a replay moves no version"
    );
    assert_eq!(numbers(&tenant_log(store, &t, 4).await), vec![0, 1, 2, 3]);
}

/// An id stored elsewhere (another stream, or only part of the batch) is rejected and nothing
/// is written.
pub async fn reusing_an_id_elsewhere_is_rejected<S: EventStore>(store: &S) {
    let t = tenant();
    let a = stream(&t, "a");
    let b = stream(&t, "b");
    let batch = events(0..2);
    store
        .append(&a, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    let err = store
        .append(&b, ExpectedVersion::Any, batch.clone())
        .await
        .expect_err("same ids in another stream");
    assert!(
        matches!(err, StoreError::DuplicateEventId { event_id } if event_id == batch[0].event_id),
        "{err}"
    );
    let mixed = vec![event(7), batch[1].clone()];
    let err = store
        .append(&a, ExpectedVersion::Any, mixed)
        .await
        .expect_err("one new id, one stored id");
    assert!(matches!(err, StoreError::DuplicateEventId { .. }), "{err}");
    let twice = event(8);
    let err = store
        .append(&b, ExpectedVersion::Any, vec![twice.clone(), twice])
        .await
        .expect_err("the same id twice in one batch");
    assert!(matches!(err, StoreError::DuplicateEventId { .. }), "{err}");
    assert_eq!(numbers(&tenant_log(store, &t, 2).await), vec![0, 1]);
    assert_eq!(
        store.stream_version(&b).await.expect("version"),
        Version::ZERO
    );
}

/// An append without events is an error, not a silent no-op.
pub async fn empty_append_is_rejected<S: EventStore>(store: &S) {
    let s = stream(&tenant(), "a");
    let err = store
        .append(&s, ExpectedVersion::Any, Vec::new())
        .await
        .expect_err("empty append");
    assert!(matches!(err, StoreError::EmptyAppend), "{err}");
}

/// `read_stream` returns exactly the versions in the range.
pub async fn read_stream_honours_ranges<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    store
        .append(&s, ExpectedVersion::NoStream, events(0..10))
        .await
        .expect("append");
    let range = |from, to| VersionRange::between(Version::new(from), Version::new(to));
    let read = |r| store.read_stream(&s, r);
    assert_eq!(
        numbers(&read(range(3, 5)).await.expect("read")),
        vec![2, 3, 4]
    );
    assert_eq!(
        numbers(
            &read(VersionRange::from(Version::new(9)))
                .await
                .expect("read")
        ),
        vec![8, 9]
    );
    assert!(
        read(VersionRange::from(Version::new(11)))
            .await
            .expect("read")
            .is_empty()
    );
    assert!(read(range(5, 4)).await.expect("read").is_empty());
    assert!(
        store
            .read_stream(&stream(&t, "missing"), VersionRange::all())
            .await
            .expect("read")
            .is_empty()
    );
}

/// Every envelope field written comes back unchanged.
pub async fn envelope_round_trips<S: EventStore>(store: &S) {
    let t = tenant();
    let s = stream(&t, "a");
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_causation_id(causation)
        .with_actor("alice")
        .with_source("api")
        .with_trace_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with_extra("ip", json!("127.0.0.1"));
    let id = EventId::new();
    let payload =
        json!({ "text": "ünïcødé \u{1F600}", "nested": { "list": [1, 2.5, null, true] } });
    let before = Utc::now() - Duration::seconds(5);
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("thing-happened", 3, payload.clone())
                    .with_event_id(id)
                    .with_metadata(metadata.clone()),
            ],
        )
        .await
        .expect("append");
    let stored = store
        .read_stream(&s, VersionRange::all())
        .await
        .expect("read");
    let e = &stored[0];
    assert_eq!(e.event_id, id);
    assert_eq!(e.stream, s);
    assert_eq!(e.tenant(), &t);
    assert_eq!(e.version, Version::new(1));
    assert_eq!(e.event_type, "thing-happened");
    assert_eq!(e.schema_version, 3);
    assert_eq!(e.payload, payload);
    assert_eq!(e.metadata, metadata);
    assert!(e.recorded_at > before && e.recorded_at < Utc::now() + Duration::seconds(5));
    let logged = tenant_log(store, &t, 1).await;
    assert_eq!(logged, stored);
}

/// The global log pages in strictly increasing positions, each event once, filtered by tenant.
pub async fn read_all_pages_in_log_order<S: EventStore>(store: &S) {
    let t = tenant();
    let other = tenant();
    for i in 0..5 {
        store
            .append(
                &stream(&t, &format!("s{}", i % 2)),
                ExpectedVersion::Any,
                events(i * 3..i * 3 + 3),
            )
            .await
            .expect("append");
        store
            .append(
                &stream(&other, "x"),
                ExpectedVersion::Any,
                events(1000..1001),
            )
            .await
            .expect("append other tenant");
    }
    let filter = LogFilter::tenant(t.clone());
    tenant_log(store, &t, 15).await;
    tenant_log(store, &other, 5).await;
    let mut after = LogPosition::START;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, 4, &filter).await.expect("page");
        assert!(page.len() <= 4);
        for e in &page {
            assert!(e.position > after, "positions must increase");
            assert_eq!(e.tenant(), &t, "the filter keeps other tenants out");
            after = e.position;
        }
        seen.extend(page.iter().cloned());
        if page.len() < 4 {
            break;
        }
    }
    assert_eq!(numbers(&seen), (0..15).collect::<Vec<_>>());
    let all_tenants: Vec<RecordedEvent> =
        read_log(store, LogPosition::START, 1000, LogFilter::all())
            .try_collect()
            .await
            .expect("unfiltered read");
    let ours = all_tenants
        .iter()
        .filter(|e| e.tenant() == &t || e.tenant() == &other)
        .count();
    assert_eq!(ours, 20, "an unfiltered read sees every tenant");
    let last = seen.last().map(|e| e.position).expect("events");
    assert!(
        store
            .read_all(last, 10, &filter)
            .await
            .expect("read")
            .is_empty()
    );
}

/// `count_after` counts what `read_all` with the same position and filter returns.
pub async fn count_after_counts_what_read_all_returns<S: EventStore>(store: &S) {
    let t = tenant();
    store
        .append(&stream(&t, "a"), ExpectedVersion::Any, events(0..3))
        .await
        .expect("append");
    store
        .append(&stream(&t, "b"), ExpectedVersion::Any, events(3..5))
        .await
        .expect("append");
    let filter = LogFilter::tenant(t.clone());
    let log = tenant_log(store, &t, 5).await;
    let count =
        |after, filter| async move { store.count_after(after, &filter).await.expect("count") };
    assert_eq!(count(LogPosition::START, filter.clone()).await, 5);
    assert_eq!(count(log[1].position, filter.clone()).await, 3);
    assert_eq!(count(log[4].position, filter.clone()).await, 0);
    let future = filter.with_since(Utc::now() + Duration::hours(1));
    assert_eq!(count(LogPosition::START, future).await, 0);
    let other = LogFilter::tenant(tenant());
    assert_eq!(count(LogPosition::START, other).await, 0);
}

/// `LogFilter::with_since` keeps only events recorded at or after the instant.
pub async fn read_all_filters_by_date<S: EventStore>(store: &S) {
    let t = tenant();
    store
        .append(&stream(&t, "a"), ExpectedVersion::Any, events(0..2))
        .await
        .expect("append");
    let future = LogFilter::tenant(t.clone()).with_since(Utc::now() + Duration::hours(1));
    assert!(
        store
            .read_all(LogPosition::START, 10, &future)
            .await
            .expect("read")
            .is_empty()
    );
    let past = LogFilter::tenant(t.clone()).with_since(Utc::now() - Duration::hours(1));
    assert_eq!(settled_log(store, past, 2).await.len(), 2);
}

/// Correlated events are found across streams, in log order, only within the tenant.
pub async fn read_by_correlation_is_tenant_scoped<S: EventStore>(store: &S) {
    let t = tenant();
    let other = tenant();
    let correlation = Uuid::now_v7();
    let tagged = |n| event(n).with_metadata(Metadata::new().with_correlation_id(correlation));
    store
        .append(
            &stream(&t, "a"),
            ExpectedVersion::Any,
            vec![tagged(1), event(2)],
        )
        .await
        .expect("append");
    store
        .append(&stream(&t, "b"), ExpectedVersion::Any, vec![tagged(3)])
        .await
        .expect("append");
    store
        .append(&stream(&other, "a"), ExpectedVersion::Any, vec![tagged(4)])
        .await
        .expect("append");
    let found = store
        .read_by_correlation(&t, correlation)
        .await
        .expect("read");
    assert_eq!(numbers(&found), vec![1, 3]);
    assert!(found.windows(2).all(|w| w[0].position < w[1].position));
}

/// The same aggregate id in two tenants is two streams.
pub async fn tenants_are_isolated<S: EventStore>(store: &S) {
    let (a, b) = (tenant(), tenant());
    store
        .append(&stream(&a, "same"), ExpectedVersion::NoStream, events(0..2))
        .await
        .expect("tenant a");
    store
        .append(
            &stream(&b, "same"),
            ExpectedVersion::NoStream,
            events(10..11),
        )
        .await
        .expect("tenant b: its stream is new");
    let read_b = store
        .read_stream(&stream(&b, "same"), VersionRange::all())
        .await
        .expect("read");
    assert_eq!(numbers(&read_b), vec![10]);
    assert_eq!(
        store
            .stream_version(&stream(&a, "same"))
            .await
            .expect("version"),
        Version::new(2)
    );
    assert_eq!(numbers(&tenant_log(store, &b, 1).await), vec![10]);
}

/// Many tasks append to one stream with `Exact`, retrying on conflict: every event lands once
/// and versions are dense.
pub async fn concurrent_exact_appends_lose_nothing<S: EventStore + Clone + 'static>(store: &S) {
    let t = tenant();
    let s = stream(&t, "hot");
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for i in 0..5u64 {
                    let e = event(task * 100 + i);
                    loop {
                        let v = store.stream_version(&s).await.expect("version");
                        match store
                            .append(&s, ExpectedVersion::Exact(v), vec![e.clone()])
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { actual, .. }) => {
                                assert!(actual > v, "a conflict means the stream moved on");
                                conflicts += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(other) => panic!("unexpected error: {other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_dense(store, &s, 80).await;
}

/// Many tasks append to one stream with `Any`: nothing lost or duplicated, versions dense.
pub async fn concurrent_any_appends_lose_nothing<S: EventStore + Clone + 'static>(store: &S) {
    let t = tenant();
    let s = stream(&t, "hot");
    let tasks: Vec<_> = (0..20u64)
        .map(|task| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move {
                for i in 0..5u64 {
                    store
                        .append(&s, ExpectedVersion::Any, vec![event(task * 100 + i)])
                        .await
                        .expect("Any never conflicts");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_dense(store, &s, 100).await;
}

async fn assert_dense<S: EventStore>(store: &S, s: &StreamId, count: u64) {
    let stored = store
        .read_stream(s, VersionRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = stored.iter().map(|e| e.version.get()).collect();
    assert_eq!(
        versions,
        (1..=count).collect::<Vec<_>>(),
        "versions are dense"
    );
    let distinct: HashSet<u64> = numbers(&stored).into_iter().collect();
    assert_eq!(distinct.len() as u64, count, "no event lost or duplicated");
    // Per writer, events keep their order.
    let mut by_task: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for n in numbers(&stored) {
        by_task.entry(n / 100).or_default().push(n % 100);
    }
    for seq in by_task.values() {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "a writer's events stay in order"
        );
    }
    assert_eq!(
        store.stream_version(s).await.expect("version"),
        Version::new(count)
    );
}

/// A reader tailing the log while writers append sees every event exactly once, in strictly
/// increasing position order.
pub async fn tailing_reader_sees_each_event_once<S: EventStore + Clone + 'static>(store: &S) {
    let t = tenant();
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                for i in 0..10u64 {
                    let n = w * 100 + i;
                    store
                        .append(
                            &stream(&t, &format!("w{w}")),
                            ExpectedVersion::Any,
                            events(n..n + 1),
                        )
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let reader = {
        let (store, t, done) = (store.clone(), t.clone(), done.clone());
        tokio::spawn(async move {
            let filter = LogFilter::tenant(t);
            let mut after = LogPosition::START;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_mins(1);
            loop {
                let finished = done.load(Ordering::SeqCst);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the reader saw {} of 80 events within a minute",
                    seen.len()
                );
                let page = store.read_all(after, 7, &filter).await.expect("read");
                for e in &page {
                    assert!(e.position > after, "strictly increasing");
                    after = e.position;
                    seen.push(e.payload["n"].as_u64().unwrap_or(u64::MAX));
                }
                if page.is_empty() {
                    // Writers done and all their events seen: one more empty read proves
                    // nothing extra follows. Events can lag behind commit (see
                    // `settled_log`), so "writers done" alone is not the end.
                    if finished && seen.len() >= 80 {
                        return seen;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 80, "every event seen exactly once");
    assert_eq!(distinct.len(), 80);
}

/// Checkpoints move only from the expected value; a stale writer gets a conflict.
pub async fn checkpoint_compare_and_set<C: CheckpointStore>(store: &C) {
    let name = format!("conformance-{}", Uuid::now_v7().simple());
    assert_eq!(store.load(&name).await.expect("load"), None);
    let one = LogPosition::new(5, 10);
    let two = LogPosition::new(6, 11);
    store.save(&name, None, one).await.expect("first save");
    assert_eq!(store.load(&name).await.expect("load"), Some(one));
    let err = store
        .save(&name, None, two)
        .await
        .expect_err("stale expectation");
    assert!(
        matches!(err, StoreError::CheckpointConflict { actual: Some(a), .. } if a == one),
        "{err}"
    );
    store
        .save(&name, Some(one), two)
        .await
        .expect("second save");
    assert_eq!(store.load(&name).await.expect("load"), Some(two));
}

/// Snapshots are keyed by stream and schema version; an older one never replaces a newer one.
pub async fn snapshots_are_monotonic<P: SnapshotStore>(store: &P) {
    let s = stream(&tenant(), "snap");
    assert_eq!(store.load(&s, 1).await.expect("load"), None);
    store
        .save(Snapshot::new(
            s.clone(),
            Version::new(10),
            1,
            json!({ "at": 10 }),
        ))
        .await
        .expect("save");
    store
        .save(Snapshot::new(
            s.clone(),
            Version::new(5),
            1,
            json!({ "at": 5 }),
        ))
        .await
        .expect("an older snapshot is accepted and ignored");
    let loaded = store.load(&s, 1).await.expect("load").expect("snapshot");
    assert_eq!(
        (loaded.version, loaded.state),
        (Version::new(10), json!({ "at": 10 }))
    );
    assert_eq!(
        store.load(&s, 2).await.expect("load"),
        None,
        "other schema versions are separate"
    );
    store
        .save(Snapshot::new(
            s.clone(),
            Version::new(20),
            1,
            json!({ "at": 20 }),
        ))
        .await
        .expect("save");
    let loaded = store.load(&s, 1).await.expect("load").expect("snapshot");
    assert_eq!(loaded.version, Version::new(20));
}
