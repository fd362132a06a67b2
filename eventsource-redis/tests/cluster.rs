//! One runner over tenants whose keys lie on different cluster masters: reads per hash slot,
//! no slot held up by another node, keys without a hash tag refused, blocking connections
//! capped.
#![allow(missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{EventHandler, InMemoryCheckpointStore, InMemoryEventStore, RecordedEvent};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisClient, RedisConnection, RedisRelay, RelayOptions, RunnerError,
    RunnerOptions,
};
use redis::AsyncCommands as _;
use redis::streams::StreamPendingReply;
use support::{Topology, on_both_topologies};
use tokio_util::sync::CancellationToken;

/// Taken by every test of this file: one of them pauses a master of the shared cluster, which
/// would stall the others' commands to it (and their `WAIT`s) and fail them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Records every event it sees.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<RecordedEvent>>>);

impl EventHandler for Recorder {
    type Error = std::convert::Infallible;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl Recorder {
    fn count(&self, tenant: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.tenant().as_str() == tenant)
            .count()
    }
}

struct Setup {
    client: RedisClient,
    conn: RedisConnection,
    keys: Keys,
    store: InMemoryEventStore,
    /// Shared by every relay of the test: each publishes only what is new.
    checkpoints: InMemoryCheckpointStore,
}

impl Setup {
    async fn new(topology: Topology) -> Option<Self> {
        let (client, conn) = support::connect_to(topology).await?;
        Some(Self {
            client,
            conn,
            keys: Keys::new(&support::prefix()),
            store: InMemoryEventStore::new(),
            checkpoints: InMemoryCheckpointStore::new(),
        })
    }

    async fn publish(&self) {
        let mut relay = RedisRelay::new(
            self.store.clone(),
            self.checkpoints.clone(),
            self.conn.clone(),
            "cluster-test",
            RelayOptions::default(),
        )
        .with_keys(&self.keys);
        relay.catch_up().await.unwrap();
    }

    fn runner(
        &self,
        tenants: &[(String, String)],
        recorder: &Recorder,
    ) -> ConsumerRunner<Recorder> {
        let streams = tenants
            .iter()
            .map(|(t, _)| self.keys.tenant_stream(&t.as_str().into()));
        ConsumerRunner::new(
            self.conn.clone(),
            self.client.clone(),
            streams,
            "g",
            "c1",
            recorder.clone(),
            RunnerOptions::default()
                .with_block_timeout(Duration::from_millis(200))
                .with_concurrency(4),
        )
    }
}

async fn relay_to_one_runner_over_tenants_on_three_masters(topology: Topology) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut s) = Setup::new(topology).await else {
        return;
    };
    let tenants = support::tenants_on_distinct_masters(topology, &mut s.conn, &s.keys, 3).await;
    if topology == Topology::Cluster {
        let masters: std::collections::HashSet<&String> = tenants.iter().map(|(_, m)| m).collect();
        assert_eq!(
            masters.len(),
            3,
            "the streams lie on three masters: {tenants:?}"
        );
    }
    for (tenant, _) in &tenants {
        for id in 0..3 {
            support::append(
                &s.store,
                &support::stream(tenant, "order", &format!("o-{id}")),
                10,
                "Placed",
            )
            .await;
        }
    }
    s.publish().await;
    let recorder = Recorder::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.runner(&tenants, &recorder).run(stop.clone()));
    let all = support::eventually(Duration::from_secs(10), || {
        let done = recorder.0.lock().unwrap().len() == 90;
        async move { done }
    })
    .await;
    assert!(all, "handled {} of 90", recorder.0.lock().unwrap().len());

    // New events after the runner blocked: still delivered from every slot.
    for (tenant, _) in &tenants {
        support::append(
            &s.store,
            &support::stream(tenant, "order", "late"),
            2,
            "Placed",
        )
        .await;
    }
    s.publish().await;
    let all = support::eventually(Duration::from_secs(10), || {
        let done = recorder.0.lock().unwrap().len() == 96;
        async move { done }
    })
    .await;
    assert!(all, "handled {} of 96", recorder.0.lock().unwrap().len());
    stop.cancel();
    task.await.unwrap().unwrap();

    // Exactly once each, each aggregate stream in version order, nothing left pending.
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in recorder.0.lock().unwrap().iter() {
        per_stream
            .entry(e.stream.to_string())
            .or_default()
            .push(e.version.get());
    }
    assert_eq!(per_stream.len(), 12);
    for (stream, versions) in per_stream {
        let n = if stream.ends_with("late") { 2 } else { 10 };
        assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "{stream}");
    }
    for (tenant, _) in &tenants {
        let key = s.keys.tenant_stream(&tenant.as_str().into());
        let pending: StreamPendingReply = s.conn.xpending(&key, "g").await.unwrap();
        assert_eq!(pending.count(), 0, "{key}");
    }
}

