//! Reading the global log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, StreamId, TenantId, read_log,
};
use eventsource_postgres::PgEventStore;
use futures::TryStreamExt as _;
use sqlx::{PgPool, Row as _};

use crate::harness::Table;
use crate::model::event;
use crate::raw::RAW_LOG_PAGE;

pub(crate) async fn log_read(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    // Global log read rate.
    let target: u64 = std::env::var("BENCH_LOG_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    let mut have = u64::try_from(stored).expect("count");
    let fill_started = Instant::now();
    let fill = Arc::new(AtomicU64::new(have));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, t, fill) = (store.clone(), tenant.clone(), fill.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while fill.fetch_add(1000, Ordering::Relaxed) < target {
                    let stream = StreamId::new(t.clone(), "log", format!("fill-{w}-{i}"));
                    s.append(
                        &stream,
                        ExpectedVersion::NoStream,
                        (0..1000).map(|_| event()).collect(),
                    )
                    .await
                    .expect("fill");
                    i += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("fill task");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    have = u64::try_from(stored).expect("count");
    println!(
        "(log filled to {have} events in {:.1} s)",
        fill_started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE events")
        .execute(pool)
        .await
        .expect("vacuum");

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
