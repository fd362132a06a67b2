//! Upgrading a database that already holds events: migration 0006 gives every stream a key and
//! every stored event its stream's key, and the store then reads and appends as on a new
//! database. The events are written as a binary built before 0006 wrote them (through
//! `eventsource_append_pooled`, which 0006 drops).

mod support;

use eventsource_core::{
    EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, TenantId, Version, VersionRange,
};
use eventsource_postgres::{MIGRATOR, PgEventStore};
use serde_json::json;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Appends `count` events to a stream as the store did before migration 0006.
async fn append_before_0006(
    pool: &sqlx::PgPool,
    stream: &StreamId,
    expected: (&str, i64),
    from: i64,
    count: i64,
) {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let payloads: Vec<_> = (from..from + count).map(|n| json!({ "n": n })).collect();
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM eventsource_append_pooled($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12)",
    )
    .bind(stream.tenant().as_str())
    .bind(stream.aggregate_type())
    .bind(stream.aggregate_id())
    .bind(expected.0)
    .bind(expected.1)
    .bind(&ids)
    .bind(vec!["Numbered"; ids.len()])
    .bind(vec![1_i32; ids.len()])
    .bind(&payloads)
    .bind(vec![json!({}); ids.len()])
    .bind(vec![None::<Uuid>; ids.len()])
    .bind(vec![None::<Uuid>; ids.len()])
    .fetch_one(pool)
    .await
    .expect("append through the 0005 function");
    assert_eq!(version, Some(from + count - 1), "{stream}");
}

fn numbered(n: i64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

#[tokio::test]
async fn events_stored_before_stream_keys_read_and_append_after_the_upgrade() {
    let Some(server) = support::server() else {
        return;
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .expect("connect to DATABASE_URL");
    let database = format!("eventsource_upgrade_{}", Uuid::now_v7().simple());
    // The name is a UUID of our own: nothing in it needs quoting.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&admin)
        .await
        .expect("create the upgrade database");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(server.database(&database))
        .await
        .expect("connect to the upgrade database");

    MIGRATOR.run_to(5, &pool).await.expect("migrations 1 to 5");
    // Two tenants with streams of the same name, and one stream written in two appends.
    let (a, b) = (TenantId::new("upgrade-a"), TenantId::new("upgrade-b"));
    let first = StreamId::new(a.clone(), "account", "1");
    let same_name = StreamId::new(b.clone(), "account", "1");
    append_before_0006(&pool, &first, ("none", 0), 1, 3).await;
    append_before_0006(&pool, &same_name, ("none", 0), 1, 2).await;
    append_before_0006(&pool, &first, ("exact", 3), 4, 2).await;

    MIGRATOR
        .run(&pool)
        .await
        .expect("migration 6 on stored events");

    let keys: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT e.tenant_id, e.stream_key, s.stream_key FROM events e \
         JOIN streams s USING (tenant_id, aggregate_type, aggregate_id) ORDER BY e.global_position",
    )
    .fetch_all(&pool)
    .await
    .expect("keys");
    assert_eq!(keys.len(), 7);
    assert!(
        keys.iter().all(|(_, event, stream)| event == stream),
        "{keys:?}"
    );
    assert_ne!(keys[0].1, keys[3].1, "each tenant's stream has its own key");

    let store = PgEventStore::new(pool.clone());
    let read = store
        .read_stream(&first, VersionRange::all())
        .await
        .expect("read the upgraded stream");
    let payloads: Vec<_> = read.iter().map(|e| e.payload["n"].clone()).collect();
    assert_eq!(payloads, (1..=5).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=5).map(Version::new).collect::<Vec<_>>()
    );
    let other = store
        .read_stream(&same_name, VersionRange::all())
        .await
        .expect("read the other tenant's stream");
    assert_eq!(other.len(), 2);

    // Appends go on from the stored versions, with the same guard.
    let appended = store
        .append(
            &first,
            ExpectedVersion::Exact(Version::new(5)),
            vec![numbered(6)],
        )
        .await
        .expect("append after the upgrade");
    assert_eq!(appended.version, Version::new(6));
    let stale = store
        .append(
            &first,
            ExpectedVersion::Exact(Version::new(5)),
            vec![numbered(6)],
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual, .. }) if actual == Version::new(6)),
        "{stale:?}"
    );
    let version = store.stream_version(&first).await.expect("version");
    assert_eq!(version, Version::new(6));

    // The backstop behind the guard now names the stream by its key.
    let err = sqlx::query(
        "INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, \
         event_id, event_type, schema_version, payload, metadata) \
         VALUES ($1, 'upgrade-a', 'account', '1', 6, gen_random_uuid(), 'Numbered', 1, '{}', \
         '{}')",
    )
    .bind(keys[0].2)
    .execute(&pool)
    .await
    .expect_err("a second version 6");
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.constraint(), Some("events_stream_key_version_key"));

    pool.close().await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop the upgrade database");
}
