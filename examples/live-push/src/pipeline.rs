//! The durable path into the server: the relay (store → Redis Streams) and the consumer group
//! that feeds the [`Hub`].

use std::time::Duration;

use eventsource_core::{CheckpointStore, EventStore, TenantId};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};

use crate::hub::{Hub, HubFeed};

/// The relay that publishes the store's log to one Redis stream per tenant under `keys`.
///
/// Any relay of the application will do; the example runs its own.
pub fn relay<S: EventStore, C: CheckpointStore>(
    store: S,
    checkpoints: C,
    conn: redis::aio::ConnectionManager,
    keys: &Keys,
    name: &str,
) -> RedisRelay<S, C> {
    let options = RelayOptions::default().with_max_idle_poll(Duration::from_millis(50));
    RedisRelay::new(store, checkpoints, conn, name, options).with_keys(keys)
}

/// The consumer group that feeds `hub` from the streams of `tenants`.
///
/// Every server process must see every event, so each runs its own group,
/// `live-push-<instance>` (give a stable instance name). A new group starts at the streams'
/// ends (`$`): clients catch up on older events from the store, not from the group. The
/// handler never fails, and one lane keeps each tenant's events in stream (log) order, which
/// [`crate::resume`] relies on.
#[must_use]
pub fn feed(
    conn: redis::aio::ConnectionManager,
    client: redis::Client,
    keys: &Keys,
    tenants: &[TenantId],
    instance: &str,
    hub: &Hub,
) -> ConsumerRunner<HubFeed> {
    let streams: Vec<String> = tenants.iter().map(|t| keys.tenant_stream(t)).collect();
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(500))
        .with_concurrency(1);
    ConsumerRunner::new(
        conn,
        client,
        streams,
        format!("live-push-{instance}"),
        instance,
        hub.feed(),
        options,
    )
    .with_start_id(eventsource_redis::StartId::New)
}
