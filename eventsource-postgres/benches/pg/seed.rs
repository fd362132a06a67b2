//! The large log the log and projection scenarios read, written once per run in bulk.

use std::time::Instant;

use sqlx::PgPool;

/// Events per seeded stream.
pub(crate) const EVENTS_PER_STREAM: i64 = 100;
/// Streams per seeding transaction (50,000 events).
const STREAMS_PER_CHUNK: i64 = 500;

/// Writes `chunk` of streams `first..=last` and their events in one statement, as the store's
/// append would (a `streams` row per stream with its version; events with their stream key).
/// Within the chunk the log interleaves streams in runs of ten events: a 5,000-event batch holds
/// ten events each of 500 streams, in version order per stream.
const SEED_CHUNK: &str = "
WITH s AS (
    INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version, last_xid)
    SELECT $1, 'ledger', 'seed-' || g, $4, pg_current_xact_id()
    FROM generate_series($2::int8, $3::int8) g
    RETURNING stream_key, aggregate_id)
INSERT INTO events (tenant_id, aggregate_type, aggregate_id, stream_key, version, event_id,
                    event_type, schema_version, payload, metadata)
SELECT $1, 'ledger', s.aggregate_id, s.stream_key, v, gen_random_uuid(), 'Deposited', 1,
       jsonb_build_object('cents', 100 + v), '{}'::jsonb
FROM s, generate_series(1::int8, $4::int8) v
ORDER BY (v - 1) / 10, s.stream_key, v";

/// The log's size: the events other scenarios appended, then seeded streams up to `target`
/// (`BENCH_LOG_EVENTS`, default 1,000,000). Seeds at most once per run.
pub(crate) async fn log(pool: &PgPool, tenant: &str) -> u64 {
    let target: i64 = std::env::var("BENCH_LOG_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    if stored < target {
        let started = Instant::now();
        let seeded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM streams WHERE aggregate_type = 'ledger'")
                .fetch_one(pool)
                .await
                .expect("count seeded");
        let streams = (target - stored + EVENTS_PER_STREAM - 1) / EVENTS_PER_STREAM;
        let mut first = seeded;
        while first < seeded + streams {
            let last = (first + STREAMS_PER_CHUNK).min(seeded + streams) - 1;
            sqlx::query(SEED_CHUNK)
                .bind(tenant)
                .bind(first)
                .bind(last)
                .bind(EVENTS_PER_STREAM)
                .execute(pool)
                .await
                .expect("seed");
            first = last + 1;
        }
        sqlx::query("VACUUM ANALYZE events")
            .execute(pool)
            .await
            .expect("vacuum");
        println!(
            "(log seeded with {} events in {streams} streams in {:.1} s)",
            streams * EVENTS_PER_STREAM,
            started.elapsed().as_secs_f64()
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    u64::try_from(stored).expect("count")
}
