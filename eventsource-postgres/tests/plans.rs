//! The append statements are planned once per connection, then run on their generic plan: a
//! statement that PostgreSQL re-plans on every execution costs an append its planning time
//! again and again (about 200 µs for a group of appends, more than its execution; ADR 0011).

mod support;

use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StreamId};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::Row as _;

/// What `pg_prepared_statements` says of one prepared statement that writes events.
#[derive(Debug)]
struct Prepared {
    parameters: i32,
    generic_plans: i64,
    custom_plans: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_run_on_a_generic_plan() {
    // Two connections: the one commit lane keeps one of them, and the test can then look at
    // both to find the lane's prepared statements.
    let Some(pool) = support::pool_with(2).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone()).with_group_commit(1, 128);
    let tenant = support::tenant("plans");
    // Rounds of four concurrent appends: the first runs alone and the other three queue behind
    // it, so the lane runs small groups (of two or three appends, the sizes that were re-planned
    // on every execution).
    for round in 0..20 {
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (store, stream) = (
                    store.clone(),
                    StreamId::new(tenant.clone(), "plan", format!("{round}-{i}")),
                );
                tokio::spawn(async move {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::NoStream,
                            vec![NewEvent::new("Planned", 1, json!({ "round": round }))],
                        )
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("append task").expect("append");
        }
    }
    // The kept connection goes back to the pool after 100 ms unused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut prepared = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.expect("a pool connection");
        let rows = sqlx::query(
            "SELECT cardinality(parameter_types) AS parameters, generic_plans, custom_plans
             FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO events%'",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("prepared statements");
        prepared.extend(rows.iter().map(|row| Prepared {
            parameters: row.get("parameters"),
            generic_plans: row.get("generic_plans"),
            custom_plans: row.get("custom_plans"),
        }));
        conns.push(conn); // Held, so the next acquire gets the other connection.
    }
    // The one-tenant group statement is the one with 16 parameters.
    let group_runs: i64 = prepared
        .iter()
        .filter(|p| p.parameters == 16)
        .map(|p| p.generic_plans + p.custom_plans)
        .sum();
    assert!(
        group_runs >= 6,
        "the rounds ran groups past PostgreSQL's five trial plans: {prepared:?}"
    );
    for statement in &prepared {
        assert!(
            statement.custom_plans <= 5,
            "a statement kept being re-planned for its arguments: {prepared:?}"
        );
    }
}
