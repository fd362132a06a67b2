//! Guards of the generations (issue 16, ADR 0018): a generation's `search_path` never falls
//! back to `public`, a cutover never moves the live checkpoint backwards, and what was granted
//! on the readers' views survives a cutover (views replaced in place, or dropped and created
//! with their grants when a generation changed its columns), and what a `REPEATABLE READ`
//! snapshot from before a cutover sees after it (the documented caveat); a live batch in flight
//! across the first cutover (no generation to lock yet) goes on in the new generation; two
//! projections whose names make one schema prefix never share a generation's schema.

mod ledger;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, StreamId,
};
use eventsource_postgres::{
    PgCheckpointStore, PgEventStore, PgProjection, PgProjectionError, PgProjectionRunner,
    PgRebuild, PgRebuildable,
};
use ledger::{Hold, Ledger, Setup, clean_build, setup};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Creates `ledger` but writes to `forgotten_rows`, a table it never created (one exists in
/// `public`).
struct Forgetful {
    name: String,
}

impl PgProjection for Forgetful {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO forgotten_rows (projection, event_id) VALUES ($1, $2)")
            .bind(&self.name)
            .bind(event.event_id.as_uuid())
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl PgRebuildable for Forgetful {
    fn tables(&self) -> &[&str] {
        &["ledger"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        Ledger::new(&self.name).create_tables(conn).await
    }
}

async fn forgotten_rows(t: &Setup) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.forgotten_rows WHERE projection = $1")
        .bind(&t.name)
        .fetch_one(&t.pool)
        .await
        .unwrap()
}

async fn build(t: &Setup, ledger: Ledger) -> Option<LogPosition> {
    PgRebuild::new(t.store.clone(), ledger, t.rebuild_options("r"))
        .run(CancellationToken::new())
        .await
        .unwrap()
        .expect("cut over")
        .cutover_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_projection_forgot_is_an_error_never_one_in_public() {
    let Some(t) = setup().await else {
        return;
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS public.forgotten_rows (projection text NOT NULL, \
         event_id uuid NOT NULL)",
    )
    .execute(&t.pool)
    .await
    .unwrap();
    t.append(0, 10, 5).await;
    // In a rebuild: the fill fails on the first event.
    let err = PgRebuild::new(
        t.store.clone(),
        Forgetful {
            name: t.name.clone(),
        },
        t.rebuild_options("r"),
    )
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(matches!(err, PgProjectionError::Apply { .. }), "{err}");
    assert_eq!(forgotten_rows(&t).await, 0, "nothing written to public");
    // In the live runner on a generation: the same.
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 10, 5).await;
    build(&t, Ledger::new(&t.name)).await;
    t.append(10, 5, 5).await;
    let live = PgProjectionRunner::new(
        t.store.clone(),
        Forgetful {
            name: t.name.clone(),
        },
        t.live_options(),
    );
    let err = live.catch_up().await.unwrap_err();
    assert!(matches!(err, PgProjectionError::Apply { .. }), "{err}");
    assert_eq!(forgotten_rows(&t).await, 0, "nothing written to public");
    assert_eq!(t.view().await, clean_build(&t.log().await[..10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_never_moves_the_live_checkpoint_backwards() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 20, 5).await;
    let first = build(&t, Ledger::new(&t.name)).await;
    let generation_one = t.view().await;
    // The live checkpoint ahead of the tenant's log: at an event of another tenant, as a live
    // runner over every tenant would leave it.
    let other = StreamId::new(support::tenant("elsewhere"), "counter", "c");
    t.store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![NewEvent::new("Numbered", 1, json!({ "n": 0 }))],
        )
        .await
        .unwrap();
    let ahead = loop {
        let found = t
            .store
            .read_all(
                LogPosition::START,
                10,
                &LogFilter::tenant(other.tenant().clone()),
            )
            .await
            .unwrap();
        if let Some(e) = found.first() {
            break e.position;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let mut tx = t.pool.begin().await.unwrap();
    PgCheckpointStore::save_in_tx(&mut tx, &t.name, first, ahead)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let err = PgRebuild::new(
        t.store.clone(),
        Ledger::new(&t.name),
        t.rebuild_options("r"),
    )
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::CutoverBehind { live, cutover, .. }
            if *live == Some(ahead) && *cutover == first),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "rebuild of projection {} ends at {first:?}, before the live checkpoint {:?}: \
             not cut over",
            t.name,
            Some(ahead)
        )
    );
    let generations = t.generations().await;
    assert_eq!(generations[0].1, "serving");
    assert_eq!(generations[1].1, "building");
    assert_eq!(t.view().await, generation_one, "generation 1 keeps serving");
    let mut tx = t.pool.begin().await.unwrap();
    let live = PgCheckpointStore::load_in_tx(&mut tx, &t.name)
        .await
        .unwrap();
    assert_eq!(live, Some(ahead), "the live checkpoint did not move");
}

/// A role that may only read the views it is granted (created once, under a lock: roles are
/// the server's, shared by every test).
async fn reader_role(admin: &PgPool) {
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7245002)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventsource_reader') THEN
                 CREATE ROLE eventsource_reader NOLOGIN NOSUPERUSER NOBYPASSRLS;
             END IF;
         END $$",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// How many rows `eventsource_reader` reads through the view, or its error.
async fn read_as_reader(t: &Setup) -> Result<i64, sqlx::Error> {
    let mut tx = t.pool.begin().await?;
    sqlx::query("SET LOCAL ROLE eventsource_reader")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('search_path', quote_ident($1), true)")
        .bind(&t.readers)
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&mut *tx)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_granted_select_on_the_views_keeps_reading_after_cutovers() {
    let Some(t) = setup().await else {
        return;
    };
    reader_role(&t.pool).await;
    t.append(0, 12, 4).await;
    build(&t, Ledger::new(&t.name)).await;
    assert!(read_as_reader(&t).await.is_err(), "nothing granted yet");
    for grant in [
        "GRANT USAGE ON SCHEMA {} TO eventsource_reader",
        "GRANT SELECT ON {}.ledger TO eventsource_reader",
    ] {
        let grant = grant.replace("{}", &format!("\"{}\"", t.readers));
        sqlx::query(sqlx::AssertSqlSafe(grant))
            .execute(&t.pool)
            .await
            .unwrap();
    }
    assert_eq!(read_as_reader(&t).await.unwrap(), 12);
    // Generation 2, the same columns: the view is replaced in place.
    t.append(12, 4, 4).await;
    build(&t, Ledger::new(&t.name)).await;
    assert_eq!(read_as_reader(&t).await.unwrap(), 16);
    // Generation 3 changes a column's type: the view is dropped and created, grants and all.
    t.append(16, 4, 4).await;
    let mut wider = Ledger::new(&t.name);
    wider.create_sql = Some(
        "CREATE TABLE ledger (event_id uuid NOT NULL, transaction_id xid8 NOT NULL, \
         global_position bigint NOT NULL, n numeric NOT NULL)",
    );
    build(&t, wider).await;
    assert_eq!(read_as_reader(&t).await.unwrap(), 20);
    let generations = t.generations().await;
    assert_eq!(generations[2].1, "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_snapshot_from_before_a_cutover_sees_the_new_generation_partly_built() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 30, 5).await;
    build(&t, Ledger::new(&t.name)).await;
    // Generation 2 stuck after two committed batches of 5.
    let stuck = Ledger::new(&t.name).stalling_after(10);
    let stalled = stuck.stalled.clone();
    let task = tokio::spawn(
        PgRebuild::new(
            t.store.clone(),
            stuck,
            t.rebuild_options("r").with_batch_size(5),
        )
        .run(CancellationToken::new()),
    );
    stalled.notified().await;
    task.abort();
    let _ = task.await;
    // A REPEATABLE READ transaction takes its snapshot now, without touching the views.
    let mut snapshot = t.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM checkpoints")
        .execute(&mut *snapshot)
        .await
        .unwrap();
    build(&t, Ledger::new(&t.name)).await;
    // After the cutover it reads the view for the first time: generation 2, as of its snapshot.
    let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".ledger",
        t.readers
    )))
    .fetch_one(&mut *snapshot)
    .await
    .unwrap();
    snapshot.commit().await.unwrap();
    assert_eq!(seen, 10, "the documented caveat: partly built");
    assert_eq!(
        t.view().await.len(),
        30,
        "a new transaction sees it complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_batch_in_flight_across_the_first_cutover_goes_on_in_the_new_generation() {
    let Some(t) = setup().await else {
        return;
    };
    let t = Arc::new(t);
    t.append(0, 200, 20).await;
    // Before any generation the live runner writes where its connections' search path says:
    // a schema of this test's own.
    let before = format!("{}_before", t.readers);
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&before)
        .execute(&t.pool)
        .await
        .unwrap();
    let server = support::server()
        .unwrap()
        .database(&support::test_database());
    let live_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(server.options([("search_path", format!("{before}, public"))]))
        .await
        .unwrap();
    let mut conn = live_pool.acquire().await.unwrap();
    Ledger::new(&t.name).create_tables(&mut conn).await.unwrap();
    drop(conn);
    // Its first batch stops inside its transaction, after a write.
    let hold = Arc::new(Hold::default());
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(
        PgProjectionRunner::new(
            PgEventStore::new(live_pool),
            Ledger {
                hold: Some(hold.clone()),
                ..Ledger::new(&t.name)
            },
            t.live_options(),
        )
        .run(shutdown.clone()),
    );
    hold.entered.notified().await;
    let writing = CancellationToken::new();
    let writer = {
        let (t, writing) = (t.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !writing.is_cancelled() {
                t.append_unsettled(1_000_000 + n, 3, 3).await;
                n += 3;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The first rebuild cuts over while that batch is in flight: nothing locks it out.
    let first = PgRebuild::new(
        t.store.clone(),
        Ledger::new(&t.name),
        t.rebuild_options("r"),
    )
    .run(CancellationToken::new())
    .await
    .unwrap()
    .expect("cut over");
    assert_eq!(first.generation, 1);
    // The batch finds the checkpoint moved by the cutover, and goes on in generation 1.
    hold.open.add_permits(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.cancel();
    writer.await.unwrap();
    let log = t.settled(t.appended.load(Ordering::SeqCst)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.view().await.len() < log.len() && Instant::now() < deadline && !live.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !live.is_finished(),
        "the live runner stopped: {:?}",
        live.await
    );
    shutdown.cancel();
    live.await.unwrap().unwrap();
    assert_eq!(
        t.view().await,
        clean_build(&log),
        "generation 1 equals a clean build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_schema_prefix_is_taken_is_refused_and_changes_nothing() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 20, 5).await;
    build(&t, Ledger::new(&t.name)).await;
    let generation_one = t.view().await;
    // `rebuild-<id>` and `rebuild.<id>` both make the prefix `rebuild_<id>`.
    let other = t.name.replace('-', ".");
    let err = PgRebuild::new(t.store.clone(), Ledger::new(&other), t.rebuild_options("r"))
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    let prefix = t.name.replace('-', "_");
    assert!(
        matches!(&err, PgProjectionError::SchemaPrefixTaken { projection, prefix: p }
            if *projection == other && *p == prefix),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "schema prefix {prefix} of projection {other} is another projection's: give it a \
             prefix of its own"
        )
    );
    let others: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_generations WHERE projection = $1")
            .bind(&other)
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(others, 0, "nothing created for {other}");
    let generations = t.generations().await;
    assert_eq!(generations.len(), 1);
    assert_eq!(generations[0].1, "serving");
    assert_eq!(
        t.view().await,
        generation_one,
        "the first projection serves on"
    );
    // With a prefix (and views) of its own it builds.
    let readers = format!("{}_other", t.readers);
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&readers)
        .execute(&t.pool)
        .await
        .unwrap();
    PgRebuild::new(
        t.store.clone(),
        Ledger::new(&other),
        t.rebuild_options("r")
            .with_schema_prefix(format!("other_{}", &t.name["rebuild-".len()..]))
            .with_reader_schema(&readers),
    )
    .run(CancellationToken::new())
    .await
    .unwrap()
    .expect("cut over");
}
