//! A live-push server of a test's own: a fresh database on the `DATABASE_URL` server (its relay
//! publishes the whole log), Redis keys under a unique prefix, two tenants with a token each,
//! the relay, the consumer group and the server on a free loopback port.
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::time::Duration;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, Metadata, NewEvent, StreamId, TenantId,
};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore};
use eventsource_redis::Keys;
use live_push::{Hub, PushOptions, PushState, Tokens, pipeline};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

pub mod chromium;
pub mod sse;

/// The value of a service URL variable, or `None` after a notice; under `CI` a missing service
/// is a failure, never a skip.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{var} must be set in CI: {e}"),
        Err(_) => {
            eprintln!("{var} is not set; skipping this test (run scripts/test)");
            None
        }
    }
}

/// A unique name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A running server and what the test needs to drive it.
pub struct Server {
    pub addr: SocketAddr,
    pub store: PgEventStore,
    /// Tenant A and its token; tenant B and its token.
    pub a: (TenantId, String),
    pub b: (TenantId, String),
    pub hub: Hub,
    shutdown: CancellationToken,
    pool: sqlx::PgPool,
    /// Last field: dropped after the pool, also when the test panics.
    database: TestDatabase,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts a server with `options`, or `None` when a service is not configured (outside CI).
    pub async fn start(options: PushOptions) -> Option<Self> {
        Self::start_with(options, 256).await
    }

    /// As [`Server::start`], with a fan-out that keeps `capacity` events for lagging
    /// connections.
    pub async fn start_with(options: PushOptions, capacity: usize) -> Option<Self> {
        let url = service_url("DATABASE_URL")?;
        let redis_url = service_url("REDIS_URL")?;
        let server: PgConnectOptions = url.parse().expect("DATABASE_URL parses");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(server.clone())
            .await
            .expect("connect to DATABASE_URL");
        let database = unique("live_push");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("create the test's database");
        admin.close().await;
        let database = TestDatabase {
            server: server.clone(),
            name: database,
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(server.database(&database.name))
            .await
            .expect("connect to the test's database");
        MIGRATOR.run(&pool).await.expect("migrations run");
        let client = redis::Client::open(redis_url).expect("REDIS_URL parses");
        let conn = client
            .get_connection_manager()
            .await
            .expect("connect to Redis");

        let a = (TenantId::new(unique("tenant-a")), unique("token-a"));
        let b = (TenantId::new(unique("tenant-b")), unique("token-b"));
        let tokens = Tokens::new()
            .with(a.1.clone(), a.0.clone())
            .and_then(|t| t.with(b.1.clone(), b.0.clone()))
            .expect("tokens");
        let store = PgEventStore::new(pool.clone());
        let keys = Keys::new(&unique("push"));
        let hub = Hub::new(capacity);
        let shutdown = CancellationToken::new();
        let relay = pipeline::relay(
            store.clone(),
            PgCheckpointStore::new(pool.clone()),
            conn.clone(),
            &keys,
            "relay",
        );
        let mut feed = pipeline::feed(conn, client, &keys, &tokens.tenants(), "test", &hub);
        feed.ensure_groups().await.expect("the consumer group");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let app = live_push::router(
            PushState::new(store.clone(), hub.clone(), tokens, options)
                .with_shutdown(shutdown.clone()),
        );
        let stop = shutdown.clone();
        let tasks = vec![
            tokio::spawn({
                let stop = stop.clone();
                async move { relay.run(stop).await.expect("the relay runs") }
            }),
            tokio::spawn({
                let stop = stop.clone();
                async move { feed.run(stop).await.expect("the consumer group runs") }
            }),
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .expect("the server runs");
            }),
        ];
        Some(Self {
            addr,
            store,
            a,
            b,
            hub,
            shutdown,
            pool,
            database,
            tasks,
        })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Appends `count` events to `tenant`, one transaction each, in `project` (if any), and
    /// returns their positions once the log shows them.
    pub async fn append(
        &self,
        tenant: &TenantId,
        count: usize,
        project: Option<&str>,
    ) -> Vec<LogPosition> {
        let before = self.log(tenant).await.last().copied();
        for i in 0..count {
            let mut metadata = Metadata::new();
            if let Some(project) = project {
                metadata = metadata.with_extra("project", project.into());
            }
            let stream = StreamId::new(tenant.clone(), "task", format!("t-{i}"));
            let event = NewEvent::new("task-updated", 1, serde_json::json!({ "i": i }))
                .with_metadata(metadata);
            self.store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log(tenant).await;
            let new: Vec<_> = log
                .into_iter()
                .filter(|p| before.is_none_or(|b| *p > b))
                .collect();
            if new.len() >= count {
                assert_eq!(new.len(), count, "only this test appends to its tenants");
                return new;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log did not show the appended events in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Appends one event to `tenant`, without waiting for the log to show it.
    pub async fn append_one(&self, tenant: &TenantId, i: usize) {
        let stream = StreamId::new(tenant.clone(), "task", format!("t-{}", i % 7));
        let event = NewEvent::new("task-updated", 1, serde_json::json!({ "i": i }));
        self.store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }

    /// Every position of `tenant`'s log.
    pub async fn log(&self, tenant: &TenantId) -> Vec<LogPosition> {
        self.store
            .read_all(
                LogPosition::START,
                100_000,
                &LogFilter::tenant(tenant.clone()),
            )
            .await
            .expect("read_all")
            .iter()
            .map(|e| e.position)
            .collect()
    }

    /// Stops everything (open client connections included); the test's database is dropped
    /// with the server.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in &mut self.tasks {
            // Open connections must not hold the server's graceful shutdown up.
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every task stops within 10 s of the shutdown")
                .expect("no task panicked");
        }
        self.pool.close().await;
    }
}

/// The test's database, dropped (from a thread of its own, as `Drop` cannot wait) when the
/// server is, whether the test passed or panicked.
struct TestDatabase {
    server: PgConnectOptions,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(server)
                    .await
                else {
                    return;
                };
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
                admin.close().await;
            });
        });
        let _ = dropped.join();
    }
}