on_both_topologies!(relay_to_one_runner_over_tenants_on_three_masters);

/// A runner over six tenants in six slots holds at most `with_max_blocking_reads` blocking
/// connections (on a single node one loop reads every key: at most one); the other slots'
/// loops poll, and every event arrives once, those published while the runner sat idle too.
/// With a cap of 0 every loop polls and the runner opens no connection of its own (ADR 0036).
async fn blocking_connections_are_capped(topology: Topology) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(s) = Setup::new(topology).await else {
        return;
    };
    for cap in [2usize, 0] {
        let tenants: Vec<String> = (0..6).map(|i| format!("cap{cap}-{i}")).collect();
        let streams: Vec<String> = tenants
            .iter()
            .map(|t| s.keys.tenant_stream(&t.as_str().into()))
            .collect();
        let slots: std::collections::HashSet<_> = streams
            .iter()
            .map(redis::cluster_routing::Slot::for_key)
            .collect();
        assert_eq!(slots.len(), 6, "six slots: pick other tenants");
        let loops = if topology == Topology::Cluster { 6 } else { 1 };
        for tenant in &tenants {
            support::append(
                &s.store,
                &support::stream(tenant, "order", "1"),
                3,
                "Placed",
            )
            .await;
        }
        s.publish().await;
        let recorder = Recorder::default();
        let runner = ConsumerRunner::new(
            s.conn.clone(),
            s.client.clone(),
            streams,
            format!("capped-{cap}"),
            "c1",
            recorder.clone(),
            RunnerOptions::default()
                .with_block_timeout(Duration::from_millis(100))
                .with_max_blocking_reads(cap),
        );
        let counters = runner.counters();
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        let handled = |n: usize| {
            let recorder = recorder.clone();
            async move { recorder.0.lock().unwrap().len() == n }
        };
        assert!(
            support::eventually(Duration::from_secs(10), || handled(18)).await,
            "cap {cap}: handled {} of 18",
            recorder.0.lock().unwrap().len()
        );
        assert_eq!(
            counters.blocking_connections(),
            cap.min(loops) as u64,
            "cap {cap}, {loops} loops"
        );
        // Idle long enough for the polled loops to back off to the block timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for tenant in &tenants {
            support::append(
                &s.store,
                &support::stream(tenant, "order", "2"),
                1,
                "Placed",
            )
            .await;
        }
        s.publish().await;
        // Polled loops read at least once per block timeout (100 ms); 2 s leaves room for a
        // loaded machine.
        assert!(
            support::eventually(Duration::from_secs(2), || handled(24)).await,
            "cap {cap}: handled {} of 24 within 2 s of publishing",
            recorder.0.lock().unwrap().len()
        );
        assert_eq!(counters.blocking_connections(), cap.min(loops) as u64);
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(counters.blocking_connections(), 0, "closed on shutdown");
        for tenant in &tenants {
            assert_eq!(recorder.count(tenant), 4, "{tenant}: each event once");
        }
    }
}

on_both_topologies!(blocking_connections_are_capped);

