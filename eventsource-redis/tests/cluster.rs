//! One runner over tenants whose keys lie on different cluster masters: reads per hash slot,
//! no slot held up by another node, keys without a hash tag refused.
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

/// The address (`host:port`) of the master serving `key`, from `CLUSTER KEYSLOT` and
/// `CLUSTER SLOTS`.
async fn master_of(conn: &mut RedisConnection, key: &str) -> String {
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .unwrap();
    for range in ranges {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (start, end): (i64, i64) = (
            redis::from_redis_value(parts[0].clone()).unwrap(),
            redis::from_redis_value(parts[1].clone()).unwrap(),
        );
        if (start..=end).contains(&slot) {
            let (host, port): (String, i64) = match &parts[2] {
                redis::Value::Array(node) => (
                    redis::from_redis_value(node[0].clone()).unwrap(),
                    redis::from_redis_value(node[1].clone()).unwrap(),
                ),
                other => panic!("unexpected CLUSTER SLOTS node {other:?}"),
            };
            return format!("{host}:{port}");
        }
    }
    panic!("no master serves slot {slot}");
}

/// `n` tenants whose streams under `keys` lie on `n` different masters (on a single node, the
/// first `n` candidates), with those masters' addresses.
async fn tenants_on_distinct_masters(
    topology: Topology,
    conn: &mut RedisConnection,
    keys: &Keys,
    n: usize,
) -> Vec<(String, String)> {
    let mut chosen: Vec<(String, String)> = Vec::new();
    for i in 0..1000 {
        let tenant = format!("tenant-{i}");
        let master = match topology {
            Topology::Single => String::new(),
            Topology::Cluster => {
                master_of(conn, &keys.tenant_stream(&tenant.as_str().into())).await
            }
        };
        if topology == Topology::Cluster && chosen.iter().any(|(_, m)| *m == master) {
            continue;
        }
        chosen.push((tenant, master));
        if chosen.len() == n {
            return chosen;
        }
    }
    panic!("no {n} tenants on distinct masters");
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
    let Some(mut s) = Setup::new(topology).await else {
        return;
    };
    let tenants = tenants_on_distinct_masters(topology, &mut s.conn, &s.keys, 3).await;
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

/// A master that answers nothing for a while (`CLIENT PAUSE`) holds up only the reads of its
/// own slots: the runner keeps delivering the other masters' tenants meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_does_not_hold_up_the_other_slots() {
    let Some(mut s) = Setup::new(Topology::Cluster).await else {
        return;
    };
    let tenants = tenants_on_distinct_masters(Topology::Cluster, &mut s.conn, &s.keys, 3).await;
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
        others && paused_at.elapsed() < Duration::from_millis(3500),
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
