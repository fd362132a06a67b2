//! Health check, what holds the log back, and the start-up guard against restored databases.

mod support;

use eventsource_core::{ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::{PgEventStore, PgStoreError, begin_tenant, diagnostics};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_answers() {
    let Some(pool) = support::pool().await else {
        return;
    };
    diagnostics::health_check(&pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_write_transaction_is_named_as_what_holds_the_log_back() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let tenant = support::tenant("blocker");
    let mut tx = begin_tenant(&pool, &tenant).await.unwrap();
    PgEventStore::append_in_tx(
        &mut tx,
        &StreamId::new(tenant.clone(), "log", "held"),
        ExpectedVersion::Any,
        vec![NewEvent::new("Numbered", 1, json!({ "n": 1 }))],
    )
    .await
    .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Other tests may run write transactions too, but none older than ours stays open long:
    // poll until ours is the oldest.
    let mut blocker = None;
    for _ in 0..200 {
        blocker = diagnostics::log_blocker(&pool).await.unwrap();
        if blocker.as_ref().is_some_and(|b| b.pid == pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let blocker = blocker.expect("an open write transaction is reported");
    assert_eq!(blocker.pid, pid);
    assert!(blocker.xact_start.is_some());
    tx.commit().await.unwrap();
    let after = diagnostics::log_blocker(&pool).await.unwrap();
    assert!(
        after.is_none_or(|b| b.pid != pid),
        "a committed transaction holds nothing back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_ahead_of_the_cluster_is_refused() {
    let Some(pool) = support::pool().await else {
        return;
    };
    diagnostics::check_transaction_ids(&pool)
        .await
        .expect("a log written by this cluster passes");

    // What a dump restored into a younger cluster looks like: an event whose transaction id
    // the cluster has not reached. Inserted in a transaction that is rolled back afterwards.
    let tenant = support::tenant("restored");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (transaction_id, stream_key, tenant_id, aggregate_type, aggregate_id, \
         version, event_id, event_type, schema_version, payload, metadata) \
         VALUES ('4000000000000'::xid8, 0, $1, 'log', 'restored', 1, gen_random_uuid(), \
         'Numbered', 1, '{}', '{}')",
    )
    .bind(tenant.as_str())
    .execute(&mut *tx)
    .await
    .unwrap();
    let err = diagnostics::check_transaction_ids(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PgStoreError::TransactionIdsAhead { stored, cluster }
            if stored == 4_000_000_000_000 && cluster < stored),
        "{err}"
    );
    tx.rollback().await.unwrap();
}
