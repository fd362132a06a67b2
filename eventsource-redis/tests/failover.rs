//! A Redis Cluster master is killed (SIGKILL) while a relay publishes and a runner consumes:
//! its replica is promoted, nothing is lost, nothing is duplicated in the streams, the runner
//! resumes.
#![allow(missing_docs)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_core::{
    EventHandler, InMemoryCheckpointStore, InMemoryEventStore, LogPosition, RecordedEvent,
    RetryPolicy,
};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisClient, RedisConnection, RedisRelay, RelayOptions, RunnerOptions,
};
use support::{OwnCluster, Topology};
use tokio_util::sync::CancellationToken;

/// Every position it handled, with repeats (the runner is at-least-once).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<LogPosition>>>);

impl EventHandler for Recorder {
    type Error = std::convert::Infallible;

    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(event.position);
        Ok(())
    }
}

impl Recorder {
    fn distinct(&self) -> BTreeSet<LogPosition> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_loses_nothing_and_duplicates_no_entry() {
    let Some(mut cluster) = OwnCluster::start() else {
        return;
    };
    let client = RedisClient::open_cluster(cluster.urls()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let keys = Keys::new(&support::prefix());
    let tenants =
        support::tenants_on_distinct_masters(Topology::Cluster, &mut conn, &keys, 3).await;
    let store = InMemoryEventStore::new();
    let stop = CancellationToken::new();

    // A writer appends to the three tenants for the whole run.
    let writing = CancellationToken::new();
    let writer = spawn_writer(&store, &tenants, &writing);

    // The relay holds its checkpoint until a replica has each batch, so a master that dies
    // right after answering cannot take published entries with it.
    let relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "failover",
        RelayOptions::default()
            .with_replicas(1, Duration::from_secs(1))
            .with_lease_ttl(Duration::from_secs(2))
            .with_error_backoff(backoff()),
    )
    .with_keys(&keys);
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    let recorder = Recorder::default();
    let runner = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        tenants
            .iter()
            .map(|(t, _)| keys.tenant_stream(&t.as_str().into())),
        "g",
        "c1",
        recorder.clone(),
        RunnerOptions::default()
            .with_block_timeout(Duration::from_millis(200))
            .with_idle_reclaim(Duration::from_secs(2))
            .with_error_backoff(backoff()),
    );
    let runner_task = tokio::spawn(runner.run(stop.clone()));

    let started = support::eventually(Duration::from_secs(20), || {
        let n = recorder.distinct().len();
        async move { n >= 150 }
    })
    .await;
    assert!(started, "the runner handles events before the kill");

    // SIGKILL the master of the first tenant's stream mid-run.
    let (_, master) = &tenants[0];
    let port: u16 = master.rsplit(':').next().unwrap().parse().unwrap();
    let pid = cluster.nodes.iter().find(|n| n.port == port).unwrap().pid();
    assert!(
        pid.is_some(),
        "the master {master} runs as a child of the test"
    );
    cluster.kill(port);
    let witness = cluster.nodes.iter().find(|n| n.port != port).unwrap().port;
    let promoted = support::eventually(Duration::from_secs(30), || {
        // Marked failed (`fail`, not the suspicion `fail?`) and every slot served again.
        let line = OwnCluster::node_line(witness, port);
        let failed = line
            .split_whitespace()
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "fail"));
        let ok = failed && OwnCluster::wait_ok(witness, Duration::from_millis(1));
        async move { ok }
    })
    .await;
    assert!(promoted, "a replica took over from the killed master");
    // The dead master comes back as the new master's replica: until then that shard has no
    // replica, and the relay, which waits for one, holds its checkpoint (and re-sends).
    cluster.restart(port);

    // Writing goes on for a while after the failover, then stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    writing.cancel();
    writer.await.unwrap();
    let total = store.len();
    let all: BTreeSet<LogPosition> = support::log(&store)
        .await
        .iter()
        .map(|e| e.position)
        .collect();
    let caught_up = support::eventually(Duration::from_mins(1), || {
        let done = recorder.distinct() == all;
        async move { done }
    })
    .await;
    assert!(
        caught_up,
        "the runner handled {} of {total} events after the failover",
        recorder.distinct().len()
    );
    stop.cancel();
    relay_task.await.unwrap().unwrap();
    runner_task.await.unwrap().unwrap();

    assert_each_event_once(&mut conn, &keys, &store).await;
    let handled = recorder.0.lock().unwrap().len();
    eprintln!(
        "{total} events; {handled} deliveries ({} redelivered after the failover)",
        handled - total
    );
}

/// Appends one event at a time to the tenants' streams, round robin, until `writing` is
/// cancelled.
fn spawn_writer(
    store: &InMemoryEventStore,
    tenants: &[(String, String)],
    writing: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    let tenants: Vec<String> = tenants.iter().map(|(t, _)| t.clone()).collect();
    let writing = writing.clone();
    tokio::spawn(async move {
        let mut i = 0usize;
        while !writing.is_cancelled() {
            let tenant = &tenants[i % tenants.len()];
            let stream = support::stream(tenant, "order", &format!("o-{}", i % 5));
            support::append(&store, &stream, 1, "Placed").await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// Short retries: the failover takes seconds.
fn backoff() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(u32::MAX)
        .with_base_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
}

/// Every tenant stream holds exactly its tenant's events, once each, in log order.
async fn assert_each_event_once(
    conn: &mut RedisConnection,
    keys: &Keys,
    store: &InMemoryEventStore,
) {
    let mut expected: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    for event in support::log(store).await {
        expected
            .entry(keys.tenant_stream(event.tenant()))
            .or_default()
            .push(event);
    }
    assert_eq!(expected.len(), 3);
    for (key, events) in &expected {
        let entries = support::entries(conn, key).await;
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let want: Vec<String> = events.iter().map(|e| e.position.to_string()).collect();
        assert_eq!(ids, want, "{key} holds each event once, in order");
    }
}
