//! The core conformance suite against PostgreSQL.

mod support;

use eventsource_postgres::{PgCheckpointStore, PgEventStore, PgSnapshotStore};

/// Runs the cases one at a time.
///
/// The PostgreSQL log shows an event once every transaction older than its own has ended (that
/// is what makes it gap-free). Several cases read the log right after appending and stop at the
/// first empty page; with the other cases writing in parallel, an unrelated transaction still
/// in flight hides the events just written and such a case fails spuriously. Run one at a time,
/// the log is visible as soon as the append returns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test per conformance case and store configuration (plain, and with group commit), each
/// with its own pool on the shared test database.
///
/// The core's `conformance_tests!` macro cannot skip a case when `DATABASE_URL` is unset, which
/// these tests must do outside CI; this lists the same cases.
macro_rules! pg_conformance {
    ($($case:ident),* $(,)?) => {
        mod single {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let _serial = ONE_AT_A_TIME.lock().await;
                    let Some(pool) = support::pool().await else { return };
                    eventsource_core::testing::conformance::$case(&PgEventStore::new(pool)).await;
                }
            )*
        }
        mod group_commit {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let _serial = ONE_AT_A_TIME.lock().await;
                    let Some(pool) = support::pool().await else { return };
                    let store = PgEventStore::new(pool).with_group_commit(2, 64);
                    eventsource_core::testing::conformance::$case(&store).await;
                }
            )*
        }
    };
}

pg_conformance!(
    append_assigns_versions_and_positions,
    expected_version_is_enforced,
    conflict_writes_nothing,
    reappending_the_same_ids_is_idempotent,
    reusing_an_id_elsewhere_is_rejected,
    empty_append_is_rejected,
    read_stream_honours_ranges,
    envelope_round_trips,
    read_all_pages_in_log_order,
    read_all_filters_by_date,
    read_by_correlation_is_tenant_scoped,
    tenants_are_isolated,
    concurrent_exact_appends_lose_nothing,
    concurrent_any_appends_lose_nothing,
    tailing_reader_sees_each_event_once,
);

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
