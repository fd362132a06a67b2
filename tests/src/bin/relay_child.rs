//! The relay as a process of its own, for `tests/relay_crash.rs` to kill with SIGKILL.
//!
//! Publishes one tenant's log from a [`PgEventStore`] to Redis, checkpointing in
//! [`PgCheckpointStore`], until killed. Configured by environment: `DATABASE_URL`, `REDIS_URL`,
//! `RELAY_NAME` (its checkpoint and lease), `RELAY_PREFIX` (the keys' prefix), `RELAY_TENANT`,
//! `RELAY_BATCH` (events per batch) and `RELAY_STALL`: when set, the relay stops for good in
//! its first checkpoint save, after Redis answered, so the parent can kill it exactly between
//! publish and checkpoint. It prints `ready` once connected and `stalled` when it stops there.

use std::time::Duration;

use eventsource_core::{
    CheckpointStore, LogFilter, LogPosition, RecordedEvent, StoreError, TenantId,
};
use eventsource_postgres::{PgCheckpointStore, PgEventStore};
use eventsource_redis::{Keys, RedisRelay, RelayOptions, Router};
use eventsource_tests::child::{say, var};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// A checkpoint store that, told to stall, never returns from `save`.
struct Stalling {
    inner: PgCheckpointStore,
    stall: bool,
}

impl CheckpointStore for Stalling {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        self.inner.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        if self.stall {
            say("stalled");
            std::future::pending::<()>().await;
        }
        self.inner.save(name, expected, position).await
    }
}

/// The router of the crash test: the tenant's stream and its aggregate type's stream, so a
/// batch touches several keys.
#[derive(Clone)]
struct TenantAndType(Keys);

impl Router for TenantAndType {
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        keys.push(self.0.tenant_stream(event.tenant()));
        keys.push(
            self.0
                .aggregate_type_stream(event.tenant(), event.stream.aggregate_type()),
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(&var("DATABASE_URL")?)
        .await?;
    let conn = redis::Client::open(var("REDIS_URL")?)?
        .get_connection_manager()
        .await?;
    let keys = Keys::new(&var("RELAY_PREFIX")?);
    let tenant = TenantId::new(var("RELAY_TENANT")?);
    let batch: usize = var("RELAY_BATCH")?.parse()?;
    let relay = RedisRelay::new(
        PgEventStore::new(pool.clone()),
        Stalling {
            inner: PgCheckpointStore::new(pool),
            stall: std::env::var_os("RELAY_STALL").is_some(),
        },
        conn,
        var("RELAY_NAME")?,
        RelayOptions::default()
            .with_batch_size(batch)
            .with_max_idle_poll(Duration::from_millis(10))
            // Every incarnation is the same instance: it takes the lease its killed
            // predecessor left at once.
            .with_instance_id("relay-under-test")
            .with_filter(LogFilter::tenant(tenant)),
    )
    .with_router(TenantAndType(keys.clone()))
    .with_keys(&keys);
    say("ready");
    relay.run(CancellationToken::new()).await?;
    Ok(())
}
