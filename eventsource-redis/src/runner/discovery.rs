//! Tenant discovery: a runner reading every tenant's stream (or those a filter keeps) picks up
//! the streams of tenants that appear while it runs, from the relay's tenant registry.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eventsource_core::TenantId;

use crate::connection::RedisConnection;
use crate::keys::Keys;

/// A predicate on tenant ids.
type TenantFilter = Arc<dyn Fn(&TenantId) -> bool + Send + Sync>;

/// Which tenants' streams a [`ConsumerRunner`](crate::ConsumerRunner) discovers, and how
/// often it looks ([`ConsumerRunner::with_discovery`](crate::ConsumerRunner::with_discovery)).
///
/// The relay records each tenant in the registry ([`Keys::tenant_registry`], a set) before it
/// adds the tenant's first entry. The runner reads the registry at start (`SMEMBERS`) and then
/// checks its size (`SCARD`, constant time) every poll interval; when it grew, it reads it
/// again and starts reading each new tenant's stream, [`Keys::tenant_stream`], with its group
/// created at the start of the stream, so no entry published before the runner saw the
/// tenant is missed. Never `KEYS` nor `SCAN`.
///
/// ```
/// # use eventsource_redis::{Keys, TenantDiscovery};
/// # use std::time::Duration;
/// let discovery = TenantDiscovery::new(Keys::default())
///     .with_filter(|tenant| tenant.as_str().starts_with("eu-"))
///     .with_poll_interval(Duration::from_millis(500));
/// assert_eq!(discovery.poll_interval(), Duration::from_millis(500));
/// ```
#[derive(Clone)]
pub struct TenantDiscovery {
    keys: Keys,
    filter: Option<TenantFilter>,
    poll_interval: Duration,
}

impl std::fmt::Debug for TenantDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDiscovery")
            .field("keys", &self.keys)
            .field("filtered", &self.filter.is_some())
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl TenantDiscovery {
    /// Every tenant in the registry under `keys`' prefix (the relay's
    /// [`with_keys`](crate::RedisRelay::with_keys)), polled every second.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            filter: None,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Only the tenants `filter` keeps.
    #[must_use]
    pub fn with_filter(
        mut self,
        filter: impl Fn(&TenantId) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// How often the registry's size is checked (default 1 s; at least 1 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often the registry's size is checked.
    #[must_use]
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The stream key of `tenant`.
    pub(super) fn stream(&self, tenant: &TenantId) -> String {
        self.keys.tenant_stream(tenant)
    }

    /// The registry's size.
    pub(super) async fn size(&self, conn: &mut RedisConnection) -> Result<u64, redis::RedisError> {
        redis::cmd("SCARD")
            .arg(self.keys.tenant_registry())
            .query_async(conn)
            .await
    }

    /// The registry's size and the tenants in it, kept by the filter, not in `known`.
    pub(super) async fn new_tenants(
        &self,
        conn: &mut RedisConnection,
        known: &HashSet<TenantId>,
    ) -> Result<(u64, Vec<TenantId>), redis::RedisError> {
        let all = crate::relay::registered_tenants(conn, &self.keys).await?;
        let size = all.len() as u64;
        let new = all
            .into_iter()
            .filter(|t| !known.contains(t))
            .filter(|t| self.filter.as_ref().is_none_or(|keep| keep(t)))
            .collect();
        Ok((size, new))
    }
}
