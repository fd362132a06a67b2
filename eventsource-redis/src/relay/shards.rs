//! Relay shards: the state each shard keeps on its own (the partition itself,
//! [`shard_of`](eventsource_core::shard_of), is in eventsource-core, so that stores can filter
//! on it).

use std::collections::HashSet;

use eventsource_core::{LogFilter, LogPosition, RecordedEvent, Shard, TenantId};

use super::order::StreamOrder;
use super::page::Page;

/// Tenants remembered as registered per shard before the memory is cleared (the registry
/// write is idempotent: forgetting only costs one `SADD` per tenant again).
const REMEMBERED_TENANTS: usize = 100_000;

/// What one shard of a relay keeps: its lease and checkpoint names, where it is, what it
/// checked and registered.
pub(super) struct ShardState {
    pub(super) index: u32,
    pub(super) shard: Shard,
    /// The next page, read and prepared while Redis ran the last one (catching up only).
    pub(super) ahead: Option<Page>,
    /// The relay's filter, narrowed to this shard's tenants (so that the store sends only
    /// those; with one shard, the relay's filter as it is).
    pub(super) filter: LogFilter,
    /// The last page read was short: the shard is at the log's end, and the next read asks
    /// the store for the log's head first, to move the checkpoint past other shards' events.
    pub(super) caught_up: bool,
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
    pub(super) fn new(
        shard: Shard,
        filter: &LogFilter,
        lease_key: String,
        checkpoint_name: String,
    ) -> Self {
        let dense = filter.since.is_none();
        Self {
            index: shard.index(),
            shard,
            ahead: None,
            filter: if shard.count() > 1 {
                filter.clone().with_shard(shard)
            } else {
                filter.clone()
            },
            caught_up: true,
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
