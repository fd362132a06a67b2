//! Consumer runners: ack after handling, reclaim, retries, dead letters, deleted entries,
//! trimming.
#![allow(missing_docs)]

mod support;

use support::{Topology, on_both_topologies};

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{
    EventHandler, InMemoryCheckpointStore, InMemoryEventStore, LogPosition, RecordedEvent,
    RetryPolicy,
};
use eventsource_redis::{
    ConsumerRunner, InMemoryProjection, Keys, PerTenant, ProjectionHandler, RedisClient,
    RedisConnection, RedisRelay, RelayOptions, RunnerOptions,
};
use redis::AsyncCommands as _;
use redis::streams::{StreamPendingReply, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("sink refused {0}")]
struct Refused(String);

/// Records every event it sees; fails on `Poison` events while `poison` is set.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<RecordedEvent>>>,
    poison: Arc<AtomicBool>,
}

impl Recorder {
    fn positions(&self) -> Vec<LogPosition> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect()
    }
}

impl EventHandler for Recorder {
    type Error = Refused;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        if event.event_type == "Poison" && self.poison.load(Ordering::SeqCst) {
            return Err(Refused(event.event_id.to_string()));
        }
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }
}

struct Setup {
    client: RedisClient,
    conn: RedisConnection,
    store: InMemoryEventStore,
    key: String,
}

/// A client, a connection and a fresh tenant stream on `topology`; `None` when it is not
/// configured outside CI.
async fn setup(topology: Topology) -> Option<Setup> {
    let (client, conn) = support::connect_to(topology).await?;
    let keys = Keys::new(&support::prefix());
    Some(Setup {
        client,
        conn,
        store: InMemoryEventStore::new(),
        key: keys.tenant_stream(&"acme".into()),
    })
}

impl Setup {
    /// Publishes everything in the store to the tenant stream.
    async fn publish(&self) {
        let prefix = self.key.split(':').next().unwrap().to_owned();
        let mut relay = RedisRelay::new(
            self.store.clone(),
            InMemoryCheckpointStore::new(),
            self.conn.clone(),
            "test",
            RelayOptions::default(),
        )
        .with_router(PerTenant::new(Keys::new(&prefix)));
        relay.catch_up().await.unwrap();
    }

    fn runner<H: EventHandler>(
        &self,
        group: &str,
        consumer: &str,
        handler: H,
        options: RunnerOptions,
    ) -> ConsumerRunner<H> {
        ConsumerRunner::new(
            self.conn.clone(),
            self.client.clone(),
            [self.key.clone()],
            group,
            consumer,
            handler,
            options,
        )
        .with_store(self.store.clone())
    }

    async fn pending(&self, group: &str) -> usize {
        let reply: StreamPendingReply = self.conn.clone().xpending(&self.key, group).await.unwrap();
        reply.count()
    }
}

fn fast() -> RunnerOptions {
    RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(100))
        .with_idle_reclaim(Duration::from_millis(300))
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(2)
                .with_base_delay(Duration::from_millis(1)),
        )
}

async fn wait(what: &str, check: impl Fn() -> bool) {
    let ok = support::eventually(Duration::from_secs(10), || {
        let ok = check();
        async move { ok }
    })
    .await;
    assert!(ok, "timed out waiting until {what}");
}

async fn handles_every_entry_in_order_and_acks_it(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    for i in 0..5 {
        support::append(
            &s.store,
            &support::stream("acme", "order", &format!("o-{i}")),
            20,
            "Placed",
        )
        .await;
    }
    s.publish().await;
    let recorder = Recorder::default();
    let runner = s.runner("g", "c1", recorder.clone(), fast().with_concurrency(4));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("all 100 handled", || {
        recorder.seen.lock().unwrap().len() == 100
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(s.pending("g").await, 0);
    // Per aggregate stream, versions arrive in order.
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in recorder.seen.lock().unwrap().iter() {
        per_stream
            .entry(e.stream.to_string())
            .or_default()
            .push(e.version.get());
    }
    for (stream, versions) in per_stream {
        assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "{stream}");
    }
}

/// Applies the event, then "dies" (never returns) before the runner can ack.
struct DiesBeforeAck(Arc<ProjectionHandler<Sum>>);
type Sum = InMemoryProjection<i64, fn(&mut i64, &RecordedEvent)>;

impl EventHandler for DiesBeforeAck {
    type Error = std::convert::Infallible;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.handle(event).await?;
        std::future::pending().await
    }
}

