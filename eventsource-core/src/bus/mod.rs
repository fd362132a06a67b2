//! The event bus: publish events on topics, subscribe handlers by pattern.
//!
//! - [`EventBus`]: the facade every adapter implements (object safe: `Arc<dyn EventBus>`);
//! - [`InMemoryBus`]: the embedded default, with a bounded history per topic for tests;
//! - [`Pattern`]: the topic-matching rule (`analysis.*`, `*.completed`, `*`);
//! - [`BusHandler`], [`deliver`]: handlers with a `can_handle` filter, and the retry loop;
//! - [`SubscribeOptions`]: group or broadcast, retries, dead-letter topic, durability;
//! - [`BatchingPublisher`]: publishes in batches, at a size or an interval;
//! - [`BusConfig`]: the adapter chosen from the environment.
//!
//! `eventsource-redis` provides the Redis adapter behind the same trait.
//!
//! # Delivery guarantee
//!
//! At least once per subscription (per group for [`Delivery::Group`]): a handler may see an
//! event again after a crash or a retry, so it deduplicates on [`BusEvent::id`]. An event a
//! handler keeps failing is retried per [`SubscribeOptions::retry`], then dead-lettered.

mod batch;
mod config;
mod event;
mod handler;
mod memory;
mod options;
mod pattern;

use std::fmt;

use futures::future::BoxFuture;
use std::sync::Arc;
use uuid::Uuid;

pub use batch::BatchingPublisher;
pub use config::{AdapterKind, BusConfig, ConfigError};
pub use event::{BusEvent, DEAD_LETTER_FIELD, Priority};
pub use handler::{BoxError, BusHandler, DeliveryFailure, deliver};
pub use memory::{DEFAULT_MAX_HISTORY, InMemoryBus};
pub use options::{Delivery, SubscribeOptions};
pub use pattern::{Pattern, PatternError, validate_topic};

/// Identifies a subscription for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(Uuid);

impl SubscriptionId {
    /// A fresh id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SubscriptionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.simple().fmt(f)
    }
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The topic or pattern is malformed.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The adapter cannot do what the options ask (a group on a live-only path, say).
    #[error("unsupported by the {adapter} bus: {what}")]
    Unsupported {
        /// The adapter's name.
        adapter: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
    /// The subscription's pattern matches its own dead-letter topic, so a dead letter would
    /// come back to the handler that gave it up, forever.
    #[error("pattern `{pattern}` matches its own dead-letter topic `{topic}`")]
    DeadLetterLoop {
        /// The subscription's pattern.
        pattern: String,
        /// Its dead-letter topic.
        topic: String,
    },
    /// Subscribing needs a Tokio runtime to run the handler on.
    #[error("no Tokio runtime to run the subscription on")]
    NoRuntime,
    /// The backend failed (connection, timeout …).
    #[error("event bus backend failed")]
    Backend(#[source] BoxError),
}

/// Counters of a bus since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Events accepted by [`EventBus::publish`] and [`EventBus::publish_batch`].
    pub published: u64,
    /// Deliveries given up after their retries (dead-lettered or dropped).
    pub failed: u64,
    /// Subscriptions of this bus handle not yet unsubscribed.
    pub active_subscriptions: u64,
}

/// Whether a bus can currently do its work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusHealth {
    /// The adapter's name (`"memory"`, `"redis"`).
    pub adapter: &'static str,
    /// Whether the backend answered.
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub detail: Option<String>,
}

impl BusHealth {
    /// A healthy report for `adapter`.
    #[must_use]
    pub fn healthy(adapter: &'static str) -> Self {
        Self {
            adapter,
            healthy: true,
            detail: None,
        }
    }

    /// An unhealthy report for `adapter`, saying why.
    #[must_use]
    pub fn unhealthy(adapter: &'static str, detail: impl Into<String>) -> Self {
        Self {
            adapter,
            healthy: false,
            detail: Some(detail.into()),
        }
    }
}

/// The event-bus facade: publish events on topics, subscribe handlers by [`Pattern`].
///
/// Object safe: hold it as `Arc<dyn EventBus>` to pick the adapter at run time. Subscribing
/// spawns the subscription's worker on the current Tokio runtime; [`unsubscribe`] stops it.
///
/// ```
/// # use std::sync::Arc;
/// # use eventsource_core::bus::{BoxError, BusEvent, EventBus, InMemoryBus, Pattern, SubscribeOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let id = bus
///     .subscribe(
///         Pattern::parse("analysis.*")?,
///         Arc::new(move |event: BusEvent| {
///             let tx = tx.clone();
///             async move { tx.send(event.topic).map_err(BoxError::from) }
///         }),
///         SubscribeOptions::default(),
///     )
///     .await?;
/// bus.publish(BusEvent::new("analysis.completed", serde_json::json!({}))).await?;
/// assert_eq!(rx.recv().await.as_deref(), Some("analysis.completed"));
/// assert!(bus.unsubscribe(id).await?);
/// assert_eq!(bus.stats().published, 1);
/// # Ok(()) }
/// ```
///
/// [`unsubscribe`]: EventBus::unsubscribe
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Publishes one event.
    fn publish(&self, event: BusEvent) -> BoxFuture<'_, Result<(), BusError>>;

    /// Publishes several events, in order; a malformed topic rejects the whole batch before
    /// anything is published.
    fn publish_batch(&self, events: Vec<BusEvent>) -> BoxFuture<'_, Result<(), BusError>>;

    /// Delivers the events whose topic matches `pattern` to `handler` until unsubscribed.
    ///
    /// When this returns, the subscription receives every event published afterwards.
    fn subscribe(
        &self,
        pattern: Pattern,
        handler: Arc<dyn BusHandler>,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<SubscriptionId, BusError>>;

    /// Stops a subscription; `false` when it was unknown (or already stopped). No event
    /// published after this returns reaches the handler.
    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<bool, BusError>>;

    /// Whether the backend answers.
    fn health(&self) -> BoxFuture<'_, BusHealth>;

    /// Counters since the bus was created.
    fn stats(&self) -> BusStats;
}

/// Checks a subscription before an adapter starts it: the dead-letter topic must be well formed
/// and must not match the pattern ([`BusError::DeadLetterLoop`]).
pub fn check_subscription(pattern: &Pattern, options: &SubscribeOptions) -> Result<(), BusError> {
    if let Some(topic) = options.dead_letter_topic() {
        validate_topic(topic)?;
        if pattern.matches(topic) {
            return Err(BusError::DeadLetterLoop {
                pattern: pattern.to_string(),
                topic: topic.to_owned(),
            });
        }
    }
    Ok(())
}

/// Checks the topic of every event of a batch; adapters call it before publishing anything.
pub fn validate_batch(events: &[BusEvent]) -> Result<(), BusError> {
    events
        .iter()
        .try_for_each(|e| validate_topic(&e.topic))
        .map_err(BusError::from)
}
