//! The event-bus contract as reusable async tests.
//!
//! Every [`EventBus`] adapter runs the same cases with
//! [`bus_conformance_tests!`](crate::bus_conformance_tests). Each case builds its own bus from
//! the factory expression and panics on the first violation.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::bus::{
    BoxError, BusError, BusEvent, BusHandler, DEAD_LETTER_FIELD, EventBus, Pattern, Priority,
    SubscribeOptions,
};

/// Expands to one `#[tokio::test]` per bus conformance case for the bus built by the
/// expression, evaluated afresh for every case.
///
/// - `bus_conformance_tests!(expr)`: a bus built synchronously;
/// - `bus_conformance_tests!(async expr)`: `expr` is a future of the bus;
/// - `bus_conformance_tests!(optional async expr)`: `expr` is a future of `Option<bus>`;
///   `None` skips the case (a service URL unset outside CI, say).
///
/// The bus type must implement [`EventBus`]. The calling crate needs `tokio` with the `macros`
/// and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! bus_conformance_tests {
    (optional async $bus:expr) => {
        $crate::bus_conformance_tests!(@cases (async { $bus.await }) ;
            patterns_route_by_the_documented_rule,
            a_group_shares_events_while_broadcast_copies_them,
            failing_handlers_are_retried_then_dead_lettered,
            a_dead_letter_topic_the_pattern_matches_is_refused,
            unsubscribed_handlers_receive_nothing_more,
            can_handle_filters_events,
            queued_events_are_handled_most_urgent_first,
            batches_and_stats_are_counted,
            malformed_topics_are_rejected,
        );
    };
    (async $bus:expr) => {
        $crate::bus_conformance_tests!(optional async async { ::core::option::Option::Some($bus.await) });
    };
    ($bus:expr) => {
        $crate::bus_conformance_tests!(optional async async { ::core::option::Option::Some($bus) });
    };
    (@cases $make:expr ; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let ::core::option::Option::Some(bus) = $make.await {
                    $crate::testing::conformance::bus::$case(&bus).await;
                }
            }
        )*
    };
}

/// Long enough for a slow backend, short enough to fail a test that would hang.
const WAIT: Duration = Duration::from_secs(15);

/// Handles that record what they received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<BusEvent>>>);

impl Seen {
    fn handler(&self) -> Arc<dyn BusHandler> {
        let sink = self.clone();
        Arc::new(move |event: BusEvent| {
            sink.0.lock().expect("lock").push(event);
            async { Ok::<(), BoxError>(()) }
        })
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    fn topics(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.topic.clone())
            .collect()
    }

    fn events(&self) -> Vec<BusEvent> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until at least `n` events arrived.
    async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} events, got {}",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Lets in-flight deliveries land, so "nothing more arrived" means something.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn subscribe<B: EventBus + ?Sized>(
    bus: &B,
    pattern: &str,
    handler: Arc<dyn BusHandler>,
    options: SubscribeOptions,
) -> crate::bus::SubscriptionId {
    bus.subscribe(Pattern::parse(pattern).expect("pattern"), handler, options)
        .await
        .expect("subscribing")
}

fn event(topic: &str, n: u64) -> BusEvent {
    BusEvent::new(topic, json!({ "n": n }))
}

fn set(topics: &[&str]) -> BTreeSet<String> {
    topics.iter().map(|t| (*t).to_owned()).collect()
}

/// `analysis.*`, `*.completed`, `*` and a literal each receive exactly their topics.
pub async fn patterns_route_by_the_documented_rule<B: EventBus + ?Sized>(bus: &B) {
    let patterns = ["analysis.*", "*.completed", "*", "analysis.completed"];
    let mut seen = Vec::new();
    for pattern in patterns {
        let s = Seen::default();
        subscribe(bus, pattern, s.handler(), SubscribeOptions::default()).await;
        seen.push(s);
    }
    let topics = [
        "analysis.started",
        "analysis.completed",
        "job.x.completed",
        "other",
    ];
    for (n, topic) in (0..).zip(topics) {
        bus.publish(event(topic, n)).await.expect("publishing");
    }
    let expected = [
        set(&["analysis.started", "analysis.completed"]),
        set(&["analysis.completed", "job.x.completed"]),
        set(&topics),
        set(&["analysis.completed"]),
    ];
    for (s, want) in seen.iter().zip(&expected) {
        s.wait_for(want.len()).await;
    }
    settle().await;
    for ((s, want), pattern) in seen.iter().zip(&expected).zip(patterns) {
        assert_eq!(&s.topics(), want, "pattern {pattern}");
        assert_eq!(s.len(), want.len(), "pattern {pattern} got duplicates");
    }
}

