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
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
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
