//! Appends straight to the store, one event and 10-event batches.

use eventsource_core::{EventStore, ExpectedVersion, StreamId, TenantId};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{Table, compare};
use crate::model::event;
use crate::raw::{RAW_INSERT, RAW_INSERT_BATCH};

pub(crate) async fn appends(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
    label: &str,
) {
    // Appends: one event per command, distinct streams.
    for tasks in [1, 8, 32] {
        let prefix = Uuid::now_v7().simple().to_string();
        let (s, t) = (store.clone(), tenant.clone());
        let p = prefix.clone();
        let fw = move |task, i| {
            let (s, t, p) = (s.clone(), t.clone(), p.clone());
            async move {
                let stream =
                    StreamId::new(t, "append", format!("{p}-{task}-{i}-{}", Uuid::now_v7()));
                s.append(&stream, ExpectedVersion::NoStream, vec![event()])
                    .await
                    .expect("append");
                1
            }
        };
        let pool2 = pool.clone();
        let raw = move |task, i| {
            let (pool, p) = (pool2.clone(), prefix.clone());
            async move {
                sqlx::query(RAW_INSERT)
                    .bind(format!("{p}-{task}-{i}-{}", Uuid::now_v7()))
                    .bind(1_i64)
                    .bind(Uuid::now_v7())
                    .bind(json!({ "by": 1 }))
                    .execute(&pool)
                    .await
                    .expect("raw insert");
                1
            }
        };
        let (framework, raw) = compare(tasks, fw, raw).await;
        table.throughput(
            &format!("append 1 event, {tasks} task(s){label}, events/s"),
            "",
            framework,
            raw,
        );
    }

    // Appends: 10-event batches, distinct streams.
    for tasks in [8, 32] {
        let prefix = Uuid::now_v7().simple().to_string();
        let (s, t, p) = (store.clone(), tenant.clone(), prefix.clone());
        let fw = move |task, i| {
            let (s, t, p) = (s.clone(), t.clone(), p.clone());
            async move {
                let stream =
                    StreamId::new(t, "batch", format!("{p}-{task}-{i}-{}", Uuid::now_v7()));
                s.append(
                    &stream,
                    ExpectedVersion::NoStream,
                    (0..10).map(|_| event()).collect(),
                )
                .await
                .expect("append");
                10
            }
        };
        let pool2 = pool.clone();
        let raw = move |task, i| {
            let (pool, p) = (pool2.clone(), prefix.clone());
            async move {
                sqlx::query(RAW_INSERT_BATCH)
                    .bind(format!("b{p}-{task}-{i}-{}", Uuid::now_v7()))
                    .bind((1..=10_i64).collect::<Vec<_>>())
                    .bind((0..10).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
                    .bind((0..10).map(|_| json!({ "by": 1 })).collect::<Vec<_>>())
                    .execute(&pool)
                    .await
                    .expect("raw batch");
                10
            }
        };
        let (framework, raw) = compare(tasks, fw, raw).await;
        table.throughput(
            &format!("append 10-event batches, {tasks} tasks{label}, events/s"),
            "",
            framework,
            raw,
        );
    }
}
