//! The relay lease: one instance of a relay name publishes at a time.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::connection::RedisConnection;

/// Takes or renews the lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` ms; 1 if held.
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/lease.lua")));

/// Releases the lease `KEYS[1]` if holder `ARGV[1]` still has it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));

/// Takes the lease `key` for `holder`, or renews it if `holder` has it, for `ttl`; whether
/// `holder` holds it now.
pub(super) async fn take(
    conn: &mut RedisConnection,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, redis::RedisError> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let held: i64 = LEASE
        .key(key)
        .arg(holder)
        .arg(ms)
        .invoke_async(conn)
        .await?;
    Ok(held == 1)
}

/// Gives the lease `key` up if `holder` still has it; a failure only leaves it to expire.
pub(super) async fn release(conn: &mut RedisConnection, key: &str, holder: &str) {
    let released: Result<i64, _> = RELEASE.key(key).arg(holder).invoke_async(conn).await;
    if let Err(e) = released {
        tracing::debug!(error = %e, "relay lease not released; it will expire");
    }
}
