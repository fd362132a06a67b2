//! Parallel rebuilds (issue 16, `RebuildOptions::with_workers`): shards by stream fill the new
//! generation at once, each stream's events applied in version order (the projection checks
//! it), and the result equals a clean build; a parallel fill stopped half-way resumes shard by
//! shard, with the number of workers it began with, and nothing is applied twice.

mod ledger;
mod support;

use eventsource_core::RecordedEvent;
use eventsource_postgres::{PgProjection, PgRebuild, PgRebuildable, RebuildPhase};
use ledger::{Ledger, LedgerError, Setup, clean_build, setup};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// The ledger, plus `versions`: each stream's last version, moved only from the one before
/// (an event out of its stream's order fails).
struct Ordered(Ledger);

impl PgProjection for Ordered {
    type Error = LedgerError;

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), LedgerError> {
        self.0.apply(&mut *conn, event).await?;
        let version = i64::try_from(event.version.get()).unwrap();
        // Version 1 creates the stream's row; each later one moves it from the one before.
        let statement = if version == 1 {
            "INSERT INTO versions (stream, version) VALUES ($1, $2)"
        } else {
            "UPDATE versions SET version = $2 WHERE stream = $1 AND version = $2 - 1"
        };
        let moved = sqlx::query(statement)
            .bind(event.stream.to_string())
            .bind(version)
            .execute(conn)
            .await?
            .rows_affected();
        if moved == 1 {
            Ok(())
        } else {
            Err(LedgerError::Poison(format!(
                "{} version {version} out of order",
                event.stream
            )))
        }
    }
}

impl PgRebuildable for Ordered {
    fn tables(&self) -> &[&str] {
        &["ledger", "versions"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.0.create_tables(&mut *conn).await?;
        sqlx::query("CREATE TABLE versions (stream text PRIMARY KEY, version bigint NOT NULL)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Checkpoints left under the projection's name (shards and generations).
async fn checkpoints(t: &Setup) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM checkpoints WHERE starts_with(name, $1) ORDER BY name")
        .bind(format!("{}/", t.name))
        .fetch_all(&t.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_rebuild_equals_a_clean_build_in_stream_order() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 1_400, 20).await;
    let rebuild = PgRebuild::new(
        t.store.clone(),
        Ordered(Ledger::new(&t.name)),
        t.rebuild_options("r").with_workers(3).with_batch_size(100),
    );
    let mut progress = rebuild.progress();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            seen.push(progress.borrow_and_update().clone());
        }
        seen
    });
    let report = rebuild
        .run(CancellationToken::new())
        .await
        .unwrap()
        .expect("cut over");
    assert_eq!(report.processed, 1_400, "{report:?}");
    let seen = watcher.await.unwrap();
    assert!(
        seen.iter()
            .any(|p| p.phase == RebuildPhase::Filling && p.processed > 0 && p.processed < 1_400),
        "progress while the shards fill: {seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!((last.phase, last.processed), (RebuildPhase::Done, 1_400));
    assert_eq!(t.view().await, clean_build(&t.log().await));
    assert!(checkpoints(&t).await.is_empty(), "no shard checkpoint left");
    // Generation 2 too, with more workers than streams.
    t.append(1_400, 100, 20).await;
    PgRebuild::new(
        t.store.clone(),
        Ordered(Ledger::new(&t.name)),
        t.rebuild_options("r").with_workers(9).with_batch_size(100),
    )
    .run(CancellationToken::new())
    .await
    .unwrap()
    .expect("cut over");
    assert_eq!(t.view().await, clean_build(&t.log().await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_rebuild_stopped_half_way_resumes_its_shards() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(0, 1_400, 20).await;
    let stuck = Ledger::new(&t.name).stalling_after(450);
    let stalled = stuck.stalled.clone();
    let task = tokio::spawn(
        PgRebuild::new(
            t.store.clone(),
            Ordered(stuck),
            t.rebuild_options("r").with_workers(3).with_batch_size(100),
        )
        .run(CancellationToken::new()),
    );
    stalled.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let shards = checkpoints(&t).await;
    assert!(!shards.is_empty(), "shards committed batches");
    assert!(shards.iter().all(|s| s.ends_with("-of-3")), "{shards:?}");
    let generations = t.generations().await;
    assert_eq!(generations[0].1, "building");
    let partial = t.rows_in(&generations[0].2).await.len();
    assert!(partial > 0 && partial < 1_400, "{partial}");
    // Resumed with one worker: the three shards finish, nothing is applied twice.
    let report = PgRebuild::new(
        t.store.clone(),
        Ordered(Ledger::new(&t.name)),
        t.rebuild_options("r").with_batch_size(100),
    )
    .run(CancellationToken::new())
    .await
    .unwrap()
    .expect("cut over");
    assert_eq!(report.processed, 1_400 - partial as u64, "{report:?}");
    assert_eq!(t.view().await, clean_build(&t.log().await));
    assert!(checkpoints(&t).await.is_empty());
}
