//! Relay shards: the tenant partition, and the state each shard keeps on its own.

use std::collections::HashSet;

use eventsource_core::{LogPosition, RecordedEvent, TenantId};

use super::order::StreamOrder;

/// Tenants remembered as registered per shard before the memory is cleared (the registry
/// write is idempotent: forgetting only costs one `SADD` per tenant again).
const REMEMBERED_TENANTS: usize = 100_000;

/// The shard, out of `count`, that publishes `tenant`'s events: FNV-1a (32 bits) of the
/// tenant id's UTF-8 bytes, modulo `count`.
///
/// The function is part of the wire contract: every relay process, of any version, must put a
/// tenant in the same shard, so it is fixed here (not Rust's `Hash`, which is neither stable
/// across versions nor across processes) and pinned by a unit test. A `count` of 0 is taken as 1
/// (everything in shard 0).
#[must_use]
pub fn shard_of(tenant: &TenantId, count: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.as_str().as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % count.max(1)
}

/// What one shard of a relay keeps: its lease and checkpoint names, where it is, what it
/// checked and registered.
pub(super) struct ShardState {
    pub(super) index: u32,
    pub(super) lease_key: String,
    pub(super) checkpoint_name: String,
    /// Where the shard has published up to (the stored checkpoint, or for a shard that has
    /// none yet the unsharded relay's checkpoint it starts from).
    pub(super) checkpoint: Option<LogPosition>,
    /// The checkpoint as stored under `checkpoint_name` (the expected value of the next save).
    pub(super) stored: Option<LogPosition>,
    pub(super) loaded: bool,
    pub(super) order: StreamOrder,
    registered: HashSet<TenantId>,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the registered tenants: up to a hundred thousand of them.
        f.debug_struct("ShardState")
            .field("index", &self.index)
            .field("lease_key", &self.lease_key)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl ShardState {
    pub(super) fn new(index: u32, lease_key: String, checkpoint_name: String, dense: bool) -> Self {
        Self {
            index,
            lease_key,
            checkpoint_name,
            checkpoint: None,
            stored: None,
            loaded: false,
            order: StreamOrder::new(dense),
            registered: HashSet::new(),
        }
    }

    /// The tenants of `events` not yet known to be in the registry.
    pub(super) fn unregistered(&self, events: &[RecordedEvent]) -> Vec<TenantId> {
        let mut new: Vec<TenantId> = Vec::new();
        for event in events {
            let tenant = event.tenant();
            if !self.registered.contains(tenant) && !new.contains(tenant) {
                new.push(tenant.clone());
            }
        }
        new
    }

    /// Forgets which tenants this shard registered: it registers them again as it meets them.
    pub(super) fn forget_registered(&mut self) {
        self.registered.clear();
    }

    /// Remembers that `tenants` are in the registry.
    pub(super) fn registered(&mut self, tenants: Vec<TenantId>) {
        if self.registered.len() + tenants.len() > REMEMBERED_TENANTS {
            self.registered.clear();
        }
        self.registered.extend(tenants);
    }
}

#[cfg(test)]
mod tests {
    use eventsource_core::TenantId;

    use super::shard_of;

    #[test]
    fn the_shard_function_is_pinned() {
        // FNV-1a 32 of the bytes: changing the function would move tenants between shards
        // of running relays.
        let hashes = [
            ("", 0x811c_9dc5_u32),
            ("a", 0xe40c_292c),
            ("acme", 0x45fd_71af),
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
}
