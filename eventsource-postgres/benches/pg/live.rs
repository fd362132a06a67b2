//! Live projection lag: appends at a fixed rate through the store, a `PgProjectionRunner`
//! tailing the log in the same process; for each event, the time from its append's commit
//! (the append returned) to the commit of the read-model batch holding it (the runner calls
//! `side_effect` right after that commit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_core::{EventStore, ExpectedVersion, LogFilter, RecordedEvent, StreamId, TenantId};
use eventsource_postgres::{PgEventStore, PgProjection, PgProjectionRunner, ProjectionOptions};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::harness::{Table, with_group};
use crate::model::event;
use crate::projection::{Kind, Model};
use crate::seed;

/// When each event (by stream) was seen committed in the read model.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// The balances model, noting when each batch committed.
struct Probe {
    model: Model,
    seen: Seen,
}

impl PgProjection for Probe {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        self.model.name()
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        self.model.apply(conn, event).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), sqlx::Error> {
        self.model.apply_batch(conn, events).await
    }

    async fn side_effect(&self, event: &RecordedEvent) {
        let now = Instant::now();
        self.seen
            .lock()
            .expect("seen")
            .insert(event.stream.aggregate_id().to_owned(), now);
    }
}

pub(crate) async fn lag(pool: &PgPool, store: &PgEventStore, table: &mut Table) {
    let rate: u64 = std::env::var("BENCH_LAG_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let seconds: u64 = std::env::var("BENCH_LAG_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // Beside the seeded log of another tenant, as a tenant's projection runs in production.
    seed::log(pool, "bench").await;
    let tenant = TenantId::new("lag");
    let store = with_group(store.clone());
    sqlx::query(AssertSqlSafe(
        "CREATE TABLE live_balances (stream text PRIMARY KEY, events bigint NOT NULL, \
         cents bigint NOT NULL, version bigint NOT NULL)",
    ))
    .execute(pool)
    .await
    .expect("live table");
    let seen: Seen = Arc::default();
    let probe = Probe {
        model: Model::new(Kind::Balances, "bench-live", "live_balances"),
        seen: seen.clone(),
    };
    // The tenant's log only: the runner starts at its (empty) head, not at the seeded log.
    let options = ProjectionOptions::default().with_filter(LogFilter::tenant(tenant.clone()));
    let shutdown = CancellationToken::new();
    let runner =
        tokio::spawn(PgProjectionRunner::new(store.clone(), probe, options).run(shutdown.clone()));

    let committed: Seen = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut appends = Vec::new();
    let total = rate * seconds;
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let (store, tenant, committed) = (store.clone(), tenant.clone(), committed.clone());
        appends.push(tokio::spawn(async move {
            let id = format!("live-{i}");
            let stream = StreamId::new(tenant, "ledger", id.clone());
            store
                .append(&stream, ExpectedVersion::NoStream, vec![event()])
                .await
                .expect("append");
            let now = Instant::now();
            committed.lock().expect("committed").insert(id, now);
        }));
    }
    for a in appends {
        a.await.expect("append task");
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    // Let the runner finish the tail.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("seen").len() < committed.lock().expect("committed").len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    runner.await.expect("runner task").expect("runner");

    let (committed, seen) = (
        committed.lock().expect("committed"),
        seen.lock().expect("seen"),
    );
    assert_eq!(
        seen.len(),
        committed.len(),
        "every append reached the read model"
    );
    // A batch may commit before its append returned to the caller: that lag counts as zero.
    let mut lags: Vec<Duration> = committed
        .iter()
        .map(|(id, at)| seen[id].saturating_duration_since(*at))
        .collect();
    lags.sort();
    let at = |per_mille: usize| lags[(lags.len() - 1) * per_mille / 1000];
    let (p50, p99, max) = (at(500), at(990), lags[lags.len() - 1]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    table.row(
        &format!("live lag at {offered:.0} appends/s, p50/p99/max ms"),
        format!("{:.1}/{:.1}/{:.1}", ms(p50), ms(p99), ms(max)),
        "p99 < 50".to_owned(),
        50.0 / ms(p99),
    );
}
