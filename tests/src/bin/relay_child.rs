//! The relay as a process of its own, for `tests/relay_crash.rs` to kill with SIGKILL.
//!
//! Publishes one tenant's log from a [`PgEventStore`] to Redis, checkpointing in
//! [`PgCheckpointStore`], until killed. Configured by environment: `DATABASE_URL`, `REDIS_URL`
//! (a comma-separated list of nodes: a Redis Cluster),
//! `RELAY_NAME` (its checkpoint and lease), `RELAY_PREFIX` (the keys' prefix), `RELAY_TENANT`,
//! `RELAY_BATCH` (events per batch) and `RELAY_STALL`: when set, the relay stops for good in
//! its first checkpoint save, after Redis answered, so the parent can kill it exactly between
//! publish and checkpoint. It prints `ready` once connected and `stalled` when it stops there.
//!
//! Sharded (`RELAY_SHARDS` set): instead of `RELAY_TENANT`, it reads the log from
//! `RELAY_SINCE` (RFC 3339) on and publishes only the tenants of `RELAY_TENANTS`
//! (comma-separated), as instance `RELAY_INSTANCE` of a pool over `RELAY_SHARDS` shards with
//! leases of `RELAY_LEASE_MS` milliseconds.

use std::collections::HashSet;
use std::time::Duration;

use eventsource_core::{CheckpointStore, LogFilter, LogPosition, StoreError, TenantId};
use eventsource_postgres::{PgCheckpointStore, PgEventStore};
use eventsource_redis::{Keys, RedisConnection, RedisRelay, RelayOptions};
use eventsource_tests::child::{say, var};
use eventsource_tests::routing::TenantAndType;
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(&var("DATABASE_URL")?)
        .await?;
    // A comma-separated list: the nodes of a Redis Cluster.
    let url = var("REDIS_URL")?;
    let conn = if url.contains(',') {
        RedisConnection::open_cluster(url.split(',')).await?
    } else {
        RedisConnection::open(url.as_str()).await?
    };
    let keys = Keys::new(&var("RELAY_PREFIX")?);
    let batch: usize = var("RELAY_BATCH")?.parse()?;
    let mut options = RelayOptions::default()
        .with_batch_size(batch)
        .with_max_idle_poll(Duration::from_millis(10));
    let mut only = None;
    if let Ok(shards) = var("RELAY_SHARDS") {
        let since = chrono::DateTime::parse_from_rfc3339(&var("RELAY_SINCE")?)?;
        only = Some(
            var("RELAY_TENANTS")?
                .split(',')
                .map(TenantId::new)
                .collect::<HashSet<_>>(),
        );
        options = options
            .with_shards(shards.parse()?)
            .with_instance_id(var("RELAY_INSTANCE")?)
            .with_lease_ttl(Duration::from_millis(var("RELAY_LEASE_MS")?.parse()?))
            .with_filter(LogFilter::all().with_since(since.to_utc()));
    } else {
        let tenant = TenantId::new(var("RELAY_TENANT")?);
        options = options
            // Every incarnation is the same instance: it takes the lease its killed
            // predecessor left at once.
            .with_instance_id("relay-under-test")
            .with_filter(LogFilter::tenant(tenant));
    }
    let relay = RedisRelay::new(
        PgEventStore::new(pool.clone()),
        Stalling {
            inner: PgCheckpointStore::new(pool),
            stall: std::env::var_os("RELAY_STALL").is_some(),
        },
        conn,
        var("RELAY_NAME")?,
        options,
    )
    .with_router(match only {
        Some(tenants) => TenantAndType::new(keys.clone()).only(tenants),
        None => TenantAndType::new(keys.clone()),
    })
    .with_keys(&keys);
    say("ready");
    relay.run(CancellationToken::new()).await?;
    Ok(())
}
