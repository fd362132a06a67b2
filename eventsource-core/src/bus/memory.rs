//! The in-process bus: the embedded default, and the one tests inspect.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, BusEvent, BusHandler, BusHealth, BusStats, Delivery, EventBus, Pattern,
    SubscribeOptions, SubscriptionId, check_subscription, deliver, validate_batch,
};

/// Events kept per topic by default (`EVENT_BUS_MEMORY_MAX_HISTORY` overrides it through
/// [`BusConfig`](super::BusConfig)).
pub const DEFAULT_MAX_HISTORY: usize = 1_000;

/// An [`EventBus`] inside the process: each subscription has a worker task that hands it
/// queued events, most urgent [`Priority`](super::Priority) first, in publication order within
/// a priority.
///
/// A group's events go round-robin to the group's members whose pattern matches. The bus keeps
/// the last `max_history` events of each topic for tests ([`history`](Self::history),
/// [`clear_history`](Self::clear_history)). Nothing survives the process: use the Redis
/// adapter for durable or cross-process delivery.
///
/// ```
/// # use eventsource_core::bus::{BusEvent, EventBus, InMemoryBus};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = InMemoryBus::with_max_history(2);
/// for n in 0..3 {
///     bus.publish(BusEvent::new("test.topic", serde_json::json!(n))).await?;
/// }
/// let kept: Vec<_> = bus.history("test.topic").into_iter().map(|e| e.payload).collect();
/// assert_eq!(kept, [serde_json::json!(1), serde_json::json!(2)]);
/// bus.clear_history();
/// assert!(bus.history("test.topic").is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_history: usize,
    state: Mutex<State>,
    published: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: HashMap<SubscriptionId, Subscription>,
    /// Round-robin cursor per group.
    cursors: HashMap<String, usize>,
    history: HashMap<String, VecDeque<BusEvent>>,
    /// Publication counter, so that equal priorities keep publication order.
    sequence: u64,
}

#[derive(Debug)]
struct Subscription {
    pattern: Pattern,
    handler: Arc<dyn BusHandler>,
    group: Option<String>,
    queue: mpsc::UnboundedSender<Queued>,
    stop: CancellationToken,
}

