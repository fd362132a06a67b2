//! Aggregate loads, with and without a snapshot.

use eventsource_core::{
    Aggregate, EventStore, ExpectedVersion, NewEvent, Repository, Snapshot, SnapshotStore,
    StreamId, TenantId, Version,
};
use eventsource_postgres::{PgEventStore, PgSnapshotStore};
use serde_json::json;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::harness::{Table, mean_latency};
use crate::model::{Counter, CounterEvent};
use crate::raw::{RAW_INSERT_BATCH, RAW_LOAD, RAW_LOAD_AFTER, RAW_SNAPSHOT};

pub(crate) async fn loads(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    // Aggregate load latency, with and without a snapshot.
    let snapshots = PgSnapshotStore::new(pool.clone());
    for n in [100_u64, 1_000, 10_000] {
        let id = format!("load-{n}");
        let stream = StreamId::new(tenant.clone(), Counter::TYPE, &id);
        let raw_stream = format!("load-{n}");
        for chunk in 0..n / 100 {
            let batch = (0..100)
                .map(|_| {
                    NewEvent::from_event(&CounterEvent::Incremented { by: 1 }).expect("encode")
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("fill");
            let from = i64::try_from(chunk * 100).expect("small");
            sqlx::query(RAW_INSERT_BATCH)
                .bind(&raw_stream)
                .bind((from + 1..=from + 100).collect::<Vec<_>>())
                .bind((0..100).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
                .bind((0..100).map(|_| json!({ "by": 1 })).collect::<Vec<_>>())
                .execute(pool)
                .await
                .expect("raw fill");
        }
        let plain = Repository::<Counter, _>::new(store.clone()).with_tenant(tenant.clone());
        let runs = if n >= 10_000 { 20 } else { 100 };
        let framework = mean_latency(runs, || async {
            assert_eq!(
                plain.load(&id).await.expect("load").version(),
                Version::new(n)
            );
        })
        .await;
        let raw = mean_latency(runs, || async {
            let rows = sqlx::query(RAW_LOAD)
                .bind(&raw_stream)
                .fetch_all(pool)
                .await
                .expect("raw load");
            let mut state = Counter::default();
            for row in &rows {
                let payload: serde_json::Value = row.get(1);
                state.value += payload["by"].as_u64().unwrap_or(0);
            }
            assert_eq!(std::hint::black_box(state).value, n);
            assert_eq!(rows.len() as u64, n);
        })
        .await;
        table.latency(&format!("load {n} events, no snapshot"), framework, raw);

        snapshots
            .save(Snapshot::new(
                stream.clone(),
                Version::new(n),
                1,
                json!({ "value": n }),
            ))
            .await
            .expect("snapshot");
        sqlx::query("INSERT INTO raw_snapshots VALUES ($1, $2, $3)")
            .bind(&raw_stream)
            .bind(i64::try_from(n).expect("small"))
            .bind(json!({ "value": n }))
            .execute(pool)
            .await
            .expect("raw snapshot");
        let snapped = Repository::<Counter, _>::new(store.clone())
            .with_tenant(tenant.clone())
            .with_snapshots(snapshots.clone(), eventsource_core::SnapshotPolicy::Never);
        let framework = mean_latency(runs, || async {
            assert_eq!(snapped.load(&id).await.expect("load").state().value, n);
        })
        .await;
        let raw = mean_latency(runs, || async {
            let snap = sqlx::query(RAW_SNAPSHOT)
                .bind(&raw_stream)
                .fetch_one(pool)
                .await
                .expect("raw snapshot");
            let version: i64 = snap.get(0);
            let state: Counter = serde_json::from_value(snap.get(1)).expect("state");
            let tail = sqlx::query(RAW_LOAD_AFTER)
                .bind(&raw_stream)
                .bind(version)
                .fetch_all(pool)
                .await
                .expect("tail");
            assert!(tail.is_empty() && state.value == n);
        })
        .await;
        table.latency(&format!("load {n} events, from snapshot"), framework, raw);
    }
}
