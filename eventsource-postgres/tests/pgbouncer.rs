//! The store through PgBouncer in transaction mode (`PGBOUNCER_URL`), configured as the README's
//! "Behind PgBouncer" section says: no statement cache, migrations through the direct URL.
//!
//! Without `PGBOUNCER_URL` the tests print a notice and pass, unless `CI` is set, where they
//! fail.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventsource_core::{
    CheckpointStore, EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, Snapshot,
    SnapshotStore, StreamId, VersionRange,
};
use eventsource_postgres::{PgCheckpointStore, PgEventStore, PgSnapshotStore};
use serde_json::json;

mod single {
    use super::*;

    eventsource_core::conformance_tests!(optional async async {
        support::bouncer_pool(16)
            .await
            .map(|pool| PgEventStore::new(pool).without_group_commit())
    });
}

mod group_commit {
    use super::*;

    eventsource_core::conformance_tests!(optional async async {
        support::bouncer_pool(16)
            .await
            .map(|pool| PgEventStore::new(pool).with_group_commit(2, 64))
    });
}

#[tokio::test]
async fn checkpoint_compare_and_set() {
    let Some(pool) = support::bouncer_pool(4).await else {
        return;
    };
    eventsource_core::testing::conformance::checkpoint_compare_and_set(&PgCheckpointStore::new(
        pool,
    ))
    .await;
}

#[tokio::test]
async fn snapshots_are_monotonic() {
    let Some(pool) = support::bouncer_pool(4).await else {
        return;
    };
    eventsource_core::testing::conformance::snapshots_are_monotonic(&PgSnapshotStore::new(pool))
        .await;
}

/// Concurrent clients, more than PgBouncer's server connections for the database, so it hands
/// each transaction whichever server connection is free.
const CLIENTS: usize = 48;
const ROUNDS: usize = 30;

/// The failure the store's handling of lone statements (`src/pooler.rs`) prevents: with no
/// statement cache, sqlx prepares a statement in one round trip and binds it in the next; outside
/// a transaction PgBouncer may run the two on different server connections, so a statement
/// fails ("unnamed prepared statement does not exist", a parameter count mismatch) or runs
/// another client's statement. If this test stops failing statements, the wrapping may no longer
/// be needed (or the pooler no longer runs in transaction mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lone_statements_without_a_transaction_break_behind_the_pooler() {
    let Some(pool) = support::bouncer_pool(u32::try_from(CLIENTS).unwrap()).await else {
        return;
    };
    let broken = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (pool, broken) = (pool.clone(), broken.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let n = i64::try_from(client * 1_000 + round).unwrap();
                // Two shapes with different parameters, so a swapped statement shows.
                let answer = if client % 2 == 0 {
                    sqlx::query_scalar::<_, i64>("SELECT $1::int8 + 1")
                        .bind(n)
                        .fetch_one(&pool)
                        .await
                } else {
                    sqlx::query_scalar::<_, i64>("SELECT $1::int8 + $2::int8")
                        .bind(n)
                        .bind(1_i64)
                        .fetch_one(&pool)
                        .await
                };
                if !matches!(answer, Ok(m) if m == n + 1) {
                    broken.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let broken = broken.load(Ordering::Relaxed);
    eprintln!("{broken} of {} lone statements failed", CLIENTS * ROUNDS);
    assert!(
        broken > 0,
        "no lone statement of {} failed through PgBouncer",
        CLIENTS * ROUNDS
    );
}

/// The same load through the store: every read and append is a lone statement, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_holds_under_the_load_that_breaks_lone_statements() {
    let Some(pool) = support::bouncer_pool(u32::try_from(CLIENTS).unwrap()).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let snapshots = PgSnapshotStore::new(pool.clone());
    let checkpoints = PgCheckpointStore::new(pool);
    let tenant = support::tenant("pgb-load");
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (store, snapshots, checkpoints) =
            (store.clone(), snapshots.clone(), checkpoints.clone());
        let stream = StreamId::new(tenant.clone(), "Counter", format!("c-{client}"));
        let name = format!("{tenant}-{client}");
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for round in 0..ROUNDS {
                let appended = store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Ticked", 1, json!({ "round": round }))],
                    )
                    .await
                    .unwrap();
                let events = store
                    .read_stream(&stream, VersionRange::all())
                    .await
                    .unwrap();
                assert_eq!(events.len(), round + 1);
                assert_eq!(
                    store.stream_version(&stream).await.unwrap(),
                    appended.version
                );
                let loaded = store
                    .read_stream_events(&stream, VersionRange::all())
                    .await
                    .unwrap();
                assert_eq!(loaded.len(), round + 1);
                snapshots
                    .save(Snapshot::new(
                        stream.clone(),
                        appended.version,
                        1,
                        json!({ "round": round }),
                    ))
                    .await
                    .unwrap();
                let snapshot = snapshots.load(&stream, 1).await.unwrap().unwrap();
                assert_eq!(snapshot.version, appended.version);
                checkpoints
                    .save(&name, last, appended.last_position)
                    .await
                    .unwrap();
                last = Some(appended.last_position);
                assert_eq!(checkpoints.load(&name).await.unwrap(), last);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let filter = LogFilter::tenant(tenant.clone());
    // The log shows an event once every older transaction on the server has ended: another
    // test's open transaction may hide the last appends for a moment.
    let expected = u64::try_from(CLIENTS * ROUNDS).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut count = 0;
    while count < expected && std::time::Instant::now() < deadline {
        count = store
            .count_after(LogPosition::START, &filter)
            .await
            .unwrap();
        if count < expected {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert_eq!(count, expected);
    let all = store
        .read_all(LogPosition::START, CLIENTS * ROUNDS, &filter)
        .await
        .unwrap();
    assert_eq!(all.len(), CLIENTS * ROUNDS);
}
