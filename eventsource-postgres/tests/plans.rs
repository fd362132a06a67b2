//! The append statements, and the look-up of stored ids that every conflict runs, are planned
//! once per connection, then run on their generic plan: a statement that PostgreSQL re-plans on
//! every execution costs its planning time again and again (about 200 µs for a group of
//! appends, more than its execution; ADR 0011).

mod support;

use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, Version};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::Row as _;

/// What `pg_prepared_statements` says of one prepared statement on the events.
#[derive(Debug)]
struct Prepared {
    parameters: i32,
    generic_plans: i64,
    custom_plans: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_and_conflicts_run_on_generic_plans() {
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
    // Conflicts, one at a time: each looks up whether its ids are stored (an idempotent retry).
    let taken = StreamId::new(tenant.clone(), "plan", "0-0");
    for attempt in 0..8 {
        let outcome = store
            .append(
                &taken,
                ExpectedVersion::Exact(Version::new(5)),
                vec![NewEvent::new("Planned", 1, json!({ "attempt": attempt }))],
            )
            .await;
        assert!(
            matches!(outcome, Err(StoreError::Conflict { .. })),
            "{outcome:?}"
        );
    }
    // The kept connection goes back to the pool after 100 ms unused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut prepared = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.expect("a pool connection");
        let rows = sqlx::query(
            "SELECT cardinality(parameter_types) AS parameters, generic_plans, custom_plans
             FROM pg_prepared_statements WHERE statement LIKE '%events%'",
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
    // The one-tenant group statement is the one with 16 parameters, the stored ids' look-up
    // the one with 1.
    let runs = |parameters| -> i64 {
        prepared
            .iter()
            .filter(|p| p.parameters == parameters)
            .map(|p| p.generic_plans + p.custom_plans)
            .sum()
    };
    assert!(
        runs(16) >= 6 && runs(1) >= 6,
        "groups and conflicts ran past PostgreSQL's five trial plans: {prepared:?}"
    );
    for statement in &prepared {
        assert!(
            statement.custom_plans <= 5,
            "a statement kept being re-planned for its arguments: {prepared:?}"
        );
    }
}
