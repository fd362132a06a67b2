//! Cancelling a store operation at any await point leaves no pooled connection inside a
//! transaction. A connection returned to the pool inside a transaction would run the next
//! borrower's autocommit writes in it, never committed, and hold back the log's visibility
//! horizon for every reader (sqlx 0.9.0 did this when a `BEGIN` round trip was cancelled;
//! fixed in 0.9.1, the minimum this crate asks for).

mod support;

use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::{PgEventStore, begin_tenant};
use serde_json::json;
use sqlx::Row as _;
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_cancelled_at_any_point_leave_no_connection_inside_a_transaction() {
    // Creates and migrates the shared database if needed.
    let Some(shared) = support::pool_with(1).await else {
        return;
    };
    shared.close().await;
    let server = support::server().expect("a server");
    // One connection, so every attempt and every check reuses it.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.database(&support::test_database()))
        .await
        .expect("connect");
    let store = PgEventStore::new(pool.clone()).without_group_commit();
    let tenant = support::tenant("cancel");
    let stream = StreamId::new(tenant.clone(), "account", "a-1");

    let mut cancelled = 0;
    for attempt in 0..600_u64 {
        // Drop the operation after a number of polls that sweeps its round trips: one poll
        // sends the `BEGIN` (or the append) and returns before the reply.
        let polls = usize::try_from(attempt % 6).expect("small") + 1;
        let dropped = if attempt % 2 == 0 {
            poll_at_most(polls, async {
                let tx = begin_tenant(&pool, &tenant).await.expect("begin");
                tx.commit().await.expect("commit");
            })
            .await
        } else {
            poll_at_most(polls, async {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Noted", 1, json!({ "attempt": attempt }))],
                    )
                    .await
                    .expect("append");
            })
            .await
        };
        if dropped {
            cancelled += 1;
        }
        // Inside a transaction left open, `now()` is that transaction's start, not this
        // statement's (one simple-protocol message: in autocommit both are its receipt).
        let row = sqlx::raw_sql("SELECT now() <> statement_timestamp()")
            .fetch_one(&pool)
            .await
            .expect("check the connection");
        let stale: bool = row.get(0);
        assert!(
            !stale,
            "attempt {attempt}: a cancelled operation left its connection inside a transaction"
        );
    }
    assert!(cancelled > 100, "only {cancelled} attempts were cancelled");
}

/// Polls `operation` at most `polls` times, a millisecond apart (time for the server's reply);
/// `true` when it was dropped unfinished.
async fn poll_at_most(polls: usize, operation: impl Future<Output = ()>) -> bool {
    let mut operation = std::pin::pin!(operation);
    for _ in 0..polls {
        if futures::poll!(operation.as_mut()).is_ready() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
