//! `EventWaiter::wait_for_event` over the PostgreSQL log (issue 15, item 5): an answer
//! appended before the wait starts is found, a local append wakes the waiter before its poll,
//! another process's append is found by polling, and a timeout is a typed error.

mod support;

use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, EventWaiter, ExpectedVersion, NewEvent, RecordedEvent, StreamId, TenantId,
    WaitError,
};
use eventsource_postgres::PgEventStore;
use uuid::Uuid;

fn correlated(event_type: &str, correlation_id: Uuid) -> NewEvent {
    let mut event = NewEvent::new(event_type, 1, serde_json::json!({}));
    event.metadata.correlation_id = Some(correlation_id);
    event
}

async fn append(store: &PgEventStore, tenant: &TenantId, id: &str, event: NewEvent) {
    store
        .append(
            &StreamId::new(tenant.clone(), "request", id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .expect("append");
}

fn is_reply(event: &RecordedEvent) -> bool {
    event.event_type == "reply"
}

/// Request / response 50 times, with the responder answering as soon as the request is
/// appended, racing the waiter, which starts only after the request returned: every reply is
/// found, none is taken for another request's, and the request itself does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_missed_between_the_request_and_the_wait() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("wait-race");
    let store = PgEventStore::new(pool.clone());
    let waiter = EventWaiter::new(store.clone())
        .for_tenant(tenant.clone())
        .with_poll(Duration::from_secs(30));
    let started = Instant::now();
    for i in 0..50 {
        let request = Uuid::now_v7();
        append(
            &store,
            &tenant,
            &format!("r-{i}"),
            correlated("request", request),
        )
        .await;
        let responder = tokio::spawn({
            let (store, tenant) = (store.clone(), tenant.clone());
            async move {
                append(
                    &store,
                    &tenant,
                    &format!("r-{i}"),
                    correlated("reply", request),
                )
                .await;
            }
        });
        if i % 2 == 0 {
            responder.await.expect("responder"); // the reply is in before the wait starts
            let reply = waiter
                .wait_for_event(request, is_reply, Duration::from_secs(5))
                .await
                .expect("reply");
            assert_eq!(reply.metadata.correlation_id, Some(request));
        } else {
            let reply = waiter
                .wait_for_event(request, is_reply, Duration::from_secs(5))
                .await
                .expect("reply");
            assert_eq!(reply.metadata.correlation_id, Some(request));
            responder.await.expect("responder");
        }
    }
    // With a 30 s poll, only the wake-up (or the first look) can have found the replies.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// The waiter polls every 30 s; an append through the same store wakes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_append_wakes_the_waiter_before_its_poll() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("wait-wake");
    let store = PgEventStore::new(pool.clone());
    let request = Uuid::now_v7();
    let waiting = tokio::spawn({
        let waiter = EventWaiter::new(store.clone())
            .for_tenant(tenant.clone())
            .with_poll(Duration::from_secs(30));
        async move {
            let started = Instant::now();
            let reply = waiter
                .wait_for_event(request, is_reply, Duration::from_secs(10))
                .await;
            (reply, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the waiter looked and sleeps
    append(&store, &tenant, "r-1", correlated("reply", request)).await;
    let (reply, waited) = waiting.await.expect("task");
    assert_eq!(reply.expect("reply").event_type, "reply");
    assert!(
        waited < Duration::from_secs(5),
        "woken, not polled: {waited:?}"
    );
}

/// An append by another process (here: another store on another pool, which does not wake
/// this one) is found by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_append_is_found_by_polling() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let Some(other_pool) = support::pool_with(2).await else {
        return;
    };
    let tenant = support::tenant("wait-poll");
    let request = Uuid::now_v7();
    let waiter = EventWaiter::new(PgEventStore::new(pool.clone()))
        .for_tenant(tenant.clone())
        .with_poll(Duration::from_millis(50));
    let other = PgEventStore::new(other_pool.clone());
    let responder = tokio::spawn({
        let tenant = tenant.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&other, &tenant, "r-1", correlated("reply", request)).await;
        }
    });
    let reply = waiter
        .wait_for_event(request, is_reply, Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(reply.metadata.correlation_id, Some(request));
    responder.await.expect("responder");
    other_pool.close().await;
}

/// Nothing matches: after the timeout, a typed error naming the correlation id. Events of
/// the same correlation that do not match the filter, or of another tenant, do not count.
#[tokio::test]
async fn a_timeout_is_a_typed_error() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let (tenant, other_tenant) = (
        support::tenant("wait-timeout"),
        support::tenant("wait-other"),
    );
    let store = PgEventStore::new(pool.clone());
    let request = Uuid::now_v7();
    append(&store, &tenant, "r-1", correlated("request", request)).await;
    append(&store, &other_tenant, "r-1", correlated("reply", request)).await;
    let waiter = EventWaiter::new(store)
        .for_tenant(tenant)
        .with_poll(Duration::from_millis(50));
    let started = Instant::now();
    let err = waiter
        .wait_for_event(request, is_reply, Duration::from_millis(300))
        .await
        .expect_err("times out");
    assert!(
        matches!(err, WaitError::Timeout { correlation_id, timeout }
            if correlation_id == request && timeout == Duration::from_millis(300)),
        "{err}"
    );
    assert!(err.is_timeout());
    assert!(started.elapsed() >= Duration::from_millis(300));
}
