//! The in-process fan-out: one consumer group feeds it, every connection listens to it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use eventsource_core::{EventHandler, LogPosition, RecordedEvent, TenantId};
use tokio::sync::broadcast;

/// Fans each event out to every connection of this process.
///
/// A bounded broadcast: a connection that falls more than `capacity` events behind loses its
/// place in the fan-out and catches up from the store's log instead ([`crate::resume`]), so a
/// slow client never holds the others back nor misses anything. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<RecordedEvent>>,
    fed: Arc<AtomicU64>,
    /// The last position fed per tenant: where a connection without `Last-Event-ID` starts.
    heads: Arc<Mutex<HashMap<TenantId, LogPosition>>>,
}

impl Hub {
    /// A fan-out that keeps up to `capacity` events for lagging connections.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
            fed: Arc::default(),
            heads: Arc::default(),
        }
    }

    /// Listens to every event fed from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RecordedEvent>> {
        self.sender.subscribe()
    }

    /// Sends `event` to every listener (none listening is fine: clients resume from the log).
    pub fn publish(&self, event: RecordedEvent) {
        self.fed.fetch_add(1, Ordering::Relaxed);
        {
            let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
            let head = heads.entry(event.tenant().clone()).or_default();
            *head = (*head).max(event.position);
        }
        let _ = self.sender.send(Arc::new(event));
    }

    /// The last position fed for `tenant`, if any.
    #[must_use]
    pub fn head(&self, tenant: &TenantId) -> Option<LogPosition> {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads.get(tenant).copied()
    }

    /// Events fed so far.
    #[must_use]
    pub fn fed(&self) -> u64 {
        self.fed.load(Ordering::Relaxed)
    }

    /// The consumer-group handler that feeds this hub.
    #[must_use]
    pub fn feed(&self) -> HubFeed {
        HubFeed(self.clone())
    }
}

/// The [`EventHandler`] a consumer group runs to feed a [`Hub`]; it never fails.
#[derive(Debug, Clone)]
pub struct HubFeed(Hub);

impl EventHandler for HubFeed {
    type Error = Infallible;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Infallible> {
        self.0.publish(event.clone());
        Ok(())
    }
}