struct Shared(Arc<ProjectionHandler<Sum>>);
impl EventHandler for Shared {
    type Error = std::convert::Infallible;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.handle(event).await
    }
}

fn add(total: &mut i64, event: &RecordedEvent) {
    *total += event.payload["n"].as_i64().unwrap_or(0) + 1;
}

async fn a_consumer_killed_between_handling_and_ack_is_reclaimed_and_the_read_model_stays_right(
    topology: Topology,
) {
    let Some(s) = setup(topology).await else {
        return;
    };
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-1"),
        10,
        "Placed",
    )
    .await;
    s.publish().await;
    let projection: Arc<ProjectionHandler<Sum>> = Arc::new(ProjectionHandler::new(
        InMemoryProjection::new(0, add as fn(&mut i64, &RecordedEvent)),
    ));
    let expected: i64 = (1..=10).sum();

    // Consumer A applies the first entry and dies before acking it.
    let a = s.runner("proj", "a", DiesBeforeAck(projection.clone()), fast());
    let task = tokio::spawn(a.run(CancellationToken::new()));
    wait("a handled one entry", || {
        projection.projection().state() > 0
    })
    .await;
    task.abort();
    let _ = task.await;
    // A read the whole batch: all 10 are pending for it.
    assert_eq!(s.pending("proj").await, 10);

    // Consumer B gets it after the idle threshold; the duplicate is skipped.
    let b = s.runner("proj", "b", Shared(projection.clone()), fast());
    let counters = b.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(b.run(stop.clone()));
    wait("b handled the rest", || counters.handled() == 10).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(counters.reclaimed() >= 1);
    assert_eq!(projection.duplicates(), 1);
    assert_eq!(projection.projection().state(), expected);
    assert_eq!(s.pending("proj").await, 0);
}