/// A master that answers nothing for a while (`CLIENT PAUSE`) holds up only the reads of its
/// own slots: the runner keeps delivering the other masters' tenants meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_does_not_hold_up_the_other_slots() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut s) = Setup::new(Topology::Cluster).await else {
        return;
    };
    let tenants =
        support::tenants_on_distinct_masters(Topology::Cluster, &mut s.conn, &s.keys, 3).await;
    let recorder = Recorder::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.runner(&tenants, &recorder).run(stop.clone()));
    for (tenant, _) in &tenants {
        support::append(
            &s.store,
            &support::stream(tenant, "order", "o-1"),
            1,
            "Placed",
        )
        .await;
    }
    s.publish().await;
    let all = support::eventually(Duration::from_secs(10), || {
        let done = recorder.0.lock().unwrap().len() == 3;
        async move { done }
    })
    .await;
    assert!(all, "the runner is running on every slot");

    // The first tenant's master stops answering clients for 4 s.
    let (paused_tenant, paused_master) = &tenants[0];
    let mut direct = redis::Client::open(format!("redis://{paused_master}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query_async(&mut direct)
        .await
        .unwrap();
    let paused_at = std::time::Instant::now();
    for (tenant, _) in &tenants[1..] {
        support::append(
            &s.store,
            &support::stream(tenant, "order", "o-2"),
            5,
            "Placed",
        )
        .await;
    }
    s.publish().await;
    let others = support::eventually(Duration::from_secs(3), || {
        let done = tenants[1..].iter().all(|(t, _)| recorder.count(t) == 6);
        async move { done }
    })
    .await;
    assert!(
        others && paused_at.elapsed() < Duration::from_millis(3800),
        "the other masters' tenants were handled while {paused_master} was paused"
    );
    assert_eq!(recorder.count(paused_tenant), 1);

    // Once the pause is over, the paused master's tenant is served again.
    support::append(
        &s.store,
        &support::stream(paused_tenant, "order", "o-2"),
        2,
        "Placed",
    )
    .await;
    s.publish().await;
    let resumed = support::eventually(Duration::from_secs(15), || {
        let done = recorder.count(paused_tenant) == 3;
        async move { done }
    })
    .await;
    assert!(resumed, "the paused master's slot resumed");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A stream key without a hash tag would put its dead letters in another slot: refused at
/// start on a cluster, not at the first poison entry.
#[tokio::test]
async fn a_stream_key_without_a_hash_tag_is_refused_on_a_cluster() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(s) = Setup::new(Topology::Cluster).await else {
        return;
    };
    let key = format!("{}-untagged-events", support::prefix());
    let runner = ConsumerRunner::new(
        s.conn.clone(),
        s.client.clone(),
        [key.clone()],
        "g",
        "c1",
        Recorder::default(),
        RunnerOptions::default(),
    );
    let err = runner.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(&err, RunnerError::SplitSlots { key: k } if *k == key),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

/// With replicas asked for, the checkpoint moves only once a replica holds the batch: on the
/// cluster (one replica per master) it does; on a single node without replicas the batch
/// fails, retryably, and the checkpoint stays.
async fn the_checkpoint_waits_for_replicas(topology: Topology) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(s) = Setup::new(topology).await else {
        return;
    };
    support::append(
        &s.store,
        &support::stream("acme", "order", "o-1"),
        5,
        "Placed",
    )
    .await;
    let mut relay = RedisRelay::new(
        s.store.clone(),
        s.checkpoints.clone(),
        s.conn.clone(),
        "replicated",
        RelayOptions::default().with_replicas(1, Duration::from_millis(300)),
    )
    .with_keys(&s.keys);
    let published = relay.publish_batch().await;
    let checkpoint = eventsource_core::CheckpointStore::load(
        &s.checkpoints,
        &eventsource_redis::relay_checkpoint("replicated"),
    )
    .await
    .unwrap();
    match topology {
        Topology::Cluster => {
            assert_eq!(published.unwrap().events, 5);
            assert!(checkpoint.is_some());
        }
        Topology::Single => {
            let err = published.expect_err("no replica to wait for");
            assert!(
                matches!(
                    err,
                    eventsource_redis::RedisStoreError::NotReplicated {
                        wanted: 1,
                        acknowledged: 0
                    }
                ),
                "{err:?}"
            );
            assert!(err.is_retryable());
            assert_eq!(checkpoint, None, "the checkpoint did not move");
        }
    }
}

on_both_topologies!(the_checkpoint_waits_for_replicas);

/// `health_check` answers on both topologies.
async fn health_check_answers(topology: Topology) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut s) = Setup::new(topology).await else {
        return;
    };
    let health = eventsource_redis::health_check(&mut s.conn).await.unwrap();
    assert!(health.eviction_policy.is_some(), "{health:?}");
    assert!(health.latency < Duration::from_secs(5), "{health:?}");
}

on_both_topologies!(health_check_answers);

/// A user every node refuses is the nodes' own typed answer, not redis-rs's generic
/// "failed to create initial connections" I/O error (`RedisClient::connect`).
#[tokio::test]
async fn a_wrong_password_is_an_authentication_failure_on_a_cluster() {
    let Some(urls) = support::redis_cluster_urls() else {
        return;
    };
    let wrong: Vec<String> = urls
        .iter()
        .map(|url| url.replacen("redis://", "redis://nobody:wrong@", 1))
        .collect();
    let client = RedisClient::open_cluster(wrong).expect("a cluster client");
    let err = tokio::time::timeout(Duration::from_secs(15), client.connect())
        .await
        .expect("connecting ends within 15 s")
        .expect_err("no node knows the user");
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
}
