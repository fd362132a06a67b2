//! Tenant shards: a stable partition of the tenants that a log reader (the Redis relay's
//! shards) can hand to the store, so that each shard reads only its own tenants' events.

use crate::envelope::TenantId;

/// The shard, out of `count`, that `tenant` belongs to: FNV-1a (32 bits) of the tenant id's
/// UTF-8 bytes, modulo `count`.
///
/// The function is part of the wire contract: every process, of any version, must put a tenant
/// in the same shard, and a store that filters on the server (the PostgreSQL store's
/// `eventsource_tenant_hash`) must compute the same, so it is fixed here (not Rust's `Hash`,
/// which is neither stable across versions nor across processes) and pinned by tests. A
/// `count` of 0 is taken as 1 (everything in shard 0).
///
/// ```
/// # use eventsource_core::{TenantId, shard_of};
/// assert_eq!(shard_of(&TenantId::new("acme"), 1), 0);
/// assert!(shard_of(&TenantId::new("acme"), 3) < 3);
/// ```
#[must_use]
pub fn shard_of(tenant: &TenantId, count: u32) -> u32 {
    tenant_hash(tenant) % count.max(1)
}

/// FNV-1a, 32 bits, of the tenant id's UTF-8 bytes.
fn tenant_hash(tenant: &TenantId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.as_str().as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// One shard of the tenants: those whose [`shard_of`] with `count` is `index`.
///
/// ```
/// # use eventsource_core::{Shard, TenantId, shard_of};
/// let shard = Shard::new(1, 3);
/// let acme = TenantId::new("acme");
/// assert_eq!(shard.contains(&acme), shard_of(&acme, 3) == 1);
/// assert!(Shard::new(0, 1).contains(&acme));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` of `count`. A `count` of 0 is taken as 1, and an `index` not below the
    /// count is taken modulo the count.
    #[must_use]
    pub fn new(index: u32, count: u32) -> Self {
        let count = count.max(1);
        Self {
            index: index % count,
            count,
        }
    }

    /// The shard's index, below [`count`](Self::count).
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many shards the tenants are split into.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether `tenant` belongs to this shard (always, with one shard).
    #[must_use]
    pub fn contains(&self, tenant: &TenantId) -> bool {
        shard_of(tenant, self.count) == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::{Shard, shard_of};
    use crate::envelope::TenantId;

    #[test]
    fn the_shard_function_is_pinned() {
        // FNV-1a 32 of the bytes: changing the function would move tenants between shards
        // of running relays (and away from what the PostgreSQL store computes).
        let hashes = [
            ("", 0x811c_9dc5_u32),
            ("a", 0xe40c_292c),
            ("acme", 0x45fd_71af),
            ("ü", 0x119d_d44a),
        ];
        for (tenant, hash) in hashes {
            for count in [1, 2, 3, 7] {
                assert_eq!(
                    shard_of(&TenantId::new(tenant), count),
                    hash % count,
                    "{tenant:?} of {count}"
                );
            }
        }
        assert_eq!(shard_of(&TenantId::new("acme"), 0), 0);
    }

    #[test]
    fn a_shard_normalises_its_count_and_index() {
        assert_eq!(Shard::new(5, 0), Shard::new(0, 1));
        assert_eq!(Shard::new(4, 3).index(), 1);
        let tenants: Vec<TenantId> = (0..50).map(|i| TenantId::new(format!("t-{i}"))).collect();
        for tenant in &tenants {
            let owners = (0..3)
                .filter(|i| Shard::new(*i, 3).contains(tenant))
                .count();
            assert_eq!(owners, 1, "{tenant} belongs to exactly one shard");
        }
    }
}
