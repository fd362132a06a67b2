//! Tenant shards on the server: `eventsource_tenant_hash` is `shard_of`, and a log read or count
//! with `LogFilter::with_shard` returns exactly that shard's tenants' events (ADR 0035).

mod support;

use std::collections::BTreeMap;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, Shard, StreamId,
    TenantId, shard_of,
};
use eventsource_postgres::PgEventStore;
use serde_json::json;

/// Tenant ids to hash: ASCII, empty, multi-byte UTF-8 of every length, and random strings.
fn tenant_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "",
        "a",
        "acme",
        "default",
        "shard-bench-0",
        "ü",
        "Müller & Söhne",
        "日本語のテナント",
        "emoji 🎉🚀",
        "ελληνικά",
        "\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
        "tenant with spaces and \"quotes\" and 'apostrophes'",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    ids.extend((0..500).map(|i| format!("tenant-{i}")));
    for _ in 0..500 {
        let len = rand::random_range(0..40);
        let id: String = (0..len)
            .map(|_| {
                loop {
                    // Any scalar value but NUL, which PostgreSQL text cannot hold.
                    if let Some(c) = char::from_u32(rand::random_range(1..=0x10_ffff)) {
                        break c;
                    }
                }
            })
            .collect();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn the_sql_tenant_hash_is_shard_of() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let ids = tenant_ids();
    let hashes: Vec<(String, i64)> =
        sqlx::query_as("SELECT t, eventsource_tenant_hash(t) FROM unnest($1::text[]) AS t")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(hashes.len(), ids.len());
    for (id, hash) in hashes {
        let tenant = TenantId::new(id.as_str());
        for count in [1_u32, 2, 3, 5, 7, 16, 1_000, u32::MAX] {
            let sql = u32::try_from(hash % i64::from(count)).unwrap();
            assert_eq!(sql, shard_of(&tenant, count), "{id:?} of {count}");
        }
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

/// Every event after `after` that `filter` admits, in pages of 7.
async fn drain(store: &PgEventStore, after: LogPosition, filter: &LogFilter) -> Vec<RecordedEvent> {
    let mut after = after;
    let mut all = Vec::new();
    loop {
        let page = store.read_all(after, 7, filter).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// The log's head once it covers `last` (the horizon is cluster-wide: another test's open
/// transaction holds it back for a while). Gives up after two minutes, naming the
/// transactions that hold the horizon.
async fn visible_head(store: &PgEventStore, last: LogPosition) -> LogPosition {
    for _ in 0..2_400 {
        if let Some(head) = store.log_head().await.unwrap()
            && head >= last
        {
            return head;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let holders: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('pid %s, db %s, app %s, %s, xid %s, since %s', pid, datname,
                       application_name, state, backend_xid, xact_start),
                left(query, 300)
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    panic!("the log's head never reached {last}; transactions holding it: {holders:#?}");
}

#[tokio::test]
async fn a_shard_reads_exactly_its_tenants_events_in_log_order() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool);
    let start = store
        .log_head()
        .await
        .unwrap()
        .unwrap_or(LogPosition::START);
    let prefix = support::tenant("shards");
    let tenants: Vec<TenantId> = (0..12)
        .map(|i| TenantId::new(format!("{prefix}-{i}-ü")))
        .collect();
    let mut last = start;
    for round in 0..3_u64 {
        for (i, tenant) in tenants.iter().enumerate() {
            let stream = StreamId::new(tenant.clone(), "counter", format!("c-{}", i % 2));
            let appended = store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![event(round), event(round)],
                )
                .await
                .unwrap();
            last = last.max(appended.last_position);
        }
    }
    let head = visible_head(&store, last).await;
    let ours = |events: Vec<RecordedEvent>| -> Vec<RecordedEvent> {
        events
            .into_iter()
            .filter(|e| e.position <= head && tenants.contains(e.tenant()))
            .collect()
    };
    let all = ours(drain(&store, start, &LogFilter::all()).await);
    assert_eq!(all.len(), 72);
    assert_eq!(
        all.last().map(|e| e.position),
        Some(last),
        "the head covers them all"
    );

    let count = 3;
    let mut merged: Vec<RecordedEvent> = Vec::new();
    for index in 0..count {
        let shard = Shard::new(index, count);
        let filter = LogFilter::all().with_shard(shard);
        let read = drain(&store, start, &filter).await;
        // Other tests write too: whatever comes back is of this shard.
        assert!(read.iter().all(|e| shard.contains(e.tenant())));
        assert!(read.windows(2).all(|w| w[0].position < w[1].position));
        let read = ours(read);
        let expected: Vec<_> = all.iter().filter(|e| shard.contains(e.tenant())).collect();
        assert_eq!(read.iter().collect::<Vec<_>>(), expected, "shard {index}");
        merged.extend(read);

        // The count agrees with the read (bounded by the other tests' writes only from above).
        let counted = store.count_after(start, &filter).await.unwrap();
        assert!(counted >= u64::try_from(expected.len()).unwrap());

        // A tenant filter outside the shard reads and counts nothing.
        for tenant in &tenants {
            let both = LogFilter::tenant(tenant.clone()).with_shard(shard);
            let read = drain(&store, start, &both).await;
            let counted = store.count_after(start, &both).await.unwrap();
            if shard.contains(tenant) {
                assert_eq!(read.len(), 6, "{tenant}");
                assert_eq!(counted, 6, "{tenant}");
            } else {
                assert!(read.is_empty(), "{tenant}");
                assert_eq!(counted, 0, "{tenant}");
            }
        }
    }
    merged.sort_by_key(|e| e.position);
    assert_eq!(merged, all, "the shards partition the log");

    let mut per_shard: BTreeMap<u32, usize> = BTreeMap::new();
    for tenant in &tenants {
        *per_shard.entry(shard_of(tenant, count)).or_default() += 1;
    }
    assert!(
        per_shard.len() > 1,
        "the tenants spread over shards: {per_shard:?}"
    );
}

#[tokio::test]
async fn a_shard_of_one_is_the_whole_log() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool);
    let start = store
        .log_head()
        .await
        .unwrap()
        .unwrap_or(LogPosition::START);
    let tenant = support::tenant("one-shard");
    let stream = StreamId::new(tenant.clone(), "counter", "c");
    store
        .append(&stream, ExpectedVersion::Any, vec![event(1), event(2)])
        .await
        .unwrap();
    let filter = LogFilter::tenant(tenant.clone()).with_shard(Shard::new(0, 1));
    assert_eq!(filter.shard, None, "a shard of one is no filter");
    assert_eq!(drain(&store, start, &filter).await.len(), 2);
}

/// The head is the last event in log order, transaction ids compared as numbers: a session
/// whose `events` is a temporary copy holding transactions 9 and 10 (9 sorts after 10 as text).
#[tokio::test]
async fn the_log_head_compares_transaction_ids_as_numbers() {
    let Some(pool) = support::pool_with(1).await else {
        return;
    };
    let mut conn = pool.acquire().await.unwrap();
    sqlx::Executor::execute(
        &mut *conn,
        "CREATE TEMP TABLE events (LIKE public.events INCLUDING ALL);
         INSERT INTO events (transaction_id, stream_key, tenant_id, aggregate_type,
                             aggregate_id, version, event_id, event_type, schema_version,
                             payload, metadata)
         VALUES ('9', 1, 'head', 'counter', 'c', 1, gen_random_uuid(), 'Numbered', 1, '{}', '{}'),
                ('10', 1, 'head', 'counter', 'c', 2, gen_random_uuid(), 'Numbered', 1, '{}', '{}')",
    )
    .await
    .unwrap();
    drop(conn);
    let head = PgEventStore::new(pool).log_head().await.unwrap().unwrap();
    assert_eq!(head.transaction(), 10, "{head}");
}
