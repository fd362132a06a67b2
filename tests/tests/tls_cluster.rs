//! Production connections to a Redis Cluster (feature `tls`, on in `scripts/test`): a relay →
//! consumer-group round trip over TLS as an ACL user, on tenants spread over the cluster's
//! masters, and the refusals (a wrong password, a server certificate another authority signed)
//! as errors within seconds, never a hang. `scripts/test` gives its cluster's nodes a TLS port
//! besides the plain one and exports their `rediss://user:password@…` URLs as
//! `REDIS_CLUSTER_TLS_URLS` (comma-separated); the authority is in `EVENTSOURCE_TEST_TLS_DIR`.
#![cfg(feature = "tls")]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use eventsource_core::{
    EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore,
    NewEvent, RecordedEvent, StreamId, TenantId,
};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisClient, RedisRelay, RelayOptions, RunnerOptions,
};
use redis::{ErrorKind, TlsCertificates};
use tokio_util::sync::CancellationToken;

/// The cluster's TLS node URLs and the test certificates' directory, or `None` outside CI
/// when unset.
fn cluster() -> Option<(Vec<String>, PathBuf)> {
    let urls = support::service_url("REDIS_CLUSTER_TLS_URLS")?;
    let dir = support::service_url("EVENTSOURCE_TEST_TLS_DIR")?;
    let urls = urls.split(',').map(str::to_owned).collect();
    Some((urls, PathBuf::from(dir)))
}

/// Trusts only the authority in `dir/<authority>.crt`.
fn trusting(dir: &std::path::Path, authority: &str) -> TlsCertificates {
    let path = dir.join(format!("{authority}.crt"));
    TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(&path).expect("read the test authority")),
    }
}

/// Connecting must end, with an answer either way, well before a test would time out.
async fn connect(client: &RedisClient) -> redis::RedisResult<eventsource_redis::RedisConnection> {
    tokio::time::timeout(Duration::from_secs(15), client.connect())
        .await
        .expect("connecting ends within 15 s")
}

/// Accepts every event.
struct Accept;

impl EventHandler for Accept {
    type Error = std::convert::Infallible;

    async fn handle(&self, _: &RecordedEvent) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_travel_to_a_consumer_group_on_a_cluster_over_tls() {
    let Some((urls, dir)) = cluster() else {
        return;
    };
    let client = RedisClient::open_cluster_with_tls(urls.clone(), trusting(&dir, "ca"))
        .expect("a TLS cluster client");
    let mut conn = connect(&client)
        .await
        .expect("connect to the cluster over TLS as the ACL user");
    assert!(conn.is_cluster());

    // The slot map this connection follows names the nodes' TLS ports (Redis 7 answers a TLS
    // client with them): the client reaches every master over TLS, not only the ones named.
    let tls_ports: BTreeSet<u16> = urls
        .iter()
        .map(|url| {
            let info: redis::ConnectionInfo = url.parse().expect("a node URL");
            match info.addr() {
                redis::ConnectionAddr::TcpTls { port, .. } => *port,
                other => panic!("{url} is not a TLS address: {other:?}"),
            }
        })
        .collect();
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER SLOTS over TLS");
    let master_ports: BTreeSet<u16> = slots
        .iter()
        .map(|range| {
            // `[start, end, [host, port, id], replicas...]`
            let range: Vec<redis::Value> =
                redis::from_redis_value_ref(range).expect("a slot range");
            let master: Vec<redis::Value> =
                redis::from_redis_value_ref(&range[2]).expect("the range's master");
            redis::from_redis_value_ref::<u16>(&master[1]).expect("the master's port")
        })
        .collect();
    assert!(master_ports.len() >= 2, "{master_ports:?}");
    assert!(master_ports.is_subset(&tls_ports), "{master_ports:?}");

    // Eight tenants: their hash tags land on more than one master.
    let store = InMemoryEventStore::new();
    let tenants: Vec<TenantId> = (0..8)
        .map(|_| TenantId::new(support::unique("tls-cluster")))
        .collect();
    for tenant in &tenants {
        let stream = StreamId::new(tenant.clone(), "order", "o-1");
        for n in 0..5 {
            let event = NewEvent::new("Placed", 1, serde_json::json!({ "n": n }));
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        }
    }
    let keys = Keys::new(&support::unique("tls-cluster"));
    let mut relay = RedisRelay::new(
        store,
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "tls-cluster",
        RelayOptions::default(),
    )
    .with_keys(&keys);
    relay.catch_up().await.expect("relay over TLS");

    let streams: Vec<String> = tenants.iter().map(|t| keys.tenant_stream(t)).collect();
    let runner = ConsumerRunner::new(
        conn,
        client,
        streams,
        "tls-group",
        "c-1",
        Accept,
        RunnerOptions::default().with_block_timeout(Duration::from_millis(100)),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let running = tokio::spawn(runner.run(stop.clone()));
    support::wait_for("the group to handle the forty events", async || {
        counters.handled() == 40
    })
    .await;
    stop.cancel();
    running.await.expect("runner task").expect("runner");
}

#[tokio::test]
async fn a_wrong_password_is_refused_on_a_cluster() {
    let Some((urls, dir)) = cluster() else {
        return;
    };
    let wrong: Vec<String> = urls
        .iter()
        .map(|url| {
            let info: redis::ConnectionInfo = url.parse().expect("a node URL");
            let user = info.redis_settings().username().expect("the ACL user");
            let (_, node) = url.split_once('@').expect("a URL with credentials");
            format!("rediss://{user}:wrong@{node}")
        })
        .collect();
    let client = RedisClient::open_cluster_with_tls(wrong, trusting(&dir, "ca"))
        .expect("a TLS cluster client");
    let error = connect(&client)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");
}

#[tokio::test]
async fn a_cluster_certificate_another_authority_signed_is_refused() {
    let Some((urls, dir)) = cluster() else {
        return;
    };
    let client = RedisClient::open_cluster_with_tls(urls.clone(), trusting(&dir, "other-ca"))
        .expect("a TLS cluster client");
    let error = connect(&client)
        .await
        .expect_err("an unverifiable server is refused");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}
