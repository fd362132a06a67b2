//! With the `metrics` feature, a rebuild's progress is exported as gauges.
#![cfg(feature = "metrics")]

mod support;

use eventsource_core::{EventStore, ExpectedVersion, LogFilter, NewEvent, RecordedEvent, StreamId};
use eventsource_postgres::{PgEventStore, PgProjection, PgRebuild, PgRebuildable, RebuildOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Seen(String);

impl PgProjection for Seen {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.0
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO seen (event_id) VALUES ($1)")
            .bind(event.event_id.as_uuid())
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl PgRebuildable for Seen {
    fn tables(&self) -> &[&str] {
        &["seen"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE seen (event_id uuid NOT NULL)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[test]
fn a_rebuild_exports_its_progress_as_gauges() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let name = format!("rebuild-metrics-{}", Uuid::now_v7().simple());
    let ran = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let Some(pool) = support::pool().await else {
                return false;
            };
            eventsource_postgres::metrics::describe();
            let store = PgEventStore::new(pool.clone());
            let tenant = support::tenant("rebuild-metrics");
            let readers = format!("readers_{}", Uuid::now_v7().simple());
            sqlx::query("SELECT eventsource_create_generation_schema($1)")
                .bind(&readers)
                .execute(&pool)
                .await
                .unwrap();
            let stream = StreamId::new(tenant.clone(), "counter", "c");
            let events = (0..30).map(|n| NewEvent::new("Numbered", 1, json!({ "n": n })));
            store
                .append(&stream, ExpectedVersion::Any, events.collect())
                .await
                .unwrap();
            let options = RebuildOptions::default()
                .with_filter(LogFilter::tenant(tenant))
                .with_reader_schema(readers)
                .with_batch_size(10);
            PgRebuild::new(store, Seen(name.clone()), options)
                .run(CancellationToken::new())
                .await
                .unwrap()
                .unwrap();
            true
        })
    });
    if !ran {
        return;
    }
    let gauges: Vec<(String, Vec<String>, f64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(v) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                v.into_inner(),
            )),
            _ => None,
        })
        .collect();
    let labels = vec![format!("projection={name}"), "generation=1".to_owned()];
    let value = |metric: &str| {
        gauges
            .iter()
            .find(|(m, l, _)| m == metric && *l == labels)
            .map(|g| g.2)
    };
    assert_eq!(
        value("eventsource_rebuild_processed_events"),
        Some(30.0),
        "{gauges:?}"
    );
    assert_eq!(value("eventsource_rebuild_total_events"), Some(30.0));
    assert!(value("eventsource_rebuild_events_per_second").is_some_and(|v| v > 0.0));
    assert_eq!(value("eventsource_rebuild_eta_seconds"), Some(0.0));
}
