//! One tenant's rows of a read model of all tenants, rebuilt while the live runner (over every
//! tenant) and writers of both tenants go on (issue 16 item 4, ADR 0020): the tenant's rows end
//! equal to a clean build, the other tenant's rows are untouched (a marker row only they hold
//! survives) and never shrink for a reader meanwhile. The live runner reads the whole log, so
//! the test runs in a database of its own.

mod support;

use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, StreamId,
    TenantId,
};
use eventsource_postgres::{
    PgEventStore, PgProjection, PgProjectionError, PgProjectionRunner, PgRebuild, PgRebuildable,
    PgTenantRebuildable, ProjectionOptions, RebuildOptions,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One row per application of an event, with its tenant.
struct TenantLedger;

impl PgProjection for TenantLedger {
    type Error = sqlx::Error;

    fn name(&self) -> &'static str {
        "tenant-ledger"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO tenant_ledger (tenant, event_id, n) VALUES ($1, $2, $3)")
            .bind(event.tenant().as_str())
            .bind(event.event_id.as_uuid())
            .bind(event.payload["n"].as_i64().unwrap_or(-1))
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl PgRebuildable for TenantLedger {
    fn tables(&self) -> &[&str] {
        &["tenant_ledger"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE tenant_ledger (tenant text NOT NULL, event_id uuid NOT NULL, n bigint NOT NULL)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl PgTenantRebuildable for TenantLedger {
    async fn delete_tenant(
        &self,
        conn: &mut PgConnection,
        tenant: &TenantId,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM tenant_ledger WHERE tenant = $1")
            .bind(tenant.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A migrated database of its own; dropped by [`drop_database`].
async fn own_database() -> Option<(PgPool, String)> {
    let server = support::server()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .unwrap();
    let name = format!("rebuild_tenant_{}", Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(server.database(&name))
        .await
        .unwrap();
    eventsource_postgres::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query("CREATE SCHEMA readers")
        .execute(&pool)
        .await
        .unwrap();
    Some((pool, name))
}

async fn drop_database(pool: PgPool, name: &str) {
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(support::server().unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

async fn append(store: &PgEventStore, tenant: &TenantId, from: i64, n: i64) {
    for i in from..from + n {
        let stream = StreamId::new(tenant.clone(), "counter", format!("c-{}", i % 5));
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("Numbered", 1, json!({ "n": i }))],
            )
            .await
            .unwrap();
    }
}

/// The tenant's rows as readers see them: `(event id, n)`, sorted.
async fn rows(pool: &PgPool, tenant: &TenantId) -> Vec<(Uuid, i64)> {
    sqlx::query_as(
        "SELECT event_id, n FROM readers.tenant_ledger WHERE tenant = $1 ORDER BY event_id, n",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A clean build of the tenant's `n` events, once they all show in the log (an open
/// transaction holds back what it shows).
async fn clean_build(store: &PgEventStore, tenant: &TenantId, n: usize) -> Vec<(Uuid, i64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = store
            .read_all(
                LogPosition::START,
                1_000_000,
                &LogFilter::tenant(tenant.clone()),
            )
            .await
            .unwrap();
        if log.len() >= n || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut rows: Vec<_> = log
        .iter()
        .map(|e| (*e.event_id.as_uuid(), e.payload["n"].as_i64().unwrap()))
        .collect();
    rows.sort_unstable();
    rows
}

fn options() -> RebuildOptions {
    RebuildOptions::default()
        .with_reader_schema("readers")
        .with_batch_size(50)
        .with_cutover_lag(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_tenants_rows_are_rebuilt_while_the_others_serve_untouched() {
    let Some((pool, database)) = own_database().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let (a, b) = (TenantId::new("a"), TenantId::new("b"));
    // Without a serving generation there is nothing to rebuild in.
    let err = PgRebuild::new(store.clone(), TenantLedger, options())
        .rebuild_tenant(&a, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PgProjectionError::NotServing { .. }), "{err}");
    append(&store, &a, 0, 300).await;
    append(&store, &b, 0, 300).await;
    PgRebuild::new(store.clone(), TenantLedger, options())
        .run(CancellationToken::new())
        .await
        .unwrap()
        .expect("cut over");
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(
        PgProjectionRunner::new(
            store.clone(),
            TenantLedger,
            ProjectionOptions::default()
                .with_batch_size(20)
                .with_max_idle_poll(Duration::from_millis(10)),
        )
        .run(shutdown.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while (rows(&pool, &a).await.len() < 300 || rows(&pool, &b).await.len() < 300)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tenant a's rows go wrong (one lost, one bogus); b gets a row of its own no event made.
    let marker = (Uuid::now_v7(), -42_i64);
    sqlx::query(
        "WITH gone AS (DELETE FROM readers.tenant_ledger WHERE event_id = \
           (SELECT event_id FROM readers.tenant_ledger WHERE tenant = 'a' LIMIT 1)) \
         INSERT INTO readers.tenant_ledger VALUES ('a', $1, -1), ('b', $2, $3)",
    )
    .bind(Uuid::now_v7())
    .bind(marker.0)
    .bind(marker.1)
    .execute(&pool)
    .await
    .unwrap();
    // Writers of both tenants, and a reader of b, throughout.
    let writing = CancellationToken::new();
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|tenant| {
            let (store, writing) = (store.clone(), writing.clone());
            tokio::spawn(async move {
                let mut n = 1_000;
                while !writing.is_cancelled() {
                    append(&store, &tenant, n, 3).await;
                    n += 3;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                usize::try_from(n - 1_000).unwrap()
            })
        })
        .collect();
    let reader = {
        let (pool, b, reading) = (pool.clone(), b.clone(), writing.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !reading.is_cancelled() {
                let seen = rows(&pool, &b).await;
                assert!(seen.contains(&marker), "b's rows were touched");
                assert!(
                    seen.len() >= last,
                    "b's rows shrank: {last} -> {}",
                    seen.len()
                );
                last = seen.len();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = PgRebuild::new(store.clone(), TenantLedger, options())
        .rebuild_tenant(&a, CancellationToken::new())
        .await
        .unwrap()
        .expect("swapped");
    assert_eq!(report.generation, 1);
    assert!(report.processed >= 300, "{report:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    writing.cancel();
    let mut written = Vec::new();
    for w in writers {
        written.push(300 + w.await.unwrap());
    }
    reader.await.unwrap();
    // The live runner catches up with the last appends.
    let want_a = clean_build(&store, &a, written[0]).await;
    let mut want_b = clean_build(&store, &b, written[1]).await;
    want_b.push(marker);
    want_b.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (rows(&pool, &a).await.len() < want_a.len() || rows(&pool, &b).await.len() < want_b.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    live.await.unwrap().unwrap();
    assert_eq!(
        rows(&pool, &a).await,
        want_a,
        "a's rows equal a clean build"
    );
    assert_eq!(
        rows(&pool, &b).await,
        want_b,
        "b's rows untouched, kept up to date"
    );
    // `tenant_ledger_tenant_<hash of the name>`.
    let staged: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT FROM pg_namespace \
         WHERE nspname LIKE 'tenant\\_ledger\\_tenant\\_%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(staged, "the staging schema is dropped");
    drop_database(pool, &database).await;
}