/// A queued event, ordered most urgent first, then oldest first.
#[derive(Debug)]
struct Queued {
    sequence: u64,
    event: BusEvent,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.sequence == other.sequence
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.event
            .priority
            .cmp(&other.event.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryBus {
    /// A bus keeping [`DEFAULT_MAX_HISTORY`] events per topic.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_history(DEFAULT_MAX_HISTORY)
    }

    /// A bus keeping the last `max_history` events of each topic (0 keeps none).
    #[must_use]
    pub fn with_max_history(max_history: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_history,
                state: Mutex::default(),
                published: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// The events kept for `topic`, oldest first.
    #[must_use]
    pub fn history(&self, topic: &str) -> Vec<BusEvent> {
        self.inner
            .lock()
            .history
            .get(topic)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every topic's history.
    pub fn clear_history(&self) {
        self.inner.lock().history.clear();
    }

    fn publish_now(&self, events: Vec<BusEvent>) -> Result<(), BusError> {
        validate_batch(&events)?;
        let count = events.len() as u64;
        // `can_handle` is user code, which may call back into the bus (stats, history,
        // publish, subscribe): it runs on a copy of the matching handlers, outside the lock.
        let candidates: Vec<Vec<(SubscriptionId, Arc<dyn BusHandler>)>> = {
            let state = self.inner.lock();
            events
                .iter()
                .map(|event| {
                    let mut matching: Vec<_> = state
                        .subscriptions
                        .iter()
                        .filter(|(_, sub)| sub.pattern.matches(&event.topic))
                        .map(|(id, sub)| (*id, Arc::clone(&sub.handler)))
                        .collect();
                    // Stable member order, so round-robin is fair.
                    matching.sort_by_key(|(id, _)| *id);
                    matching
                })
                .collect()
        };
        let accepted: Vec<Vec<SubscriptionId>> = events
            .iter()
            .zip(candidates)
            .map(|(event, matching)| {
                matching
                    .into_iter()
                    .filter(|(_, handler)| handler.can_handle(event))
                    .map(|(id, _)| id)
                    .collect()
            })
            .collect();
        let mut state = self.inner.lock();
        for (event, accepted) in events.into_iter().zip(accepted) {
            state.sequence += 1;
            let sequence = state.sequence;
            if self.inner.max_history > 0 {
                let history = state.history.entry(event.topic.clone()).or_default();
                if history.len() == self.inner.max_history {
                    history.pop_front();
                }
                history.push_back(event.clone());
            }
            // Broadcast subscriptions each get a copy; a group's candidates take turns.
            let mut groups: HashMap<&str, Vec<&Subscription>> = HashMap::new();
            let mut targets: Vec<&Subscription> = Vec::new();
            for id in &accepted {
                // Gone if unsubscribed meanwhile: nothing is delivered after `unsubscribe`.
                let Some(sub) = state.subscriptions.get(id) else {
                    continue;
                };
                match &sub.group {
                    None => targets.push(sub),
                    Some(group) => groups.entry(group).or_default().push(sub),
                }
            }
            let mut turns = Vec::new();
            for (group, members) in groups {
                let cursor = state.cursors.get(group).copied().unwrap_or(0);
                targets.push(members[cursor % members.len()]);
                turns.push((group.to_owned(), cursor.wrapping_add(1)));
            }
            for sub in targets {
                // A closed queue means the worker stopped; unsubscribe removes it.
                let _ = sub.queue.send(Queued {
                    sequence,
                    event: event.clone(),
                });
            }
            state.cursors.extend(turns);
        }
        drop(state);
        self.inner.published.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    fn subscribe_now(
        &self,
        pattern: Pattern,
        handler: Arc<dyn BusHandler>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BusError> {
        check_subscription(&pattern, &options)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BusError::NoRuntime)?;
        let id = SubscriptionId::new();
        let (queue, inbox) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let group = match &options.delivery {
            Delivery::Broadcast => None,
            Delivery::Group(name) => Some(name.clone()),
        };
        runtime.spawn(worker(
            Arc::downgrade(&self.inner),
            Arc::clone(&handler),
            options,
            inbox,
            stop.clone(),
        ));
        self.inner.lock().subscriptions.insert(
            id,
            Subscription {
                pattern,
                handler,
                group,
                queue,
                stop,
            },
        );
        Ok(id)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands a subscription its queued events, most urgent first, until stopped.
async fn worker(
    bus: Weak<Inner>,
    handler: Arc<dyn BusHandler>,
    options: SubscribeOptions,
    mut inbox: mpsc::UnboundedReceiver<Queued>,
    stop: CancellationToken,
) {
    let mut ready = BinaryHeap::new();
    loop {
        if ready.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                next = inbox.recv() => match next {
                    Some(queued) => ready.push(queued),
                    None => return,
                },
            }
        }
        while let Ok(queued) = inbox.try_recv() {
            ready.push(queued);
        }
        let Some(Queued { event, .. }) = ready.pop() else {
            continue;
        };
        if stop.is_cancelled() {
            return;
        }
        let Err(failure) = deliver(&*handler, &event, &options.retry).await else {
            continue;
        };
        let Some(inner) = bus.upgrade() else { return };
        inner.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %event.topic, id = %event.id, attempts = failure.attempts, error = %failure.error, "bus handler gave up");
        if let Some(topic) = &options.dead_letter_topic {
            let letter = event.dead_letter(topic, &failure.error, failure.attempts);
            if let Err(e) = (InMemoryBus { inner }).publish_now(vec![letter]) {
                tracing::error!(error = %e, "dead letter could not be published");
            }
        }
    }
}

impl EventBus for InMemoryBus {
    fn publish(&self, event: BusEvent) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.publish_now(vec![event]) })
    }

