//! Scheduled trimming: never past an unacknowledged entry, bounded by the slowest group,
//! keeping the retention, on by default in runners, safe beside consumers (ADR 0032).
#![allow(missing_docs)]

mod support;

use support::{Topology, on_both_topologies};

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{
    EventHandler, InMemoryCheckpointStore, InMemoryEventStore, LogPosition, RecordedEvent,
    RetryPolicy,
};
use eventsource_redis::{
    ConsumerRunner, Keys, PerTenant, RedisClient, RedisConnection, RedisRelay, RelayOptions,
    RunnerOptions, StartId, TenantDiscovery, TrimOptions, Trimmer, codec,
};
use redis::AsyncCommands as _;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

struct Setup {
    client: RedisClient,
    conn: RedisConnection,
    store: InMemoryEventStore,
    keys: Keys,
    key: String,
}

async fn setup(topology: Topology) -> Option<Setup> {
    let (client, conn) = support::connect_to(topology).await?;
    let keys = Keys::new(&format!("trim-{}", support::prefix()));
    Some(Setup {
        client,
        conn,
        store: InMemoryEventStore::new(),
        key: keys.tenant_stream(&"acme".into()),
        keys,
    })
}

impl Setup {
    /// Appends `n` events to the tenant `acme` and publishes them; returns their entry ids.
    async fn publish(&self, n: usize) -> Vec<String> {
        support::append(
            &self.store,
            &support::stream("acme", "order", "o-1"),
            n,
            "Placed",
        )
        .await;
        self.relay().catch_up().await.unwrap();
        self.ids().await
    }

    fn relay(&self) -> RedisRelay<InMemoryEventStore, InMemoryCheckpointStore> {
        RedisRelay::new(
            self.store.clone(),
            InMemoryCheckpointStore::new(),
            self.conn.clone(),
            "test",
            RelayOptions::default(),
        )
        .with_router(PerTenant::new(self.keys.clone()))
    }

    async fn ids(&self) -> Vec<String> {
        support::entries(&mut self.conn.clone(), &self.key)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Group `group` reads up to `n` new entries (consumer `c`) and acks the `ack` of them.
    async fn read(&self, group: &str, n: usize, ack: impl Fn(usize) -> bool) -> Vec<String> {
        let mut conn = self.conn.clone();
        eventsource_redis::ensure_group(&mut conn, &self.key, group, &StartId::Beginning)
            .await
            .unwrap();
        let options = StreamReadOptions::default().group(group, "c").count(n);
        let reply: StreamReadReply = conn
            .xread_options(&[&self.key], &[">"], &options)
            .await
            .unwrap();
        let ids: Vec<String> = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
        let acked: Vec<&String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| ack(*i))
            .map(|(_, id)| id)
            .collect();
        if !acked.is_empty() {
            let _: usize = conn.xack(&self.key, group, &acked).await.unwrap();
        }
        ids
    }
}