async fn a_poison_entry_ends_in_the_dead_letter_stream_and_can_be_requeued(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let order = support::stream("acme", "order", "o-1");
    support::append(&s.store, &order, 3, "Placed").await;
    support::append(&s.store, &order, 1, "Poison").await;
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-2"),
        5,
        "Placed",
    )
    .await;
    s.publish().await;
    // A malformed entry, added by hand above every log position.
    let mut conn = s.conn.clone();
    let _: String = conn
        .xadd(
            &s.key,
            "999999999-1",
            &[("event_id", "not-a-uuid"), ("payload", "{")],
        )
        .await
        .unwrap();

    let recorder = Recorder::default();
    recorder.poison.store(true, Ordering::SeqCst);
    let runner = s.runner(
        "g",
        "c1",
        recorder.clone(),
        fast().with_max_deliveries(3).with_breaker_threshold(100),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("both dead-lettered", || counters.dead_lettered() == 2).await;
    wait("the others handled", || {
        recorder.seen.lock().unwrap().len() == 8
    })
    .await;
    assert_eq!(s.pending("g").await, 0);

    let dead = eventsource_redis::dead_letters(&mut conn, &s.key, "g", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    let poison = dead
        .iter()
        .find(|d| d.event.as_ref().is_ok_and(|e| e.event_type == "Poison"))
        .expect("the poison event, with its fields");
    assert_eq!(poison.deliveries, Some(3));
    assert!(
        poison.error.as_deref().unwrap().contains("sink refused"),
        "{poison:?}"
    );
    assert_eq!(poison.source_stream.as_deref(), Some(s.key.as_str()));
    let malformed = dead.iter().find(|d| d.event.is_err()).unwrap();
    assert_eq!(malformed.source_id.as_deref(), Some("999999999-1"));
    assert!(
        malformed
            .error
            .as_deref()
            .unwrap()
            .contains("malformed entry")
    );

    let stats = eventsource_redis::stats(&mut conn, &s.key).await.unwrap();
    assert_eq!(stats.length, 10);
    assert_eq!(stats.groups[0].pending, 0);
    assert_eq!(stats.groups[0].dead_letters, 2);

    // The sink is fixed: requeue the poison event; the runner handles it from the requeue
    // stream.
    recorder.poison.store(false, Ordering::SeqCst);
    eventsource_redis::requeue_dead_letter(&mut conn, &s.key, "g", &poison.id)
        .await
        .unwrap();
    wait("requeued entry handled", || {
        recorder.seen.lock().unwrap().len() == 9
    })
    .await;
    assert_eq!(
        eventsource_redis::dead_letter_count(&mut conn, &s.key, "g")
            .await
            .unwrap(),
        1
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Delivers every entry to consumer `dead` without acking, as a consumer that then died.
async fn deliver_to_dead_consumer(s: &Setup, group: &str) -> Vec<String> {
    let mut conn = s.conn.clone();
    eventsource_redis::ensure_group(
        &mut conn,
        &s.key,
        group,
        &eventsource_redis::StartId::Beginning,
    )
    .await
    .unwrap();
    let options = StreamReadOptions::default()
        .group(group, "dead")
        .count(1000);
    let reply: StreamReadReply = conn
        .xread_options(&[&s.key], &[">"], &options)
        .await
        .unwrap();
    reply.keys[0].ids.iter().map(|e| e.id.clone()).collect()
}

async fn an_entry_deleted_while_pending_is_reported_and_refetched(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-1"),
        5,
        "Placed",
    )
    .await;
    s.publish().await;
    let mut conn = s.conn.clone();

    // Reclaimed from a dead consumer (XAUTOCLAIM reports the deleted id).
    let ids = deliver_to_dead_consumer(&s, "g1").await;
    let _: usize = conn.xdel(&s.key, &[&ids[2]]).await.unwrap();
    let recorder = Recorder::default();
    let runner = s.runner("g1", "alive", recorder.clone(), fast());
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("all 5 handled", || recorder.seen.lock().unwrap().len() == 5).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(counters.missing(), 1);
    assert_eq!(counters.refetched(), 1);
    let all = support::log(&s.store).await;
    let mut seen = recorder.positions();
    seen.sort();
    assert_eq!(seen, all.iter().map(|e| e.position).collect::<Vec<_>>());
    assert_eq!(s.pending("g1").await, 0);

    // Found in the consumer's own pending list on restart (XREADGROUP 0 returns no fields).
    let ids = deliver_to_dead_consumer(&s, "g2").await;
    assert_eq!(ids.len(), 4);
    let _: usize = conn.xdel(&s.key, &[&ids[0]]).await.unwrap();
    let recorder = Recorder::default();
    let runner = s.runner("g2", "dead", recorder.clone(), fast());
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("all 4 handled", || recorder.seen.lock().unwrap().len() == 4).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!((counters.missing(), counters.refetched()), (1, 1));
    // The deleted entry was refetched and handled first, in its place.
    let expected: Vec<LogPosition> = [0, 1, 3, 4].iter().map(|&i| all[i].position).collect();
    assert_eq!(recorder.positions(), expected);
    assert_eq!(s.pending("g2").await, 0);
}

async fn trimming_never_removes_an_unacknowledged_entry(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-1"),
        10,
        "Placed",
    )
    .await;
    s.publish().await;
    let mut conn = s.conn.clone();
    // Group "fast" read everything and acked the first 4; group "slow" read nothing yet.
    let ids = deliver_to_dead_consumer(&s, "fast").await;
    let _: usize = conn.xack(&s.key, "fast", &ids[..4]).await.unwrap();
    eventsource_redis::ensure_group(
        &mut conn,
        &s.key,
        "slow",
        &eventsource_redis::StartId::Beginning,
    )
    .await
    .unwrap();

    let trimmed = eventsource_redis::trim(&mut conn, &s.key).await.unwrap();
    assert_eq!(
        trimmed.removed, 0,
        "slow has not read anything: {trimmed:?}"
    );

    // Slow catches up and acks everything: now the floor is fast's oldest pending entry.
    let options = StreamReadOptions::default().group("slow", "s").count(100);
    let reply: StreamReadReply = conn
        .xread_options(&[&s.key], &[">"], &options)
        .await
        .unwrap();
    let slow_ids: Vec<String> = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    let _: usize = conn.xack(&s.key, "slow", &slow_ids).await.unwrap();
    let trimmed = eventsource_redis::trim(&mut conn, &s.key).await.unwrap();
    assert_eq!(trimmed.removed, 4);
    assert_eq!(trimmed.min_id.as_deref(), Some(ids[4].as_str()));
    let left: Vec<String> = support::entries(&mut conn, &s.key)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        ids[4..].to_vec(),
        "every entry fast has not acked is still there"
    );

    // Fast acks all: trimming keeps the last delivered entry (the stream's top id stays).
    let _: usize = conn.xack(&s.key, "fast", &ids[4..]).await.unwrap();
    let trimmed = eventsource_redis::trim(&mut conn, &s.key).await.unwrap();
    assert_eq!(trimmed.removed, 5);
}

