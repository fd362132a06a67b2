//! TLS to PostgreSQL with the `tls-rustls` feature: the connection URL's `sslmode` and
//! `sslrootcert` decide, as in libpq. The server runs with `ssl=on` on certificates
//! `scripts/test` generates (`EVENTSOURCE_TEST_TLS_DIR`).
#![cfg(feature = "tls-rustls")]

mod support;

use std::path::Path;
use std::str::FromStr;

use eventsource_core::{EventStore, ExpectedVersion, NewEvent, StreamId, VersionRange};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The test database's URL with `sslmode=verify-full` and `sslrootcert=<ca>`, as a user writes
/// it.
fn verified_url(ca: &Path) -> Option<String> {
    let server = support::server()?;
    Some(format!(
        "postgres://{}@{}:{}/{}?sslmode=verify-full&sslrootcert={}",
        server.get_username(),
        server.get_host(),
        server.get_port(),
        support::test_database(),
        ca.display(),
    ))
}

#[tokio::test]
async fn the_store_works_over_tls_verified_against_the_servers_authority() {
    let Some(dir) = support::tls_dir() else {
        return;
    };
    // Creates and migrates the shared database if needed.
    let Some(direct) = support::pool_with(1).await else {
        return;
    };
    direct.close().await;
    let url = verified_url(&dir.join("ca.crt")).expect("a server");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(PgConnectOptions::from_str(&url).expect("a valid URL"))
        .await
        .expect("connect over TLS");

    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("read the connection's TLS state");
    assert!(ssl, "the connection is encrypted");
    assert!(version.is_some_and(|v| v.starts_with("TLS")));

    let store = PgEventStore::new(pool);
    let stream = StreamId::new(support::tenant("tls"), "account", "a-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", 1, json!({ "owner": "ada" }))],
        )
        .await
        .expect("append over TLS");
    let read = store
        .read_stream(&stream, VersionRange::all())
        .await
        .expect("read over TLS");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, json!({ "owner": "ada" }));
}

#[tokio::test]
async fn a_server_certificate_another_authority_signed_is_refused() {
    let Some(dir) = support::tls_dir() else {
        return;
    };
    let url = verified_url(&dir.join("other-ca.crt")).expect("a server");
    let refused = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(PgConnectOptions::from_str(&url).expect("a valid URL"))
        .await;
    let error = refused
        .expect_err("an unverifiable server is refused")
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn sslmode_require_encrypts_without_a_root_certificate() {
    let Some(server) = support::server() else {
        return;
    };
    let url = format!(
        "postgres://{}@{}:{}/postgres?sslmode=require",
        server.get_username(),
        server.get_host(),
        server.get_port(),
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(PgConnectOptions::from_str(&url).expect("a valid URL"))
        .await
        .expect("connect with sslmode=require");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("read the connection's TLS state");
    assert!(ssl);
}
