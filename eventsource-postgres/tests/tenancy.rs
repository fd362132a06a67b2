//! Tenant isolation with row level security, proven with a role that does not bypass it
//! (superusers bypass row level security, so the usual test connection proves nothing).

mod support;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, StoreError, StreamId,
    StreamPayload, TenantId, Version, VersionRange,
};
use eventsource_postgres::{PgEventStore, begin_tenant};
use serde_json::json;
use sqlx::PgPool;

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pooled_connection_never_shows_another_tenants_rows() {
    let Some(admin) = support::pool().await else {
        return;
    };
    // One connection: every operation below reuses it through the pool, whatever the tenant.
    let app = support::app_role_pool(&admin).await;
    let (a, b) = tenants_apart_through_the_store(&app).await;
    a_forgotten_predicate_sees_one_tenant(&app, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_never_shows_another_tenants_rows() {
    let Some(admin) = support::pool().await else {
        return;
    };
    // Room for four: the store keeps the connection it used between statements instead of
    // giving it back to the pool (ADR 0009), and reuses it, whatever the tenant.
    let app = support::app_role_pool_with(&admin, 4).await;
    let (a, b) = tenants_apart_through_the_store(&app).await;
    assert_eq!(
        app.size(),
        1,
        "every statement of the store ran on one connection"
    );
    a_forgotten_predicate_sees_one_tenant(&app, &a, &b).await;
}

/// Tenants A and B through one store, one operation at a time; returns them.
async fn tenants_apart_through_the_store(app: &PgPool) -> (TenantId, TenantId) {
    let store = PgEventStore::new(app.clone());
    let (a, b) = (support::tenant("tenant-a"), support::tenant("tenant-b"));
    let stream_a = StreamId::new(a.clone(), "account", "same-id");
    let stream_b = StreamId::new(b.clone(), "account", "same-id");

    store
        .append(
            &stream_a,
            ExpectedVersion::NoStream,
            vec![event(1), event(2)],
        )
        .await
        .unwrap();
    store
        .append(&stream_b, ExpectedVersion::NoStream, vec![event(10)])
        .await
        .unwrap();

    for _ in 0..3 {
        let read_a = store
            .read_stream(&stream_a, VersionRange::all())
            .await
            .unwrap();
        assert!(read_a.iter().all(|e| e.tenant() == &a));
        assert_eq!(read_a.len(), 2);
        // The aggregate load's statement scopes itself as well, without a function.
        for (stream, expected) in [(&stream_a, vec![1, 2]), (&stream_b, vec![10])] {
            let loaded = store
                .read_stream_events(stream, VersionRange::all())
                .await
                .unwrap();
            // Payloads come as JSON text, parsed only when the event is applied.
            assert!(
                loaded
                    .iter()
                    .all(|e| matches!(e.payload, StreamPayload::Text(_))),
                "{loaded:?}"
            );
            let numbers: Vec<u64> = loaded
                .into_iter()
                .map(|e| e.payload.into_value().unwrap()["n"].as_u64().unwrap())
                .collect();
            assert_eq!(numbers, expected, "{stream}");
        }
        // The log shows an event once every older transaction has ended; tests running
        // beside this one may hold one open for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let log_b = loop {
            let log = store
                .read_all(LogPosition::START, 100, &LogFilter::tenant(b.clone()))
                .await
                .unwrap();
            if !log.is_empty() || std::time::Instant::now() > deadline {
                break log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(log_b.len(), 1);
        assert!(log_b.iter().all(|e| e.tenant() == &b));
    }

    assert_eq!(
        store.stream_version(&stream_b).await.unwrap(),
        Version::new(1)
    );
    (a, b)
}

/// Even a query that forgets the tenant predicate sees only the transaction's tenant.
async fn a_forgotten_predicate_sees_one_tenant(app: &PgPool, a: &TenantId, b: &TenantId) {
    let mut tx = begin_tenant(app, a).await.unwrap();
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM events")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![a.as_str().to_owned()]);
    let b_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(b.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        b_rows, 0,
        "tenant B's rows are invisible in tenant A's transaction"
    );
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_set_is_an_error_not_an_empty_result() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_pool(&admin).await;
    let tenant = support::tenant("unset");
    let store = PgEventStore::new(app.clone());
    store
        .append(
            &StreamId::new(tenant.clone(), "account", "a"),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .unwrap();

    // The tenant set by the append's transaction did not stay on the pooled connection.
    let err = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(&app)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert!(
        db.message().contains("eventsource.tenant is not set"),
        "{db}"
    );

    // Through the store: reading every tenant needs the relay role, which bypasses RLS.
    let err = store
        .read_all(LogPosition::START, 10, &LogFilter::all())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TenantViolation(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_tenant_insert_is_rejected() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_pool(&admin).await;
    let (a, b) = (support::tenant("writer"), support::tenant("victim"));

    // Raw SQL in tenant A's transaction writing a row for tenant B.
    let mut tx = begin_tenant(&app, &a).await.unwrap();
    let err = sqlx::query(
        "INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, \
         event_id, event_type, schema_version, payload, metadata) \
         VALUES (1, $1, 'account', 'x', 1, gen_random_uuid(), 'Numbered', 1, '{}', '{}')",
    )
    .bind(b.as_str())
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert!(db.message().contains("row-level security"), "{db}");
    // Rolled back now, not when the pool next lends the connection: a transaction that has an
    // id holds back every reader of the log (other tests of this binary read it) until it ends.
    tx.rollback().await.unwrap();

    // Through the store, appending to tenant B's stream inside tenant A's transaction.
    let mut tx = begin_tenant(&app, &a).await.unwrap();
    let err = PgEventStore::append_in_tx(
        &mut tx,
        &StreamId::new(b.clone(), "account", "x"),
        ExpectedVersion::Any,
        vec![event(1)],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::TenantViolation(_)), "{err}");
    tx.rollback().await.unwrap();

    let b_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(b.as_str())
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(b_rows, 0);
}

/// Appends under row level security, grouped and alone: each statement scopes itself to the
/// tenant before it reads or writes a tenant's row. Waves of concurrent appends make groups of
/// one tenant (one plain statement) and of two (the PL/pgSQL function that scopes each tenant in
/// turn), with `NoStream`, `Exact` and `Any`; every append must land, in its own tenant, with
/// dense versions, and a second `NoStream` must conflict. Then every expectation once more
/// without group commit, and a stale `Exact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_under_row_level_security_keep_tenants_apart() {
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_pool_with(&admin, 4).await;
    appends_keep_tenants_apart(&admin, &app).await;
}

/// The same through PgBouncer in transaction mode: each transaction may run on another server
/// connection, and the tenant setting must never travel with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_appends_under_row_level_security_keep_tenants_apart() {
    if support::bouncer().is_none() {
        return;
    }
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_bouncer_pool(&admin, 4).await;
    appends_keep_tenants_apart(&admin, &app).await;
}

/// As [`a_reused_pooled_connection_never_shows_another_tenants_rows`], through PgBouncer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_no_connection_shows_another_tenants_rows() {
    if support::bouncer().is_none() {
        return;
    }
    let Some(admin) = support::pool().await else {
        return;
    };
    let app = support::app_role_bouncer_pool(&admin, 4).await;
    let (a, b) = tenants_apart_through_the_store(&app).await;
    a_forgotten_predicate_sees_one_tenant(&app, &a, &b).await;
}

async fn appends_keep_tenants_apart(admin: &PgPool, app: &PgPool) {
    let store = PgEventStore::new(app.clone());
    let (a, b) = (support::tenant("group-a"), support::tenant("group-b"));
    let one_tenant: Vec<StreamId> = (0..12)
        .map(|i| StreamId::new(a.clone(), "account", format!("a{i}")))
        .collect();
    let two_tenants: Vec<StreamId> = (0..12)
        .map(|i| {
            let tenant = if i % 2 == 0 { &a } else { &b };
            StreamId::new(tenant.clone(), "account", format!("ab{i}"))
        })
        .collect();
    let wave = |streams: Vec<StreamId>, expected: ExpectedVersion| {
        let store = store.clone();
        async move {
            let appends = streams.into_iter().enumerate().map(|(i, stream)| {
                let store = store.clone();
                async move {
                    let n = u64::try_from(i).unwrap();
                    store.append(&stream, expected, vec![event(n)]).await
                }
            });
            futures::future::join_all(appends).await
        }
    };
    let every: Vec<StreamId> = one_tenant.iter().chain(&two_tenants).cloned().collect();
    let waves = [
        (one_tenant.clone(), ExpectedVersion::NoStream, 1),
        (two_tenants.clone(), ExpectedVersion::NoStream, 1),
        (every.clone(), ExpectedVersion::Exact(Version::new(1)), 2),
        (one_tenant.clone(), ExpectedVersion::Any, 3),
        (two_tenants.clone(), ExpectedVersion::Any, 3),
    ];
    for (streams, expected, version) in waves {
        for outcome in wave(streams, expected).await {
            assert_eq!(
                outcome.unwrap().version,
                Version::new(version),
                "{expected:?}"
            );
        }
    }
    // A second NoStream on every stream is a conflict, never a write.
    for outcome in wave(one_tenant.clone(), ExpectedVersion::NoStream).await {
        assert!(
            matches!(outcome, Err(StoreError::Conflict { .. })),
            "{outcome:?}"
        );
    }

    // And every expectation alone (no group commit), under the same role.
    let alone = store.clone().without_group_commit();
    let single = StreamId::new(b.clone(), "account", "alone");
    for (expected, version) in [
        (ExpectedVersion::NoStream, 1),
        (ExpectedVersion::Exact(Version::new(1)), 2),
        (ExpectedVersion::StreamExists, 3),
        (ExpectedVersion::Any, 4),
    ] {
        let appended = alone.append(&single, expected, vec![event(version)]).await;
        assert_eq!(
            appended.unwrap().version,
            Version::new(version),
            "{expected:?}"
        );
    }
    let stale = alone
        .append(
            &single,
            ExpectedVersion::Exact(Version::new(1)),
            vec![event(9)],
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );

    for stream in &every {
        let read = store
            .read_stream(stream, VersionRange::all())
            .await
            .unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.version.get()).collect();
        assert_eq!(versions, [1, 2, 3], "{stream}");
        assert!(read.iter().all(|e| e.tenant() == stream.tenant()));
    }
    for (tenant, events) in [(&a, 18 * 3_i64), (&b, 6 * 3 + 4)] {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_one(admin)
            .await
            .unwrap();
        assert_eq!(rows, events, "{tenant}");
    }
}
