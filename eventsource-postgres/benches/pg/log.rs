//! Reading the global log.

use std::time::Instant;

use eventsource_core::{LogFilter, LogPosition, TenantId, read_log};
use eventsource_postgres::PgEventStore;
use futures::TryStreamExt as _;
use sqlx::{PgPool, Row as _};

use crate::harness::Table;
use crate::raw::RAW_LOG_PAGE;
use crate::seed;

pub(crate) async fn log_read(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    // Global log read rate, over the log seeded up to `BENCH_LOG_EVENTS`.
    seed::log(pool, tenant.as_str()).await;

    let started = Instant::now();
    let read: u64 = read_log(store, LogPosition::START, 5000, LogFilter::all())
        .try_fold(0_u64, |n, e| async move {
            std::hint::black_box(&e);
            Ok(n + 1)
        })
        .await
        .expect("read log");
    let framework = read as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut after = (String::from("0"), 0_i64);
    let mut raw_read = 0_u64;
    loop {
        let rows = sqlx::query(RAW_LOG_PAGE)
            .bind(&after.0)
            .bind(after.1)
            .bind(5000_i64)
            .fetch_all(pool)
            .await
            .expect("raw page");
        let Some(last) = rows.last() else { break };
        after = (last.get(1), last.get(0));
        for row in &rows {
            let payload: serde_json::Value = row.get(11);
            let metadata: serde_json::Value = row.get(10);
            std::hint::black_box((payload, metadata, row.get::<String, _>(1)));
        }
        raw_read += rows.len() as u64;
    }
    let raw = raw_read as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read, raw_read);
    table.throughput(
        &format!("read the global log ({read} events), events/s"),
        "",
        framework,
        raw,
    );
}
