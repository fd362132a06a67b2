//! The tenant registry: a set of the tenant ids the relay has published to, which running
//! consumer runners watch to pick up new tenants (see [`Keys::tenant_registry`]).

use eventsource_core::TenantId;

use crate::connection::RedisConnection;
use crate::keys::Keys;

/// Adds `tenants` to the registry `key` (`SADD`, idempotent).
///
/// The relay calls it before the publish script adds a tenant's entries: the registry lives in
/// another slot than the tenant's stream, so the two writes cannot be one script, and in this
/// order a runner that finds a stream's entries always finds its tenant in the registry too.
pub(super) async fn register(
    conn: &RedisConnection,
    key: &str,
    tenants: &[TenantId],
) -> Result<(), redis::RedisError> {
    let mut cmd = redis::cmd("SADD");
    cmd.arg(key);
    for tenant in tenants {
        cmd.arg(tenant.as_str());
    }
    let _added: u64 = cmd.query_async(&mut conn.clone()).await?;
    Ok(())
}

/// The tenants of the registry under `keys`' prefix (`SMEMBERS` of one key, never `KEYS` or
/// `SCAN`), in no particular order.
///
/// # Errors
///
/// [`RedisError`](redis::RedisError) when Redis fails, or the key holds something other than
/// a set.
pub async fn registered_tenants<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<TenantId>, redis::RedisError> {
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.tenant_registry())
        .query_async(conn)
        .await?;
    Ok(members.into_iter().map(TenantId::new).collect())
}
