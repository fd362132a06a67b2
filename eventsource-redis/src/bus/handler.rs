//! The bridge from a consumer runner's entries to a bus subscription.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use eventsource_core::bus::{BusHandler, DeliveryFailure, Pattern, SubscribeOptions, deliver};
use eventsource_core::{EventHandler, RecordedEvent};

use super::{Outlet, entry};

/// Hands the runner's entries that match the pattern to the subscription's handler, with the
/// bus's retries; a given-up event goes to the dead-letter topic, or, without one, to the
/// runner's dead-letter stream.
pub(crate) struct Subscriber {
    pub(crate) pattern: Pattern,
    pub(crate) handler: Arc<dyn BusHandler>,
    pub(crate) options: SubscribeOptions,
    pub(crate) bus: Arc<Outlet>,
}

/// Why a delivery failed for the runner.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    /// The handler gave up: the runner dead-letters the entry at once.
    #[error("{}", .0.error)]
    GaveUp(DeliveryFailure),
    /// The dead letter could not be published: the runner redelivers later.
    #[error("publishing the dead letter failed")]
    DeadLetter(#[source] eventsource_core::bus::BusError),
    /// The entry's JSON is not a bus event: the runner dead-letters the entry at once.
    #[error("malformed bus entry: {0}")]
    Malformed(#[source] serde_json::Error),
}

impl Subscriber {
    /// Delivers one event (also used by the live path); `Err` only when the dead letter could
    /// not be published.
    pub(crate) async fn handle_event(
        &self,
        event: &eventsource_core::BusEvent,
    ) -> Result<(), Failed> {
        if !self.pattern.matches(&event.topic) {
            return Ok(());
        }
        let Err(failure) = deliver(&*self.handler, event, self.options.retry()).await else {
            return Ok(());
        };
        tracing::warn!(topic = %event.topic, id = %event.id, attempts = failure.attempts, error = %failure.error, "bus handler gave up");
        let Some(topic) = self.options.dead_letter_topic() else {
            self.bus.failed.fetch_add(1, Ordering::Relaxed);
            return Err(Failed::GaveUp(failure));
        };
        let letter = event.dead_letter(topic, &failure.error, failure.attempts);
        self.bus
            .publish(vec![letter])
            .await
            .map_err(Failed::DeadLetter)?;
        self.bus.failed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl EventHandler for Subscriber {
    type Error = Failed;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        // Every subscription reads every event of its bus: skip the parse (or the copy) for
        // the unmatched.
        if !self.pattern.matches(&entry::topic(event)) {
            return Ok(());
        }
        let event = entry::to_bus_event(event).map_err(Failed::Malformed)?;
        self.handle_event(&event).await
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        matches!(error, Failed::GaveUp(_) | Failed::Malformed(_))
    }
}
