//! `RedisEventWaiter::wait_for_event` over the relay's streams (issue 15, item 5): an answer
//! published before the wait starts is found from the command's position, one published
//! while waiting wakes the blocked read, and a timeout is a typed error.
#![allow(missing_docs)]

mod support;

use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore, LogPosition,
    NewEvent, StreamId, TenantId, WaitError,
};
use eventsource_redis::{Keys, RedisEventWaiter, RedisRelay, RelayOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn correlated(event_type: &str, correlation_id: Uuid) -> NewEvent {
    let mut event = NewEvent::new(event_type, 1, serde_json::json!({}));
    event.metadata.correlation_id = Some(correlation_id);
    event
}

async fn append(store: &InMemoryEventStore, id: &str, event: NewEvent) -> LogPosition {
    store
        .append(
            &StreamId::new(TenantId::default(), "request", id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .expect("append")
        .last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_published_before_or_during_the_wait_are_found_and_a_timeout_is_typed() {
    let Some(url) = support::redis_url() else {
        return;
    };
    let (_client, conn) = support::connect(&url).await;
    let (_, waiting_conn) = support::connect(&url).await;
    let keys = Keys::new(&support::prefix());
    let store = InMemoryEventStore::new();
    let relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "relay",
        RelayOptions::default(),
    )
    .with_router(eventsource_redis::PerTenant::new(keys.clone()));
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    let waiter = RedisEventWaiter::new(waiting_conn, keys.tenant_stream(&TenantId::default()))
        .with_block(Duration::from_secs(30));
    let is_reply = |e: &eventsource_core::RecordedEvent| e.event_type == "reply";

    // Published before the wait starts: found from the request's position.
    let first = Uuid::now_v7();
    let after = append(&store, "r-1", correlated("request", first)).await;
    append(&store, "r-1", correlated("reply", first)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay publishes both
    let reply = waiter
        .wait_for_event(after, first, is_reply, Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(reply.metadata.correlation_id, Some(first));

    // Published while the read blocks (for up to 30 s): it returns at once. Another
    // request's reply, published first, is passed over.
    let second = Uuid::now_v7();
    let after = append(&store, "r-2", correlated("request", second)).await;
    let responder = tokio::spawn({
        let store = store.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&store, "r-3", correlated("reply", Uuid::now_v7())).await;
            append(&store, "r-2", correlated("reply", second)).await;
        }
    });
    let started = Instant::now();
    let reply = waiter
        .wait_for_event(after, second, is_reply, Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(reply.metadata.correlation_id, Some(second));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    responder.await.expect("responder");

    // No reply: a typed timeout, after the timeout and not the 30 s block.
    let third = Uuid::now_v7();
    let after = append(&store, "r-4", correlated("request", third)).await;
    let started = Instant::now();
    let err = waiter
        .wait_for_event(after, third, is_reply, Duration::from_millis(300))
        .await
        .expect_err("times out");
    assert!(
        matches!(err, WaitError::Timeout { correlation_id, .. } if correlation_id == third),
        "{err}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    shutdown.cancel();
    relaying.await.expect("task").expect("relay");
}
