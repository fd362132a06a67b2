//! A PostgreSQL projection runner as a process of its own, for `tests/pg_projection_crash.rs`
//! to kill with SIGKILL or stop with SIGSTOP.
//!
//! Runs [`CrashModel`] over one tenant's log with [`PgProjectionRunner::run`] until killed.
//! Configured by environment: `DATABASE_URL`, `PROJ_NAME` (the projection), `PROJ_TENANT`,
//! `PROJ_INSTANCE` (its lease holder id), `PROJ_BATCH` (events per batch) and `PROJ_TTL_MS`
//! (the lease's time to live). Rows it writes are marked `<instance>/<pid>`. It prints `ready`
//! once connected; if the runner stops it prints `stopped: <error>` and exits with 3 when the
//! lease was lost, 1 otherwise.
//!
//! With `PROJ_MODE=rebuild` it runs a [`PgRebuild`] of [`LedgerModel`] instead (views in the
//! schema `PROJ_READERS`), prints `done` after the cutover and exits.

use std::time::Duration;

use eventsource_core::{LogFilter, TenantId};
use eventsource_postgres::{
    PgEventStore, PgProjectionError, PgProjectionRunner, PgRebuild, ProjectionOptions,
    RebuildOptions,
};
use eventsource_tests::child::{say, var};
use eventsource_tests::projection_model::{CrashModel, LedgerModel};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(&var("DATABASE_URL")?)
        .await?;
    let instance = var("PROJ_INSTANCE")?;
    if std::env::var("PROJ_MODE").is_ok_and(|m| m == "rebuild") {
        let options = RebuildOptions::default()
            .with_batch_size(var("PROJ_BATCH")?.parse()?)
            .with_cutover_lag(20)
            .with_lease_ttl(Duration::from_millis(var("PROJ_TTL_MS")?.parse()?))
            .with_instance_id(instance)
            .with_reader_schema(var("PROJ_READERS")?)
            .with_workers(var("PROJ_WORKERS").map_or(Ok(1), |w| w.parse())?)
            .with_filter(LogFilter::tenant(TenantId::new(var("PROJ_TENANT")?)));
        let rebuild = PgRebuild::new(
            PgEventStore::new(pool),
            LedgerModel::new(&var("PROJ_NAME")?),
            options,
        );
        say("ready");
        rebuild.run(CancellationToken::new()).await?;
        say("done");
        return Ok(());
    }
    let holder = format!("{instance}/{}", std::process::id());
    let options = ProjectionOptions::default()
        .with_batch_size(var("PROJ_BATCH")?.parse()?)
        .with_lease_ttl(Duration::from_millis(var("PROJ_TTL_MS")?.parse()?))
        .with_max_idle_poll(Duration::from_millis(10))
        .with_instance_id(instance)
        .with_filter(LogFilter::tenant(TenantId::new(var("PROJ_TENANT")?)));
    let runner = PgProjectionRunner::new(
        PgEventStore::new(pool),
        CrashModel::new(&var("PROJ_NAME")?, &holder),
        options,
    );
    say("ready");
    match runner.run(CancellationToken::new()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            say(&format!("stopped: {e}"));
            let code = if matches!(e, PgProjectionError::LeaseLost { .. }) {
                3
            } else {
                1
            };
            std::process::exit(code);
        }
    }
}