struct Slow(Arc<Mutex<Vec<LogPosition>>>);
impl EventHandler for Slow {
    type Error = std::convert::Infallible;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.lock().unwrap().push(event.position);
        Ok(())
    }
}

async fn shutdown_finishes_the_in_flight_entry_and_acks_it(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-1"),
        10,
        "Placed",
    )
    .await;
    s.publish().await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let runner = s.runner("g", "c", Slow(done.clone()), fast());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let handled = done.lock().unwrap().len();
    assert!((1..10).contains(&handled), "{handled}");
    // Everything handled was acked; the rest is pending for this consumer's next start.
    let info: redis::streams::StreamPendingCountReply = s
        .conn
        .clone()
        .xpending_count(&s.key, "g", "-", "+", 100)
        .await
        .unwrap();
    assert_eq!(info.ids.len(), 10 - handled);
    assert_eq!(
        info.ids[0].id,
        support::log(&s.store).await[handled].position.to_string()
    );
}

/// Always fails.
struct Broken;

impl EventHandler for Broken {
    type Error = Refused;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        Err(Refused(event.event_id.to_string()))
    }
}

async fn the_circuit_breaker_pauses_a_handler_whose_sink_keeps_failing(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    for i in 0..5 {
        support::append(
            &s.store,
            &support::stream("acme", "order", &format!("o-{i}")),
            1,
            "Placed",
        )
        .await;
    }
    s.publish().await;
    let runner = s.runner(
        "g",
        "c",
        Broken,
        fast()
            .with_retry(RetryPolicy::never())
            .with_max_deliveries(100)
            .with_idle_reclaim(Duration::from_millis(100))
            .with_breaker_threshold(3)
            .with_breaker_cooldown(Duration::from_millis(800)),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("the first batch failed", || counters.failed_attempts() == 5).await;
    // Without the breaker, entries idle for 100 ms would be reclaimed and retried by now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        counters.failed_attempts(),
        5,
        "paused while the breaker is open"
    );
    wait("retried after the cooldown", || {
        counters.failed_attempts() > 5
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(s.pending("g").await, 5, "nothing was acked or lost");

    let mut conn = s.conn.clone();
    let health = eventsource_redis::health_check(&mut conn).await.unwrap();
    assert!(health.latency < Duration::from_secs(1));
}

/// Refuses events of unknown types permanently: they cannot succeed on redelivery.
#[derive(Clone, Default)]
struct KnowsOnlyPlaced(Arc<AtomicUsize>);

impl EventHandler for KnowsOnlyPlaced {
    type Error = Refused;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if event.event_type == "Placed" {
            Ok(())
        } else {
            Err(Refused(format!("unknown event type {}", event.event_type)))
        }
    }

    fn is_permanent(&self, _error: &Refused) -> bool {
        true
    }
}

async fn a_permanent_error_is_dead_lettered_on_the_first_delivery(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let order = support::stream("acme", "order", "o-1");
    support::append(&s.store, &order, 2, "Placed").await;
    support::append(&s.store, &order, 1, "Renamed").await;
    support::append(&s.store, &order, 2, "Placed").await;
    s.publish().await;

    let handler = KnowsOnlyPlaced::default();
    let runner = s.runner("g", "c1", handler.clone(), fast().with_max_deliveries(5));
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("dead-lettered", || counters.dead_lettered() == 1).await;
    wait("the others handled", || counters.handled() == 4).await;
    // One call for the unknown type: no in-place retries, no redeliveries.
    assert_eq!(handler.0.load(Ordering::SeqCst), 5);
    assert_eq!(s.pending("g").await, 0);
    let mut conn = s.conn.clone();
    let dead = eventsource_redis::dead_letters(&mut conn, &s.key, "g", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.as_ref().unwrap().event_type, "Renamed");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Panics on one event type, as a handler with an `unwrap` on a bad payload would.
#[derive(Clone, Default)]
struct Panicky(Arc<AtomicUsize>);

impl EventHandler for Panicky {
    type Error = Refused;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        assert!(
            event.event_type != "Cursed",
            "handler bug on {}",
            event.event_id
        );
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn a_panicking_handler_dead_letters_the_entry_and_keeps_running(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let order = support::stream("acme", "order", "o-1");
    support::append(&s.store, &order, 2, "Placed").await;
    support::append(&s.store, &order, 1, "Cursed").await;
    support::append(&s.store, &order, 2, "Placed").await;
    s.publish().await;

    let handler = Panicky::default();
    let runner = s.runner("g", "c1", handler.clone(), fast().with_max_deliveries(5));
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("dead-lettered", || counters.dead_lettered() == 1).await;
    wait("the others handled", || {
        handler.0.load(Ordering::SeqCst) == 4
    })
    .await;
    assert_eq!(s.pending("g").await, 0);
    let mut conn = s.conn.clone();
    let dead = eventsource_redis::dead_letters(&mut conn, &s.key, "g", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .error
            .as_deref()
            .unwrap()
            .contains("handler panicked: handler bug"),
        "{:?}",
        dead[0].error
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Fails the first delivery of event `n == 2` of every stream, then succeeds; records order.
#[derive(Clone, Default)]
struct FlakyOnce {
    failed: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

impl EventHandler for FlakyOnce {
    type Error = Refused;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        let stream = event.stream.to_string();
        if event.payload["n"] == 2 && self.failed.lock().unwrap().insert(stream.clone()) {
            return Err(Refused("transient".into()));
        }
        self.seen
            .lock()
            .unwrap()
            .push((stream, event.version.get()));
        Ok(())
    }
}

async fn a_failed_entry_is_retried_before_later_entries_of_its_stream(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    for id in ["o-1", "o-2"] {
        support::append(&s.store, &support::stream("acme", "order", id), 6, "Placed").await;
    }
    s.publish().await;
    let handler = FlakyOnce::default();
    // Small batches and no in-place retry: the failure must survive into later batches.
    let options = fast()
        .with_batch_size(2)
        .with_retry(RetryPolicy::never())
        .with_idle_reclaim(Duration::from_mins(1));
    let runner = s.runner("g", "c1", handler.clone(), options);
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("every entry handled", || {
        handler.seen.lock().unwrap().len() == 12
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let seen = handler.seen.lock().unwrap().clone();
    for id in ["o-1", "o-2"] {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|(stream, _)| stream.ends_with(id))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(
            versions,
            (1..=6).collect::<Vec<_>>(),
            "{id} kept its order: {seen:?}"
        );
    }
    assert_eq!(s.pending("g").await, 0);
}

/// Never finishes on one event type.
#[derive(Clone, Default)]
struct Stuck(Arc<AtomicUsize>);

impl EventHandler for Stuck {
    type Error = Refused;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Refused> {
        if event.event_type == "Stuck" {
            std::future::pending::<()>().await;
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn a_stuck_handler_times_out_and_the_entry_is_dead_lettered(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let order = support::stream("acme", "order", "o-1");
    support::append(&s.store, &order, 1, "Placed").await;
    support::append(&s.store, &order, 1, "Stuck").await;
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-2"),
        2,
        "Placed",
    )
    .await;
    s.publish().await;
    let handler = Stuck::default();
    let options = fast()
        .with_max_deliveries(2)
        .with_handler_timeout(Duration::from_millis(50));
    let runner = s.runner("g", "c1", handler.clone(), options);
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait("dead-lettered", || counters.dead_lettered() == 1).await;
    wait("the others handled", || {
        handler.0.load(Ordering::SeqCst) == 3
    })
    .await;
    let mut conn = s.conn.clone();
    let dead = eventsource_redis::dead_letters(&mut conn, &s.key, "g", 10)
        .await
        .unwrap();
    assert!(
        dead[0].error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        dead[0].error
    );
    assert_eq!(s.pending("g").await, 0);
    stop.cancel();
    task.await.unwrap().unwrap();
}

async fn requeueing_a_dead_letter_without_its_event_is_a_clear_error(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let mut conn = s.conn.clone();
    let dlq = eventsource_redis::dead_letter_stream(&s.key, "g");
    // What a runner without an event store records for an entry deleted while pending.
    let id: String = conn
        .xadd(
            &dlq,
            "*",
            &[
                ("dlq_source_id", "5-5"),
                ("dlq_error", "entry deleted while pending"),
            ],
        )
        .await
        .unwrap();
    let err = eventsource_redis::requeue_dead_letter(&mut conn, &s.key, "g", &id)
        .await
        .expect_err("nothing to requeue");
    assert!(
        matches!(
            err,
            eventsource_redis::RedisStoreError::NothingToRequeue { .. }
        ),
        "{err:?}"
    );
    let missing = eventsource_redis::requeue_dead_letter(&mut conn, &s.key, "g", "1-1")
        .await
        .expect_err("no such dead letter");
    assert!(
        matches!(
            missing,
            eventsource_redis::RedisStoreError::NoSuchEntry { .. }
        ),
        "{missing:?}"
    );
    assert_eq!(
        eventsource_redis::dead_letter_count(&mut conn, &s.key, "g")
            .await
            .unwrap(),
        1,
        "the dead letter stays for inspection"
    );
}

on_both_topologies!(
    shutdown_finishes_the_in_flight_entry_and_acks_it,
    handles_every_entry_in_order_and_acks_it,
    a_consumer_killed_between_handling_and_ack_is_reclaimed_and_the_read_model_stays_right,
    a_poison_entry_ends_in_the_dead_letter_stream_and_can_be_requeued,
    an_entry_deleted_while_pending_is_reported_and_refetched,
    trimming_never_removes_an_unacknowledged_entry,
    the_circuit_breaker_pauses_a_handler_whose_sink_keeps_failing,
    a_permanent_error_is_dead_lettered_on_the_first_delivery,
    a_panicking_handler_dead_letters_the_entry_and_keeps_running,
    a_failed_entry_is_retried_before_later_entries_of_its_stream,
    a_stuck_handler_times_out_and_the_entry_is_dead_lettered,
    requeueing_a_dead_letter_without_its_event_is_a_clear_error,
);
