//! Production connections (feature `tls`, on in `scripts/test`): events committed to
//! PostgreSQL over TLS (`sslmode=verify-full` against the server's authority) relayed to a
//! Redis that speaks only TLS and refuses the default user (`rediss://` with an ACL user and
//! password), and handled by a consumer group over the same TLS connection. `scripts/test`
//! generates the certificates (`EVENTSOURCE_TEST_TLS_DIR`) and exports `REDIS_TLS_URL`.
#![cfg(feature = "tls")]

mod support;

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use eventsource_core::{
    EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore, NewEvent, RecordedEvent,
    StreamId, TenantId,
};
use eventsource_postgres::{MIGRATOR, PgEventStore};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};
use redis::{ErrorKind, TlsCertificates};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tokio_util::sync::CancellationToken;

/// The test certificates' directory, or `None` outside CI when unset.
fn tls_dir() -> Option<PathBuf> {
    support::service_url("EVENTSOURCE_TEST_TLS_DIR").map(PathBuf::from)
}

/// A Redis client over TLS that trusts only the test authority.
fn redis_client(url: &str, dir: &std::path::Path) -> redis::RedisResult<redis::Client> {
    let root_cert = std::fs::read(dir.join("ca.crt")).expect("read the test authority");
    redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
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
async fn events_travel_from_postgres_to_a_consumer_group_over_tls() {
    let (Some(db_url), Some(redis_url), Some(dir)) = (
        support::service_url("DATABASE_URL"),
        support::service_url("REDIS_TLS_URL"),
        tls_dir(),
    ) else {
        return;
    };
    let pg = PgConnectOptions::from_str(&db_url)
        .expect("DATABASE_URL")
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(dir.join("ca.crt"));
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(pg)
        .await
        .expect("connect to PostgreSQL over TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("read the connection's TLS state");
    assert!(encrypted, "the PostgreSQL connection is encrypted");
    MIGRATOR.run(&pool).await.expect("migrations");

    let store = PgEventStore::new(pool);
    let tenant = TenantId::new(support::unique("tls"));
    let stream = StreamId::new(tenant.clone(), "order", "o-1");
    for n in 0..20 {
        let event = NewEvent::new("Placed", 1, serde_json::json!({ "n": n }));
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .expect("append over TLS");
    }
    support::tenant_log(&store, &tenant, 20).await;

    let client = redis_client(&redis_url, &dir).expect("a TLS client");
    let conn = client
        .get_connection_manager()
        .await
        .expect("connect to Redis over TLS as the ACL user");
    let keys = Keys::new(&support::unique("tls"));
    let mut relay = RedisRelay::new(
        store,
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "tls",
        RelayOptions::default(),
    )
    .with_keys(&keys);
    relay.catch_up().await.expect("relay over TLS");

    let runner = ConsumerRunner::new(
        conn,
        client,
        [keys.tenant_stream(&tenant)],
        "tls-group",
        "c-1",
        Accept,
        RunnerOptions::default().with_block_timeout(Duration::from_millis(100)),
    );
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let running = tokio::spawn(runner.run(stop.clone()));
    support::wait_for("the group to handle the twenty events", async || {
        counters.handled() == 20
    })
    .await;
    stop.cancel();
    running.await.expect("runner task").expect("runner");
}

#[tokio::test]
async fn a_wrong_password_is_refused_as_an_authentication_failure() {
    let (Some(redis_url), Some(dir)) = (support::service_url("REDIS_TLS_URL"), tls_dir()) else {
        return;
    };
    let mut info = redis_url
        .parse::<redis::ConnectionInfo>()
        .expect("a Redis URL");
    let redis_settings = info.redis_settings().clone().set_password("wrong");
    info = info.set_redis_settings(redis_settings);
    let client = redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(dir.join("ca.crt")).expect("read the test authority")),
        },
    )
    .expect("a TLS client");
    let error = client
        .get_multiplexed_async_connection()
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");
}

#[tokio::test]
async fn a_server_certificate_another_authority_signed_is_refused() {
    let (Some(redis_url), Some(dir)) = (support::service_url("REDIS_TLS_URL"), tls_dir()) else {
        return;
    };
    let client = redis::Client::build_with_tls(
        redis_url.as_str(),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(dir.join("other-ca.crt")).expect("read the authority")),
        },
    )
    .expect("a TLS client");
    let error = client
        .get_multiplexed_async_connection()
        .await
        .expect_err("an unverifiable server is refused");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}
