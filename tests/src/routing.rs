//! The router the relay crash tests and their relay processes share.

use std::collections::HashSet;

use eventsource_core::{RecordedEvent, TenantId};
use eventsource_redis::{Keys, Router};

/// Routes each event to its tenant's stream and its aggregate type's stream, so a batch
/// touches several keys (of one hash slot per tenant); only the tenants listed, if any.
#[derive(Debug, Clone)]
pub struct TenantAndType {
    keys: Keys,
    only: Option<HashSet<TenantId>>,
}

impl TenantAndType {
    /// Every tenant's events, under `keys`.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self { keys, only: None }
    }

    /// Only the events of `tenants`.
    #[must_use]
    pub fn only(mut self, tenants: HashSet<TenantId>) -> Self {
        self.only = Some(tenants);
        self
    }
}

impl Router for TenantAndType {
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        if self
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(event.tenant()))
        {
            return;
        }
        keys.push(self.keys.tenant_stream(event.tenant()));
        keys.push(
            self.keys
                .aggregate_type_stream(event.tenant(), event.stream.aggregate_type()),
        );
    }
}
