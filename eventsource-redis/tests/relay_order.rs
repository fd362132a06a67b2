//! The relay refuses, rather than publishes, a log that gives a stream out of version order.
#![allow(missing_docs)]

mod support;

use eventsource_core::{
    Appended, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore, LogFilter,
    LogPosition, NewEvent, RecordedEvent, StoreError, StreamId, Version, VersionRange,
};
use eventsource_redis::{Keys, PerTenant, RedisRelay, RedisStoreError, RelayOptions};

/// A store whose log gives the second and third events it holds in swapped order (at the same
/// positions): a stream's version 3 before its version 2, as a store that broke the contract
/// (or `eventsource-postgres` before migration 0007) would.
#[derive(Clone, Default)]
struct Swapping(InMemoryEventStore);

impl EventStore for Swapping {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.0.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream(stream, range).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.0.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.0.read_all(after, limit, filter).await?;
        if after == LogPosition::START && events.len() >= 3 {
            // The events trade places in the log, not positions: as an inversion looks.
            let (one, two) = (events[1].position, events[2].position);
            events.swap(1, 2);
            events[1].position = one;
            events[2].position = two;
        }
        Ok(events)
    }

    async fn read_by_correlation(
        &self,
        tenant: &eventsource_core::TenantId,
        correlation_id: uuid::Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_by_correlation(tenant, correlation_id).await
    }
}

#[tokio::test]
async fn a_stream_out_of_version_order_stops_the_relay_before_anything_is_published() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (_client, mut conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let store = Swapping::default();
    let stream = support::stream("acme", "order", "o-1");
    support::append(&store.0, &stream, 3, "Happened").await;

    let mut relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "order-check",
        RelayOptions::default().with_batch_size(10),
    )
    .with_router(PerTenant::new(keys.clone()));
    let err = relay
        .publish_batch()
        .await
        .expect_err("an out-of-order log must be refused");
    match &err {
        RedisStoreError::OutOfOrder {
            stream: got,
            previous,
            version,
            ..
        } => {
            assert_eq!(got, &stream);
            assert_eq!((previous.get(), version.get()), (1, 3));
        }
        other => panic!("expected OutOfOrder, got {other}"),
    }
    assert!(!err.is_retryable(), "waiting cannot reorder a log");
    let published = support::entries(&mut conn, &keys.tenant_stream(stream.tenant())).await;
    assert!(
        published.is_empty(),
        "nothing of the refused batch is published: {published:?}"
    );

    // `run` stops with the same error instead of retrying it.
    let relay = RedisRelay::new(
        store,
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "order-check-run",
        RelayOptions::default().with_batch_size(10),
    )
    .with_router(PerTenant::new(keys.clone()));
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        relay.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the relay stops on an out-of-order log");
    assert!(
        matches!(outcome, Err(RedisStoreError::OutOfOrder { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_ordered_log_passes_the_check_across_batches() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (_client, mut conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let store = InMemoryEventStore::new();
    let a = support::stream("acme", "order", "a");
    let b = support::stream("acme", "order", "b");
    for _ in 0..5 {
        support::append(&store, &a, 2, "Happened").await;
        support::append(&store, &b, 1, "Happened").await;
    }
    let mut relay = RedisRelay::new(
        store,
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "order-pass",
        RelayOptions::default().with_batch_size(2),
    )
    .with_router(PerTenant::new(keys.clone()));
    assert_eq!(
        relay.catch_up().await.expect("an ordered log is published"),
        15
    );
    let published = support::entries(&mut conn, &keys.tenant_stream(a.tenant())).await;
    assert_eq!(published.len(), 15);
}

#[tokio::test]
async fn a_relay_told_to_publish_an_old_log_as_it_is_publishes_it() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (_client, mut conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let store = Swapping::default();
    let stream = support::stream("acme", "order", "o-1");
    support::append(&store.0, &stream, 3, "Happened").await;
    let mut relay = RedisRelay::new(
        store,
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "order-lenient",
        RelayOptions::default()
            .with_batch_size(10)
            .with_refuse_out_of_order(false),
    )
    .with_router(PerTenant::new(keys.clone()));
    assert_eq!(relay.catch_up().await.expect("published as it is"), 3);
    let versions: Vec<u64> = support::entries(&mut conn, &keys.tenant_stream(stream.tenant()))
        .await
        .iter()
        .map(|(_, e)| e.version.get())
        .collect();
    assert_eq!(versions, [1, 3, 2], "the log's order, inversion included");
}