/// Members of one group receive each event once between them; broadcast subscriptions each
/// receive every event.
pub async fn a_group_shares_events_while_broadcast_copies_them<B: EventBus + ?Sized>(bus: &B) {
    let members = [Seen::default(), Seen::default()];
    for m in &members {
        let options = SubscribeOptions::default().with_group("workers");
        subscribe(bus, "orders.*", m.handler(), options).await;
    }
    let copies = [Seen::default(), Seen::default()];
    for c in &copies {
        subscribe(bus, "orders.*", c.handler(), SubscribeOptions::default()).await;
    }
    let events: Vec<BusEvent> = (0..20).map(|n| event("orders.placed", n)).collect();
    bus.publish_batch(events).await.expect("publishing");
    for c in &copies {
        c.wait_for(20).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while members.iter().map(Seen::len).sum::<usize>() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group missed events"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    settle().await;
    let mut shared: Vec<u64> = members
        .iter()
        .flat_map(Seen::events)
        .map(|e| e.payload["n"].as_u64().expect("n"))
        .collect();
    shared.sort_unstable();
    assert_eq!(
        shared,
        (0..20).collect::<Vec<_>>(),
        "each event once per group"
    );
    for c in &copies {
        assert_eq!(
            c.len(),
            20,
            "a broadcast subscription gets every event once"
        );
    }
}

/// A handler that fails twice succeeds on its third attempt; one that always fails is given up
/// after its attempts and its event lands on the dead-letter topic with the reason.
pub async fn failing_handlers_are_retried_then_dead_lettered<B: EventBus + ?Sized>(bus: &B) {
    let attempts = Arc::new(Mutex::new(std::collections::HashMap::<u64, u32>::new()));
    let counter = Arc::clone(&attempts);
    let handler = move |event: BusEvent| {
        let n = event.payload["n"].as_u64().unwrap_or(0);
        let tries = {
            let mut map = counter.lock().expect("lock");
            let t = map.entry(n).or_insert(0);
            *t += 1;
            *t
        };
        async move {
            // Event 0 recovers on its third attempt; event 1 never does.
            if n == 0 && tries >= 3 {
                Ok(())
            } else {
                Err::<(), BoxError>(format!("attempt {tries} of {n} failed").into())
            }
        }
    };
    let dead = Seen::default();
    subscribe(
        bus,
        "failed.payments",
        dead.handler(),
        SubscribeOptions::default(),
    )
    .await;
    let failed_before = bus.stats().failed;
    let options = SubscribeOptions::default()
        .with_max_attempts(3)
        .with_dead_letter_topic("failed.payments");
    subscribe(bus, "payments.*", Arc::new(handler), options).await;
    bus.publish(event("payments.received", 0))
        .await
        .expect("publishing");
    bus.publish(event("payments.received", 1))
        .await
        .expect("publishing");
    dead.wait_for(1).await;
    settle().await;
    let letters = dead.events();
    assert_eq!(
        letters.len(),
        1,
        "only the event that never succeeds is dead-lettered"
    );
    let letter = &letters[0];
    assert_eq!(letter.payload["n"], 1);
    let why = &letter.metadata.extra[DEAD_LETTER_FIELD];
    assert_eq!(why["topic"], "payments.received");
    assert_eq!(why["attempts"], 3);
    assert_eq!(why["error"], "attempt 3 of 1 failed");
    assert_eq!(
        letter
            .metadata
            .causation_id
            .map(|id| id.to_string())
            .as_deref(),
        why["event_id"].as_str(),
        "the dead letter is caused by the original event"
    );
    let attempts = attempts.lock().expect("lock").clone();
    assert_eq!(attempts.get(&0), Some(&3));
    assert_eq!(attempts.get(&1), Some(&3));
    assert_eq!(bus.stats().failed, failed_before + 1);
}

/// A subscription whose pattern matches its own dead-letter topic is refused.
pub async fn a_dead_letter_topic_the_pattern_matches_is_refused<B: EventBus + ?Sized>(bus: &B) {
    let options = SubscribeOptions::default().with_dead_letter_topic("payments.failed");
    let handler = Seen::default().handler();
    let pattern = Pattern::parse("payments.*").expect("pattern");
    let err = bus
        .subscribe(pattern, handler, options)
        .await
        .expect_err("a dead-letter loop");
    assert!(matches!(err, BusError::DeadLetterLoop { .. }), "{err}");
    assert_eq!(bus.stats().active_subscriptions, 0);
}

/// After `unsubscribe` returns, the handler receives nothing; a second call says so.
pub async fn unsubscribed_handlers_receive_nothing_more<B: EventBus + ?Sized>(bus: &B) {
    let s = Seen::default();
    let before = bus.stats().active_subscriptions;
    let id = subscribe(bus, "news.*", s.handler(), SubscribeOptions::default()).await;
    assert_eq!(bus.stats().active_subscriptions, before + 1);
    bus.publish(event("news.one", 1)).await.expect("publishing");
    s.wait_for(1).await;
    assert!(bus.unsubscribe(id).await.expect("unsubscribing"));
    assert_eq!(bus.stats().active_subscriptions, before);
    bus.publish(event("news.two", 2)).await.expect("publishing");
    settle().await;
    assert_eq!(s.topics(), set(&["news.one"]));
    assert!(!bus.unsubscribe(id).await.expect("unsubscribing twice"));
}

struct OnlyEven(Seen);

impl BusHandler for OnlyEven {
    fn handle<'a>(
        &'a self,
        event: &'a BusEvent,
    ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
        self.0.0.lock().expect("lock").push(event.clone());
        Box::pin(async { Ok(()) })
    }

    fn can_handle(&self, event: &BusEvent) -> bool {
        event.payload["n"].as_u64().is_some_and(|n| n % 2 == 0)
    }
}