async fn an_unacknowledged_entry_is_never_trimmed(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(10).await;
    // Everything delivered, everything acked but the 4th entry.
    s.read("g", 100, |i| i != 3).await;
    let trimmed =
        eventsource_redis::trim_with_retention(&mut s.conn.clone(), &s.key, Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(trimmed.removed, 3, "{trimmed:?}");
    assert_eq!(trimmed.min_id.as_deref(), Some(ids[3].as_str()));
    assert_eq!(
        s.ids().await,
        ids[3..].to_vec(),
        "trimming stopped below the pending entry"
    );
}

async fn the_slowest_of_several_groups_bounds_the_trim(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(10).await;
    s.read("fast", 8, |_| true).await;
    s.read("slow", 4, |_| true).await;
    s.read("slower-but-pending", 6, |i| i < 2).await;
    // Floors: fast at its last delivered (8th), slow at its 4th, the third at its oldest
    // pending entry (the 3rd): the lowest wins.
    let trimmed =
        eventsource_redis::trim_with_retention(&mut s.conn.clone(), &s.key, Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(
        trimmed.min_id.as_deref(),
        Some(ids[2].as_str()),
        "{trimmed:?}"
    );
    assert_eq!(s.ids().await, ids[2..].to_vec());
    // A group that has not read anything holds everything that is left.
    s.read("new", 0, |_| true).await;
    let trimmed = eventsource_redis::trim(&mut s.conn.clone(), &s.key)
        .await
        .unwrap();
    assert_eq!(trimmed.removed, 0, "{trimmed:?}");
}

async fn the_retention_window_holds(topology: Topology) {
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
    // The first 5 events were recorded two hours ago, the rest now: written by hand, with the
    // relay's ids and fields.
    let mut conn = s.conn.clone();
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    for (i, event) in support::log(&s.store).await.into_iter().enumerate() {
        let mut event = event;
        if i < 5 {
            event.recorded_at = two_hours_ago;
        }
        let _: String = conn
            .xadd(
                &s.key,
                codec::entry_id(event.position),
                &codec::encode_pairs(&event),
            )
            .await
            .unwrap();
    }
    let ids = s.ids().await;
    s.read("g", 100, |_| true).await;

    let day = Duration::from_hours(24);
    let trimmed = eventsource_redis::trim_with_retention(&mut conn, &s.key, day)
        .await
        .unwrap();
    assert_eq!(
        trimmed.removed, 0,
        "everything is younger than a day: {trimmed:?}"
    );
    let hour = Duration::from_hours(1);
    let trimmed = eventsource_redis::trim_with_retention(&mut conn, &s.key, hour)
        .await
        .unwrap();
    assert_eq!(
        trimmed.removed, 5,
        "the two-hour-old entries go: {trimmed:?}"
    );
    assert_eq!(s.ids().await, ids[5..].to_vec());
    // Without a retention only the groups' floor holds: the last delivered entry.
    let trimmed = eventsource_redis::trim(&mut conn, &s.key).await.unwrap();
    assert_eq!(trimmed.removed, 4, "{trimmed:?}");
    assert_eq!(s.ids().await, ids[9..].to_vec());
}

async fn a_stream_without_groups_is_never_trimmed(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(5).await;
    let trimmer = Trimmer::new(
        s.conn.clone(),
        [s.key.clone()],
        TrimOptions::default().with_retention(Duration::ZERO),
    );
    assert_eq!(trimmer.trim_once().await, 0);
    assert_eq!(s.ids().await, ids);
    assert_eq!(trimmer.counters().passes(), 1);
}

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);
impl EventHandler for Count {
    type Error = std::convert::Infallible;
    async fn handle(&self, _: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn runner<H: EventHandler>(
    s: &Setup,
    consumer: &str,
    handler: H,
    options: RunnerOptions,
) -> ConsumerRunner<H> {
    ConsumerRunner::new(
        s.conn.clone(),
        s.client.clone(),
        [s.key.clone()],
        "g",
        consumer,
        handler,
        options.with_block_timeout(Duration::from_millis(100)),
    )
}

#[test]
fn trimming_is_on_by_default_keeping_a_day() {
    let options = RunnerOptions::default();
    let trim = options.trim().expect("on by default");
    assert_eq!(trim.retention(), Duration::from_hours(24));
    assert_eq!(trim.interval(), Duration::from_mins(1));
    assert!(RunnerOptions::default().without_trim().trim().is_none());
}

async fn a_runner_trims_on_its_interval_without_being_asked(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(10).await;
    let count = Count::default();
    // The default options, with a shorter schedule and no retention.
    let options = RunnerOptions::default().with_trim(
        TrimOptions::default()
            .with_interval(Duration::from_millis(100))
            .with_retention(Duration::ZERO),
    );
    let runner = runner(&s, "c", count.clone(), options);
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let trimmed = support::eventually(Duration::from_secs(10), || {
        let conn = s.conn.clone();
        let key = s.key.clone();
        async move { conn.clone().xlen::<_, u64>(&key).await.unwrap() == 1 }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(trimmed, "the runner never trimmed its stream");
    assert_eq!(count.0.load(Ordering::SeqCst), 10);
    assert_eq!(
        s.ids().await,
        ids[9..].to_vec(),
        "the last delivered entry stays"
    );
    assert_eq!(counters.trimmed(), 9);
    assert!(counters.trim().passes() >= 1);
}

async fn a_runner_without_trim_trims_nothing(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(10).await;
    let count = Count::default();
    let runner = runner(
        &s,
        "c",
        count.clone(),
        RunnerOptions::default().without_trim(),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    support::eventually(Duration::from_secs(10), || {
        let done = count.0.load(Ordering::SeqCst) == 10;
        async move { done }
    })
    .await;
    // Several of the other test's intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 10);
    assert_eq!(s.ids().await, ids);
    assert_eq!((counters.trimmed(), counters.trim().passes()), (0, 0));
}

/// Blocks on every entry until released.
#[derive(Clone, Default)]
struct Gate(Arc<std::sync::atomic::AtomicBool>);
impl EventHandler for Gate {
    type Error = std::convert::Infallible;
    async fn handle(&self, _: &RecordedEvent) -> Result<(), Self::Error> {
        while !self.0.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

async fn a_runner_does_not_trim_while_its_own_group_is_missing(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let ids = s.publish(10).await;
    // Another group is through: its floor alone would trim all but the last entry.
    s.read("other", 100, |_| true).await;
    let gate = Gate::default();
    let options = RunnerOptions::default().with_trim(
        TrimOptions::default()
            .with_interval(Duration::from_millis(10))
            .with_retention(Duration::ZERO),
    );
    let runner = runner(&s, "c", gate.clone(), options);
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    // The runner holds its first entry; then its group disappears (destroyed by hand, as a
    // group not created yet would be).
    let pending = support::eventually(Duration::from_secs(10), || {
        let mut conn = s.conn.clone();
        let key = s.key.clone();
        async move {
            let reply: redis::streams::StreamPendingReply =
                conn.xpending(&key, "g").await.unwrap_or_default();
            reply.count() > 0
        }
    })
    .await;
    assert!(pending, "the runner never read");
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&s.key)
        .arg("g")
        .query_async(&mut s.conn.clone())
        .await
        .unwrap();
    let passes = counters.trim().passes();
    let more_passes = support::eventually(Duration::from_secs(10), || {
        let done = counters.trim().passes() >= passes + 5;
        async move { done }
    })
    .await;
    assert!(more_passes, "the trimmer stopped running");
    assert_eq!(
        s.ids().await,
        ids,
        "nothing trimmed while the runner's group is missing"
    );
    assert_eq!(counters.trimmed(), 0);
    gate.0.store(true, Ordering::SeqCst);
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Records every position handled; fails some first attempts, and is slow now and then, so
/// entries stay pending while the trimmers run.
#[derive(Clone, Default)]
struct Flaky {
    seen: Arc<Mutex<HashSet<LogPosition>>>,
    attempts: Arc<Mutex<HashSet<LogPosition>>>,
    hasher: RandomState,
}

#[derive(Debug, thiserror::Error)]
#[error("flaky")]
struct FlakyError;

impl EventHandler for Flaky {
    type Error = FlakyError;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), FlakyError> {
        let roll = self.hasher.hash_one(event.position) % 100;
        if roll < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if roll >= 95 && self.attempts.lock().unwrap().insert(event.position) {
            return Err(FlakyError);
        }
        self.seen.lock().unwrap().insert(event.position);
        Ok(())
    }
}

async fn trimming_beside_busy_consumers_never_loses_an_unacknowledged_entry(topology: Topology) {
    let Some(s) = setup(topology).await else {
        return;
    };
    let tenants = ["acme", "globex"];
    let streams: Vec<String> = tenants
        .iter()
        .map(|t| s.keys.tenant_stream(&(*t).into()))
        .collect();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(s.relay().with_keys(&s.keys).run(stop.clone()));
    // A trimmer as aggressive as it gets, beside three consumers each trimming too.
    let trimmer = Trimmer::new(
        s.conn.clone(),
        streams.clone(),
        TrimOptions::default()
            .with_interval(Duration::from_millis(1))
            .with_retention(Duration::ZERO),
    );
    let trim_counters = trimmer.counters();
    let trimmer = tokio::spawn(trimmer.run(stop.clone()));
    let flaky = Flaky::default();
    let mut runners = Vec::new();
    let mut counters = Vec::new();
    for c in 0..3 {
        let options = RunnerOptions::default()
            .with_batch_size(20)
            .with_concurrency(4)
            .with_block_timeout(Duration::from_millis(50))
            .with_idle_reclaim(Duration::from_millis(100))
            .with_max_deliveries(1_000)
            .with_retry(RetryPolicy::default().with_max_attempts(1))
            .with_trim(
                TrimOptions::default()
                    .with_interval(Duration::from_millis(5))
                    .with_retention(Duration::ZERO),
            );
        let runner = ConsumerRunner::new(
            s.conn.clone(),
            s.client.clone(),
            streams.clone(),
            "g",
            format!("c{c}"),
            flaky.clone(),
            options,
        );
        counters.push(runner.counters());
        runners.push(tokio::spawn(runner.run(stop.clone())));
    }
    let n = 600;
    for i in 0..n {
        let tenant = tenants[i % 2];
        support::append(
            &s.store,
            &support::stream(tenant, "order", &format!("o-{}", i % 7)),
            1,
            "Placed",
        )
        .await;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all: HashSet<LogPosition> = support::log(&s.store)
        .await
        .iter()
        .map(|e| e.position)
        .collect();
    let done = support::eventually(Duration::from_mins(1), || {
        let done = flaky.seen.lock().unwrap().len() == all.len();
        async move { done }
    })
    .await;
    stop.cancel();
    relay.await.unwrap().unwrap();
    trimmer.await.unwrap();
    for runner in runners {
        runner.await.unwrap().unwrap();
    }
    let seen = flaky.seen.lock().unwrap().clone();
    assert!(done, "handled {} of {}", seen.len(), all.len());
    assert_eq!(seen, all, "every entry was handled");
    for c in &counters {
        assert_eq!(
            (c.missing(), c.dead_lettered()),
            (0, 0),
            "no pending entry was trimmed away"
        );
    }
    let removed: u64 = trim_counters.removed() + counters.iter().map(|c| c.trimmed()).sum::<u64>();
    assert!(removed > 0, "the trimmers trimmed while the consumers ran");
}

/// Tenant discovery restarts a runner's read loops for each new tenant; tenants arriving more
/// often than the trim interval must not postpone trimming for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovering_runner_trims_while_tenants_keep_arriving() {
    let Some(s) = setup(Topology::Single).await else {
        return;
    };
    s.publish(10).await;
    let (mut conn, registry) = (s.conn.clone(), s.keys.tenant_registry());
    let _: u64 = conn.sadd(&registry, "acme").await.unwrap();
    let count = Count::default();
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(100))
        .with_trim(
            TrimOptions::default()
                .with_interval(Duration::from_millis(300))
                .with_retention(Duration::ZERO),
        );
    let runner = ConsumerRunner::new(
        s.conn.clone(),
        s.client.clone(),
        Vec::<String>::new(),
        "g",
        "c",
        count.clone(),
        options,
    )
    .with_discovery(
        TenantDiscovery::new(s.keys.clone()).with_poll_interval(Duration::from_millis(20)),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    // A new tenant every 100 ms for 3 s: each one restarts the read loops.
    let arrivals = tokio::spawn(async move {
        for i in 0..30 {
            let _: u64 = conn.sadd(&registry, format!("late-{i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let trimmed = support::eventually(Duration::from_secs(2), || {
        let conn = s.conn.clone();
        let key = s.key.clone();
        async move { conn.clone().xlen::<_, u64>(&key).await.unwrap() == 1 }
    })
    .await;
    let arriving = !arrivals.is_finished();
    arrivals.await.unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(
        trimmed && arriving,
        "no trim pass while tenants kept arriving: {} passes, {} failures, {} handled, {arriving}",
        counters.trim().passes(),
        counters.trim().failures(),
        count.0.load(Ordering::SeqCst)
    );
    assert_eq!(count.0.load(Ordering::SeqCst), 10);
}

on_both_topologies!(
    an_unacknowledged_entry_is_never_trimmed,
    the_slowest_of_several_groups_bounds_the_trim,
    the_retention_window_holds,
    a_stream_without_groups_is_never_trimmed,
    a_runner_trims_on_its_interval_without_being_asked,
    a_runner_without_trim_trims_nothing,
    a_runner_does_not_trim_while_its_own_group_is_missing,
    trimming_beside_busy_consumers_never_loses_an_unacknowledged_entry,
);