    fn publish_batch(&self, events: Vec<BusEvent>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.publish_now(events) })
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        handler: Arc<dyn BusHandler>,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<SubscriptionId, BusError>> {
        Box::pin(async move { self.subscribe_now(pattern, handler, options) })
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            let removed = self.inner.lock().subscriptions.remove(&id);
            Ok(removed.is_some_and(|sub| {
                sub.stop.cancel();
                true
            }))
        })
    }

    fn health(&self) -> BoxFuture<'_, BusHealth> {
        Box::pin(async { BusHealth::healthy("memory") })
    }

    fn stats(&self) -> BusStats {
        BusStats {
            published: self.inner.published.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            active_subscriptions: self.inner.lock().subscriptions.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BoxError;
    use std::time::Duration;

    crate::bus_conformance_tests!(InMemoryBus::new());

    fn recorder() -> (Arc<dyn BusHandler>, Arc<Mutex<Vec<BusEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let handler = move |event: BusEvent| {
            sink.lock().unwrap().push(event);
            async { Ok::<(), BoxError>(()) }
        };
        (Arc::new(handler), seen)
    }

    #[tokio::test]
    async fn group_members_take_turns() {
        let bus = InMemoryBus::new();
        let (a, seen_a) = recorder();
        let (b, seen_b) = recorder();
        for handler in [a, b] {
            bus.subscribe(
                Pattern::all(),
                handler,
                SubscribeOptions::default().with_group("g"),
            )
            .await
            .unwrap();
        }
        for n in 0..10 {
            bus.publish(BusEvent::new("t", serde_json::json!(n)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen_a.lock().unwrap().len(), 5);
        assert_eq!(seen_b.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn history_is_bounded_per_topic() {
        let bus = InMemoryBus::with_max_history(3);
        for n in 0..5 {
            bus.publish_batch(vec![
                BusEvent::new("a", serde_json::json!(n)),
                BusEvent::new("b", serde_json::json!(n)),
            ])
            .await
            .unwrap();
        }
        let a: Vec<_> = bus.history("a").into_iter().map(|e| e.payload).collect();
        assert_eq!(
            a,
            [
                serde_json::json!(2),
                serde_json::json!(3),
                serde_json::json!(4)
            ]
        );
        assert_eq!(bus.history("b").len(), 3);
        assert!(InMemoryBus::with_max_history(0).history("a").is_empty());
    }

    #[test]
    fn subscribing_outside_a_runtime_is_an_error() {
        let bus = InMemoryBus::new();
        let (handler, _) = recorder();
        let result = futures::executor::block_on(bus.subscribe(
            Pattern::all(),
            handler,
            SubscribeOptions::default(),
        ));
        assert!(matches!(result, Err(BusError::NoRuntime)));
    }

    /// A handler whose `can_handle` reads the bus it is subscribed to.
    struct Curious(InMemoryBus);

    impl BusHandler for Curious {
        fn handle<'a>(
            &'a self,
            _event: &'a BusEvent,
        ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async { Ok(()) })
        }
        fn can_handle(&self, event: &BusEvent) -> bool {
            self.0.stats().active_subscriptions > 0 && !self.0.history(&event.topic).is_empty()
        }
    }

    #[tokio::test]
    async fn can_handle_may_call_back_into_the_bus() {
        let bus = InMemoryBus::new();
        bus.subscribe(
            Pattern::all(),
            Arc::new(Curious(bus.clone())),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
        let (done, returned) = std::sync::mpsc::channel();
        let publisher = bus.clone();
        // On its own thread: a deadlock on the bus's lock would block the test's runtime.
        std::thread::spawn(move || {
            let result =
                futures::executor::block_on(publisher.publish(BusEvent::new("a.b", 1.into())));
            let _ = done.send(result.is_ok());
        });
        let ok = returned
            .recv_timeout(Duration::from_secs(5))
            .expect("publish returns: can_handle runs outside the bus's lock");
        assert!(ok);
        assert_eq!(bus.stats().published, 1);
    }
}