/// A handler only receives the events its `can_handle` accepts.
pub async fn can_handle_filters_events<B: EventBus + ?Sized>(bus: &B) {
    let s = Seen::default();
    subscribe(
        bus,
        "*",
        Arc::new(OnlyEven(s.clone())),
        SubscribeOptions::default(),
    )
    .await;
    let events = (0..6).map(|n| event("numbers", n)).collect();
    bus.publish_batch(events).await.expect("publishing");
    s.wait_for(3).await;
    settle().await;
    let got: Vec<u64> = s
        .events()
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(got, [0, 2, 4]);
}

/// Events waiting for a busy subscriber are handled most urgent first, in publication order
/// within a priority.
pub async fn queued_events_are_handled_most_urgent_first<B: EventBus + ?Sized>(bus: &B) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (g, s) = (Arc::clone(&gate), Arc::clone(&seen));
    let handler = move |event: BusEvent| {
        let (g, s) = (Arc::clone(&g), Arc::clone(&s));
        async move {
            // The first event holds the subscriber until the rest are queued.
            if event.payload == "first" {
                let _permit = g.acquire().await;
            }
            let name = event.payload.as_str().unwrap_or_default().to_owned();
            s.lock().expect("lock").push(name);
            Ok::<(), BoxError>(())
        }
    };
    subscribe(bus, "work", Arc::new(handler), SubscribeOptions::default()).await;
    bus.publish(BusEvent::new("work", "first".into()))
        .await
        .expect("publishing");
    settle().await;
    for (name, priority) in [
        ("low", Priority::Low),
        ("normal-1", Priority::Normal),
        ("critical", Priority::Critical),
        ("normal-2", Priority::Normal),
        ("high", Priority::High),
    ] {
        let event = BusEvent::new("work", name.into()).with_priority(priority);
        bus.publish(event).await.expect("publishing");
    }
    gate.add_permits(1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.lock().expect("lock").len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        *seen.lock().expect("lock"),
        ["first", "critical", "high", "normal-1", "normal-2", "low"]
    );
}

/// Batches keep their order, and `published` counts every event; the bus reports healthy.
pub async fn batches_and_stats_are_counted<B: EventBus + ?Sized>(bus: &B) {
    let health = bus.health().await;
    assert!(health.healthy, "{health:?}");
    let s = Seen::default();
    subscribe(bus, "ticks", s.handler(), SubscribeOptions::default()).await;
    let before = bus.stats().published;
    bus.publish_batch((0..5).map(|n| event("ticks", n)).collect())
        .await
        .expect("publishing");
    bus.publish(event("ticks", 5)).await.expect("publishing");
    assert_eq!(bus.stats().published, before + 6);
    s.wait_for(6).await;
    let got: Vec<u64> = s
        .events()
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        got,
        (0..6).collect::<Vec<_>>(),
        "one subscriber sees a batch in order"
    );
}

/// A malformed topic is an error, and a batch holding one publishes nothing.
pub async fn malformed_topics_are_rejected<B: EventBus + ?Sized>(bus: &B) {
    let s = Seen::default();
    subscribe(bus, "*", s.handler(), SubscribeOptions::default()).await;
    let before = bus.stats().published;
    let err = bus
        .publish(event("bad..topic", 0))
        .await
        .expect_err("bad topic");
    assert!(matches!(err, BusError::Pattern(_)), "{err}");
    let batch = vec![event("fine", 1), event("bad topic", 2)];
    assert!(bus.publish_batch(batch).await.is_err());
    assert_eq!(bus.stats().published, before);
    settle().await;
    assert_eq!(s.len(), 0);
}
