//! Shared helpers of the Redis integration tests.
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsource_core::{
    EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, RecordedEvent, StreamId, TenantId,
};
use redis::aio::ConnectionManager;

/// `REDIS_URL`, or `None` after a notice (a panic under `CI`).
pub fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => panic!("REDIS_URL must be set in CI: {e}"),
        Err(_) => {
            eprintln!("REDIS_URL is not set; skipping this Redis test");
            None
        }
    }
}

/// `REDIS_CLUSTER_URLS` (comma-separated node URLs of a Redis Cluster), or `None` after a
/// notice (a panic under `CI`: `scripts/test` starts the cluster).
pub fn redis_cluster_urls() -> Option<Vec<String>> {
    match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) => Some(
            urls.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("REDIS_CLUSTER_URLS must be set in CI: {e}")
        }
        Err(_) => {
            eprintln!("REDIS_CLUSTER_URLS is not set; skipping this Redis Cluster test");
            None
        }
    }
}

/// Where a test runs: one Redis node (`REDIS_URL`) or a Redis Cluster (`REDIS_CLUSTER_URLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster,
}

/// A client and a connection of `topology`, or `None` when its variable is unset outside CI
/// (a panic under `CI`).
pub async fn connect_to(
    topology: Topology,
) -> Option<(
    eventsource_redis::RedisClient,
    eventsource_redis::RedisConnection,
)> {
    let client = match topology {
        Topology::Single => eventsource_redis::RedisClient::open(redis_url()?.as_str()),
        Topology::Cluster => eventsource_redis::RedisClient::open_cluster(redis_cluster_urls()?),
    }
    .unwrap();
    let conn = client.connect().await.unwrap();
    Some((client, conn))
}

/// Generates, for each `async fn name(topology: Topology)` named, a module `name` with the
/// tests `single` and `cluster` running it on each topology.
#[allow(unused_macros, reason = "not every test file runs on both topologies")]
macro_rules! on_both_topologies {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single() {
                    super::$name(super::support::Topology::Single).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name(super::support::Topology::Cluster).await;
                }
            }
        )+
    };
}
#[allow(unused_imports, reason = "not every test file runs on both topologies")]
pub(crate) use on_both_topologies;

/// A fresh, unique key prefix.
pub fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

pub async fn connect(url: &str) -> (redis::Client, ConnectionManager) {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    (client, conn)
}

/// Appends `n` events to one stream in batches of `batch`.
pub async fn append(store: &InMemoryEventStore, stream: &StreamId, n: usize, event_type: &str) {
    for i in 0..n {
        let event = NewEvent::new(
            event_type,
            1,
            serde_json::json!({ "n": i, "stream": stream.to_string() }),
        );
        store
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
}

pub fn stream(tenant: &str, aggregate_type: &str, id: &str) -> StreamId {
    StreamId::new(TenantId::new(tenant), aggregate_type, id)
}

/// Every event of the store's log.
pub async fn log(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(
            eventsource_core::LogPosition::START,
            usize::MAX,
            &eventsource_core::LogFilter::all(),
        )
        .await
        .unwrap()
}

/// Every entry of a stream as (id, decoded event).
pub async fn entries<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
) -> Vec<(String, RecordedEvent)> {
    let reply: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_all(conn, key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let event = eventsource_redis::codec::decode(&e.map).unwrap();
            (e.id, event)
        })
        .collect()
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A redis-server this test owns, on a free loopback port, persisting to AOF.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts it, or `None` after a notice when redis-server is not installed (a panic under
    /// `CI`).
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server must be installed in CI"
            );
            eprintln!("redis-server not installed; skipping");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("es-redis-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound and released; another process may still take it meanwhile).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node of an [`OwnCluster`].
pub struct ClusterNode {
    pub port: u16,
    bus: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// Starts the node's redis-server; its `nodes.conf` in its directory makes a restarted
    /// node rejoin the cluster.
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus.to_string()])
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A Redis Cluster of 3 masters and 3 replicas this test owns, on free loopback ports, with a
/// short node timeout so that a replica takes over a dead master within seconds.
pub struct OwnCluster {
    pub nodes: Vec<ClusterNode>,
}

impl OwnCluster {
    /// Starts it, or `None` after a notice when redis-server is not installed (a panic under
    /// `CI`).
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server must be installed in CI"
            );
            eprintln!("redis-server not installed; skipping");
            return None;
        }
        let base = std::env::temp_dir().join(format!(
            "es-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let bus = free_port();
            let dir = base.join(port.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let mut node = ClusterNode {
                port,
                bus,
                dir,
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let up = (0..200).any(|_| {
                let up = std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok();
                if !up {
                    std::thread::sleep(Duration::from_millis(20));
                }
                up
            });
            assert!(up, "redis-server did not start on port {}", node.port);
        }
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        for node in &cluster.nodes {
            assert!(
                Self::wait_ok(node.port, Duration::from_secs(20)),
                "node {} never reached cluster_state:ok",
                node.port
            );
        }
        Some(cluster)
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// Waits until the node on `port` reports `cluster_state:ok`.
    pub fn wait_ok(port: u16, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let info = Command::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "cluster",
                    "info",
                ])
                .output();
            if info.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The `CLUSTER NODES` line of the node on `port`, as seen by the node on `from`.
    pub fn node_line(from: u16, port: u16) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &from.to_string(),
                "cluster",
                "nodes",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{port}@")))
            .unwrap_or_default()
            .to_owned()
    }

    /// Starts the node on `port` again (it rejoins, as a replica if its slots moved on).
    pub fn restart(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if node.child.is_none() {
            node.spawn();
        }
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
        if let Some(base) = self.nodes.first().and_then(|n| n.dir.parent()) {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// The address (`host:port`) of the master serving `key`, from `CLUSTER KEYSLOT` and
/// `CLUSTER SLOTS`.
pub async fn master_of<C: redis::aio::ConnectionLike + Send>(conn: &mut C, key: &str) -> String {
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
        let start: i64 = redis::from_redis_value(parts[0].clone()).unwrap();
        let end: i64 = redis::from_redis_value(parts[1].clone()).unwrap();
        if (start..=end).contains(&slot) {
            let redis::Value::Array(node) = &parts[2] else {
                panic!("unexpected CLUSTER SLOTS node {:?}", parts[2]);
            };
            let host: String = redis::from_redis_value(node[0].clone()).unwrap();
            let port: i64 = redis::from_redis_value(node[1].clone()).unwrap();
            return format!("{host}:{port}");
        }
    }
    panic!("no master serves slot {slot}");
}

/// `n` tenants whose streams under `keys` lie on `n` different masters (on a single node, the
/// first `n` candidates), with those masters' addresses.
pub async fn tenants_on_distinct_masters(
    topology: Topology,
    conn: &mut eventsource_redis::RedisConnection,
    keys: &eventsource_redis::Keys,
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
