//! How a subscription receives events.

use std::time::Duration;

use crate::retry::RetryPolicy;

/// Who among a topic's subscribers receives an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Every such subscription receives its own copy (the default).
    Broadcast,
    /// Subscriptions that share the group name share the work: each event goes to one of
    /// them. Give a group's members the same pattern.
    Group(String),
}

/// Options of [`EventBus::subscribe`](super::EventBus::subscribe).
///
/// By default: broadcast, durable where the adapter can be, 3 attempts with exponential
/// backoff from 10 ms, and no dead-letter topic (a given-up event is counted in
/// [`BusStats::failed`](super::BusStats::failed) and logged).
///
/// ```
/// # use eventsource_core::bus::{Delivery, SubscribeOptions};
/// let options = SubscribeOptions::default()
///     .with_group("billing")
///     .with_max_attempts(5)
///     .with_dead_letter_topic("billing.failed");
/// assert_eq!(options.delivery(), &Delivery::Group("billing".into()));
/// ```
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub(crate) delivery: Delivery,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) durable: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            delivery: Delivery::Broadcast,
            retry: RetryPolicy::default()
                .with_max_attempts(3)
                .with_base_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_secs(1)),
            dead_letter_topic: None,
            durable: true,
        }
    }
}

impl SubscribeOptions {
    /// Joins the load-balanced group `name`.
    #[must_use]
    pub fn with_group(mut self, name: impl Into<String>) -> Self {
        self.delivery = Delivery::Group(name.into());
        self
    }

    /// Receives every event (the default).
    #[must_use]
    pub fn broadcast(mut self) -> Self {
        self.delivery = Delivery::Broadcast;
        self
    }

    /// The retry policy of each delivery.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Handler calls per event, the first included.
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.retry = self.retry.with_max_attempts(attempts);
        self
    }

    /// Publishes each given-up event to `topic` as
    /// [`BusEvent::dead_letter`](super::BusEvent::dead_letter).
    #[must_use]
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Asks for no durability: the adapter may use a live, low-latency path that delivers
    /// only while the subscriber is connected (Redis Pub/Sub). Live subscriptions broadcast.
    #[must_use]
    pub fn live(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Who receives events.
    #[must_use]
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The retry policy.
    #[must_use]
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Where given-up events go.
    #[must_use]
    pub fn dead_letter_topic(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    /// Whether the subscription asked for durable delivery.
    #[must_use]
    pub fn is_durable(&self) -> bool {
        self.durable
    }
}
