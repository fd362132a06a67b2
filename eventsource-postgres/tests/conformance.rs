//! The core conformance suite against PostgreSQL, with and without group commit.
//!
//! The cases run in parallel on one database, each in a tenant of its own. Without
//! `DATABASE_URL` they print a notice and pass, unless `CI` is set, where they fail.

mod support;

use eventsource_postgres::{PgCheckpointStore, PgEventStore, PgSnapshotStore};

mod single {
    use super::*;

    eventsource_core::conformance_tests!(optional async async {
        support::pool()
            .await
            .map(|pool| PgEventStore::new(pool).without_group_commit())
    });
}

mod group_commit {
    use super::*;

    eventsource_core::conformance_tests!(optional async async {
        support::pool()
            .await
            .map(|pool| PgEventStore::new(pool).with_group_commit(2, 64))
    });
}

#[tokio::test]
async fn checkpoint_compare_and_set() {
    let Some(pool) = support::pool().await else {
        return;
    };
    eventsource_core::testing::conformance::checkpoint_compare_and_set(&PgCheckpointStore::new(
        pool,
    ))
    .await;
}

#[tokio::test]
async fn snapshots_are_monotonic() {
    let Some(pool) = support::pool().await else {
        return;
    };
    eventsource_core::testing::conformance::snapshots_are_monotonic(&PgSnapshotStore::new(pool))
        .await;
}
