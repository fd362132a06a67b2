//! Group commit keeps its lanes' connections out of the pool between groups (ADR 0009): what
//! users rely on is that this never costs them an append, a connection or a clean shutdown.

mod support;

use std::time::{Duration, Instant};

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StreamId, Version, VersionRange};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

/// A pool of its own, its connections named `name` in `pg_stat_activity`.
async fn named_pool(name: &str, max: u32) -> Option<PgPool> {
    // Creates and migrates the shared database if needed.
    support::pool_with(1).await?.close().await;
    let server = support::server()?;
    Some(
        PgPoolOptions::new()
            .max_connections(max)
            .test_before_acquire(false)
            .connect_with(
                server
                    .database(&support::test_database())
                    .application_name(name),
            )
            .await
            .expect("connect"),
    )
}

/// Ends every server process of the connections named `name`; returns how many there were.
async fn terminate(admin: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = $1) AS t",
    )
    .bind(name)
    .fetch_one(admin)
    .await
    .expect("terminate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_gives_its_connections_back_and_lets_the_pool_close() {
    let name = format!("kept-{}", Uuid::now_v7().simple());
    let Some(pool) = named_pool(&name, 8).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("kept");
    // Concurrent appends, so both lanes run groups and keep a connection.
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let (store, tenant) = (store.clone(), tenant.clone());
            tokio::spawn(async move {
                let stream = StreamId::new(tenant, "account", format!("a-{i}"));
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![event(i)])
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("append");
    }
    // Idle, the store gives every connection back within a fraction of a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.num_idle() != pool.size() as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {} connections still out of the pool after 5 s idle",
            pool.size() as usize - pool.num_idle(),
            pool.size()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Right after an append (a connection kept again), closing the pool while the store is
    // still alive finishes: the store lets go of what it keeps.
    let stream = StreamId::new(tenant, "account", "last");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(99)])
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .expect("the pool closes while the store is alive");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_lost_between_groups_costs_no_append() {
    let name = format!("lost-{}", Uuid::now_v7().simple());
    let (Some(pool), Some(admin)) = (named_pool(&name, 4).await, support::pool().await) else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new(support::tenant("lost"), "account", "a");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("first append");
    // The one connection the pool opened is the one the store kept: end its server process,
    // as a restart or an idle-session timeout would.
    assert_eq!(terminate(&admin, &name).await, 1);
    // The next appends (one stream appended to again, others new, at once: a group) meet the
    // dead connection, run again alone on a fresh one, and lose nothing.
    let tasks: Vec<_> = (2..10u64)
        .map(|i| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                if i == 2 {
                    let expected = ExpectedVersion::Exact(Version::new(1));
                    return store.append(&stream, expected, vec![event(i)]).await;
                }
                let own = StreamId::new(stream.tenant().clone(), "account", format!("g-{i}"));
                store
                    .append(&own, ExpectedVersion::NoStream, vec![event(i)])
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("an append after the connection was lost");
    }
    let events = store
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, [1, 2], "each append stored once");
}
