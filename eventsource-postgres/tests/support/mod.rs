//! Shared set-up for the PostgreSQL tests: one migrated database, reached through `DATABASE_URL`.
//!
//! Tests isolate themselves with a tenant (or checkpoint name) of their own, so they can share
//! the database and run concurrently. Without `DATABASE_URL` a test prints a notice and passes,
//! unless `CI` is set, where it fails: CI must never silently skip them.
#![allow(dead_code, unreachable_pub)]

pub mod saga;

use std::str::FromStr;

use eventsource_core::TenantId;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

/// The database the tests share (created and migrated on first use) unless
/// `EVENTSOURCE_TEST_DATABASE` names another: worktrees whose schemas differ can then share one
/// server without one's migrations failing the other's (sqlx refuses a database that holds a
/// migration it does not know).
pub const TEST_DATABASE: &str = "eventsource_postgres_tests";

/// The name of the database the tests use: see [`TEST_DATABASE`].
pub fn test_database() -> String {
    std::env::var("EVENTSOURCE_TEST_DATABASE").unwrap_or_else(|_| TEST_DATABASE.to_owned())
}

/// Connect options for the server in `DATABASE_URL`, or `None` (after a notice) when unset.
///
/// # Panics
///
/// When `DATABASE_URL` is unset and `CI` is set.
pub fn server() -> Option<PgConnectOptions> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "DATABASE_URL must be set in CI: the PostgreSQL tests cannot be skipped there"
        );
        eprintln!("DATABASE_URL is not set: skipping this PostgreSQL test");
        return None;
    };
    Some(
        PgConnectOptions::from_str(&url)
            .expect("DATABASE_URL is a valid PostgreSQL URL")
            .disable_statement_logging(),
    )
}

/// A pool on the shared, migrated test database; `None` when the tests are skipped.
pub async fn pool() -> Option<PgPool> {
    pool_with(16).await
}

/// As [`pool`], with room for `max` connections.
pub async fn pool_with(max: u32) -> Option<PgPool> {
    let server = server()?;
    ensure_database(&server).await;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(server.database(&test_database()))
        .await
        .expect("connect to the test database");
    eventsource_postgres::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations run");
    Some(pool)
}

async fn ensure_database(server: &PgConnectOptions) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .expect("connect to DATABASE_URL");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(test_database())
            .fetch_one(&admin)
            .await
            .expect("look up the test database");
    if !exists {
        // Concurrent tests may race to create it; whoever loses finds it created.
        let create = format!(
            "CREATE DATABASE \"{}\"",
            test_database().replace('"', "\"\"")
        );
        let _ = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&admin)
            .await;
    }
    admin.close().await;
}

/// Connect options for PgBouncer (in transaction mode) in `PGBOUNCER_URL`, as the README asks:
/// no statement cache. `None` (after a notice) when unset.
///
/// # Panics
///
/// When `PGBOUNCER_URL` is unset and `CI` is set.
pub fn bouncer() -> Option<PgConnectOptions> {
    let Ok(url) = std::env::var("PGBOUNCER_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PGBOUNCER_URL must be set in CI: the PgBouncer tests cannot be skipped there"
        );
        eprintln!("PGBOUNCER_URL is not set: skipping this PgBouncer test");
        return None;
    };
    Some(
        PgConnectOptions::from_str(&url)
            .expect("PGBOUNCER_URL is a valid PostgreSQL URL")
            .statement_cache_capacity(0)
            .disable_statement_logging(),
    )
}

/// A pool of `max` connections through PgBouncer to the shared test database, migrated first
/// through `DATABASE_URL` (migrations do not go through the pooler); `None` when the tests are
/// skipped.
pub async fn bouncer_pool(max: u32) -> Option<PgPool> {
    let options = bouncer()?;
    pool().await?.close().await;
    Some(bouncer_pool_on(options.database(&test_database()), max).await)
}

/// A pool of `max` connections with `options`, configured as the README asks.
pub async fn bouncer_pool_on(options: PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .expect("connect through PgBouncer")
}

/// A tenant no other test uses.
pub fn tenant(prefix: &str) -> TenantId {
    TenantId::new(format!("{prefix}-{}", Uuid::now_v7().simple()))
}

/// A pool logged in as `eventsource_app`: a role without `BYPASSRLS` (unlike the superuser the
/// tests otherwise use), so row level security applies to it. Created on first use. One
/// connection, so every operation reuses it whatever its tenant.
pub async fn app_role_pool(admin: &PgPool) -> PgPool {
    app_role_pool_with(admin, 1).await
}

/// As [`app_role_pool`], with room for `max` connections.
pub async fn app_role_pool_with(admin: &PgPool, max: u32) -> PgPool {
    let server = server().expect("a server");
    ensure_app_role(admin).await;
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(
            server
                .database(&test_database())
                .username("eventsource_app")
                .password("app"),
        )
        .await
        .expect("connect as the app role")
}

/// As [`app_role_pool_with`], through PgBouncer (`admin` reaches the database directly or
/// through PgBouncer).
pub async fn app_role_bouncer_pool(admin: &PgPool, max: u32) -> PgPool {
    let options = bouncer().expect("PgBouncer");
    ensure_app_role(admin).await;
    bouncer_pool_on(
        options
            .database(&test_database())
            .username("eventsource_app")
            .password("app"),
        max,
    )
    .await
}

/// Creates `eventsource_app` and grants it the tables, unless done.
async fn ensure_app_role(admin: &PgPool) {
    // CREATE ROLE has no IF NOT EXISTS and concurrent GRANTs can fail with "tuple concurrently
    // updated": tests set the role up one at a time, under an advisory lock.
    let mut tx = admin.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(7245001)")
        .execute(&mut *tx)
        .await
        .expect("lock");
    sqlx::query(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventsource_app') THEN
                 CREATE ROLE eventsource_app LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD 'app';
             END IF;
         END $$",
    )
    .execute(&mut *tx)
    .await
    .expect("create the app role");
    sqlx::query(
        "GRANT SELECT, INSERT, UPDATE ON streams, events, snapshots, checkpoints, leases, \
         projection_generations, \
         applied_positions TO eventsource_app",
    )
    .execute(&mut *tx)
    .await
    .expect("grant the app role");
    tx.commit().await.expect("commit the role set-up");
}

/// The directory of the TLS test material `scripts/test` generates (`EVENTSOURCE_TEST_TLS_DIR`):
/// `ca.crt`, the authority that signed the server's certificate for 127.0.0.1, and
/// `other-ca.crt`, one that signed nothing. `None` (after a notice) when unset.
///
/// # Panics
///
/// When `EVENTSOURCE_TEST_TLS_DIR` is unset and `CI` is set.
pub fn tls_dir() -> Option<std::path::PathBuf> {
    let Some(dir) = std::env::var_os("EVENTSOURCE_TEST_TLS_DIR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "EVENTSOURCE_TEST_TLS_DIR must be set in CI: the TLS tests cannot be skipped there"
        );
        eprintln!("EVENTSOURCE_TEST_TLS_DIR is not set: skipping this TLS test");
        return None;
    };
    Some(dir.into())
}
