//! Routing: which stream keys the relay adds an event to.

use eventsource_core::RecordedEvent;

use crate::keys::Keys;

/// Decides which stream keys an event is published to.
///
/// An event may go to several keys (for example its tenant's stream and its type's stream);
/// each key receives the events routed to it in log order, each exactly once. Changing the
/// router of a running relay only affects events published afterwards.
pub trait Router: Send + Sync {
    /// Appends the keys `event` is published to onto `keys`; none skips the event.
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>);
}

/// One stream per tenant, `es:{<tenant>}:events` (the default).
#[derive(Debug, Clone, Default)]
pub struct PerTenant {
    keys: Keys,
}

impl PerTenant {
    /// Routes under the given key prefix.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

impl Router for PerTenant {
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        keys.push(self.keys.tenant_stream(event.tenant()));
    }
}

/// One stream per tenant and aggregate type, `es:{<tenant>}:type:<aggregate type>`.
#[derive(Debug, Clone, Default)]
pub struct PerAggregateType {
    keys: Keys,
}

impl PerAggregateType {
    /// Routes under the given key prefix.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

impl Router for PerAggregateType {
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        keys.push(
            self.keys
                .aggregate_type_stream(event.tenant(), event.stream.aggregate_type()),
        );
    }
}

/// One stream per tenant and event type (a category), `es:{<tenant>}:event:<event type>`.
#[derive(Debug, Clone, Default)]
pub struct PerEventType {
    keys: Keys,
}

impl PerEventType {
    /// Routes under the given key prefix.
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

impl Router for PerEventType {
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        keys.push(
            self.keys
                .event_type_stream(event.tenant(), &event.event_type),
        );
    }
}

/// Any closure `Fn(&RecordedEvent, &mut Vec<String>)` routes too.
impl<F> Router for F
where
    F: Fn(&RecordedEvent, &mut Vec<String>) + Send + Sync,
{
    fn route(&self, event: &RecordedEvent, keys: &mut Vec<String>) {
        self(event, keys);
    }
}
