//! Live push: serves a tenant's events to browsers over SSE and WebSocket, resumable by log
//! position, fed by a Redis consumer group behind the PostgreSQL relay. A demo writer appends
//! a task event every half second to each tenant, so the page has something to show.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run -p live-push
//! # then open the printed http://127.0.0.1:3000/?token=… in a browser
//! ```
//!
//! Settings: `LIVE_PUSH_ADDR` (default `127.0.0.1:3000`), `LIVE_PUSH_TOKENS`
//! (`token=tenant,…`; default: a fresh random token for each of the tenants `demo-a` and
//! `demo-b`, printed), `LIVE_PUSH_INSTANCE` (the consumer name, default `push-1`) and
//! `LIVE_PUSH_EXIT_AFTER` (seconds: stop then, and exit non-zero unless the consumer group fed
//! the demo's events to the server; for CI).
#![allow(clippy::print_stdout)] // printing the URLs to open is the point

use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId, TenantId};
use eventsource_postgres::{MIGRATOR, PgCheckpointStore, PgEventStore};
use eventsource_redis::Keys;
use live_push::{Hub, PushOptions, PushState, Tokens, pipeline};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect(&std::env::var("DATABASE_URL")?)
        .await?;
    MIGRATOR.run(&pool).await?;
    let client = redis::Client::open(std::env::var("REDIS_URL")?)?;
    let conn = client.get_connection_manager().await?;
    let addr = std::env::var("LIVE_PUSH_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let instance = std::env::var("LIVE_PUSH_INSTANCE").unwrap_or_else(|_| "push-1".to_owned());
    let exit_after = match std::env::var("LIVE_PUSH_EXIT_AFTER") {
        Ok(secs) => Some(Duration::from_secs(secs.parse()?)),
        Err(_) => None,
    };
    let tokens = match std::env::var("LIVE_PUSH_TOKENS") {
        Ok(list) => Tokens::parse(&list)?,
        Err(_) => Tokens::new()
            .with(uuid::Uuid::new_v4().simple().to_string(), "demo-a".into())?
            .with(uuid::Uuid::new_v4().simple().to_string(), "demo-b".into())?,
    };
    let tenants = tokens.tenants();
    anyhow::ensure!(!tenants.is_empty(), "LIVE_PUSH_TOKENS names no tenant");

    let store = PgEventStore::new(pool.clone());
    let keys = Keys::default();
    let hub = Hub::new(1_024);
    let shutdown = CancellationToken::new();
    let relay = pipeline::relay(
        store.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        &keys,
        "live-push-relay",
    );
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let mut feed = pipeline::feed(conn, client, &keys, &tenants, &instance, &hub);
    feed.ensure_groups().await?;
    let feed = tokio::spawn(feed.run(shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = live_push::router(
        PushState::new(
            store.clone(),
            hub.clone(),
            tokens.clone(),
            PushOptions::default(),
        )
        .with_shutdown(shutdown.clone()),
    );
    for tenant in &tenants {
        let token = list_token(&tokens, tenant);
        println!("tenant {tenant}: http://{addr}/?token={token}");
    }
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let writer = tokio::spawn(write_demo_events(store, tenants, shutdown.clone()));

    match exit_after {
        Some(after) => tokio::time::sleep(after).await,
        None => tokio::signal::ctrl_c().await?,
    }
    shutdown.cancel();
    let written = writer.await??;
    server.await??;
    relay.await??;
    feed.await??;
    println!(
        "appended {written} events; the consumer group fed {} to the server",
        hub.fed()
    );
    if exit_after.is_some() {
        anyhow::ensure!(hub.fed() > 0, "no event reached the server through Redis");
    }
    Ok(())
}

/// The token of `tenant`, for the printed URL (the example knows its own tokens).
fn list_token(tokens: &Tokens, tenant: &TenantId) -> String {
    tokens
        .token_of(tenant)
        .map_or_else(|| "<your token>".to_owned(), str::to_owned)
}

/// Appends a task event to each tenant every half second, in projects `alpha` and `beta`
/// and for users `ada` and `alan`; returns how many it appended.
async fn write_demo_events(
    store: PgEventStore,
    tenants: Vec<TenantId>,
    shutdown: CancellationToken,
) -> anyhow::Result<u64> {
    let mut written = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(written),
        }
        for tenant in &tenants {
            let project = if written.is_multiple_of(2) {
                "alpha"
            } else {
                "beta"
            };
            let user = if written.is_multiple_of(3) {
                "ada"
            } else {
                "alan"
            };
            let stream = StreamId::new(tenant.clone(), "task", format!("t-{}", written % 5));
            let metadata = Metadata::new()
                .with_extra("project", project.into())
                .with_extra("user", user.into());
            let event = NewEvent::new(
                "task-updated",
                1,
                serde_json::json!({ "n": written, "title": format!("task {}", written % 5) }),
            )
            .with_metadata(metadata);
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await?;
            written += 1;
        }
    }
}
