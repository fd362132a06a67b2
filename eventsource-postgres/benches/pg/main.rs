//! PostgreSQL benchmark: the framework against hand-written sqlx doing the same durable work.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:54329/postgres cargo bench -p eventsource-postgres --bench pg
//! ```
//!
//! Starts from an empty database (`eventsource_bench`, or `BENCH_DATABASE`; dropped and
//! re-created), runs each scenario for `BENCH_SECONDS` (default 6, in four alternating rounds
//! of each side; 2 s runs moved ratios by up to 0.1 from run to run) and prints one table:
//! scenario, the framework's figure, the raw engine's figure in the same run, and their ratio
//! (framework / raw for throughputs, raw / framework for latencies: above 1.0 means the
//! framework is faster).
//! `BENCH_LOG_EVENTS` (default 1,000,000) sets the size of the log that `log`, `rebuild` and
//! `lag` read (seeded in bulk once per run, `seed.rs`); `BENCH_ONLY` (a comma list of `appends`,
//! `shape`, `commands`, `loads`, `log`, `rebuild`, `lag`, `saga`) runs a subset. The command
//! scenarios measure steady state: before their timed rounds, each task commands each of its
//! aggregates once, on both sides (with the cache, that loads them). The projection and saga
//! scenarios (`projection.rs`, `live.rs`, `saga.rs`) are described in the crate README.
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

mod appends;
mod commands;
mod harness;
mod live;
mod loads;
mod log;
mod model;
mod projection;
mod raw;
mod saga;
mod seed;
mod shape;

use eventsource_core::TenantId;
use eventsource_postgres::PgEventStore;

use crate::harness::{Table, setup, with_group};

#[tokio::main]
async fn main() {
    let pool = setup().await;
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new("bench");
    let mut table = Table(Vec::new());
    println!(
        "{:<52} {:>16} {:>16} {:>7}",
        "scenario", "framework", "raw sqlx", "ratio"
    );

    // `BENCH_ONLY=appends,loads` runs a subset: appends, shape, commands, loads, log, rebuild,
    // lag, saga.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    if wanted("appends") {
        // The store as it comes (group commit on), then without group commit.
        appends::appends(&pool, &with_group(store.clone()), &tenant, &mut table, "").await;
        let alone = store.clone().without_group_commit();
        appends::appends(&pool, &alone, &tenant, &mut table, ", no group commit").await;
    }
    if wanted("shape") {
        shape::commands_on_new_aggregates(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("commands") {
        commands::commands(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("loads") {
        loads::loads(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("log") {
        log::log_read(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("rebuild") {
        projection::rebuilds(&pool, &store, tenant.as_str(), &mut table).await;
    }
    if wanted("lag") {
        live::lag(&pool, &store, &mut table).await;
    }
    if wanted("saga") {
        saga::sagas(&pool, &store, &tenant, &mut table).await;
    }
}
