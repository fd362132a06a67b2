//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::time::Duration;

use eventsource_core::{EventStore, LogFilter, LogPosition, RecordedEvent, TenantId};

/// The value of a service URL variable, or `None` after a notice; under `CI` a missing service
/// is a failure, never a skip.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{var} must be set in CI: {e}"),
        Err(_) => {
            eprintln!("{var} is not set; skipping this test (run scripts/test)");
            None
        }
    }
}

/// A client and a connection of the Redis at `url`: one node's URL, or a cluster's node URLs
/// separated by commas (`REDIS_CLUSTER_URLS`).
pub async fn redis(
    url: &str,
) -> (
    eventsource_redis::RedisClient,
    eventsource_redis::RedisConnection,
) {
    let client = eventsource_tests::child::redis_client(url).expect("a Redis URL");
    let conn = client.connect().await.expect("connect to Redis");
    (client, conn)
}

/// Waits up to 20 s for `check` to hold.
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique name for keys, tenants and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// `tenant`'s whole log once it shows at least `count` events, waiting up to 60 s (an event
/// becomes readable once every older transaction in the cluster has ended).
pub async fn tenant_log(
    store: &impl EventStore,
    tenant: &TenantId,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    loop {
        let mut log = Vec::new();
        let mut after = LogPosition::START;
        loop {
            let page = store
                .read_all(after, 1_000, &LogFilter::tenant(tenant.clone()))
                .await
                .expect("read_all");
            let Some(last) = page.last() else { break };
            after = last.position;
            log.extend(page);
        }
        if log.len() >= count {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log showed {} of {count} events in 60 s",
            log.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub mod child;
pub mod cluster;
pub mod order;
