//! The global log is gap-free under concurrent writers (DESIGN §4.1, §8).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, StreamId,
    TenantId,
};
use eventsource_postgres::{PgEventStore, begin_tenant};
use serde_json::json;
use sqlx::PgPool;

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

/// Reads the tenant's log after `after` until a page comes back empty.
async fn drain(store: &PgEventStore, tenant: &TenantId, after: LogPosition) -> Vec<RecordedEvent> {
    let filter = LogFilter::tenant(tenant.clone());
    let mut after = after;
    let mut all = Vec::new();
    loop {
        let page = store.read_all(after, 100, &filter).await.expect("read");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

/// The reader a naive implementation would write: `global_position > last`, no horizon.
async fn naive_read(pool: &PgPool, tenant: &TenantId, last: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE tenant_id = $1 AND global_position > $2 \
         ORDER BY global_position",
    )
    .bind(tenant.as_str())
    .bind(last)
    .fetch_all(pool)
    .await
    .expect("naive read")
}

/// Polls until the tenant's log holds `count` events (other tests' transactions may hold the
/// horizon back for a moment), then returns them.
async fn wait_for(store: &PgEventStore, tenant: &TenantId, count: usize) -> Vec<RecordedEvent> {
    for _ in 0..500 {
        let all = drain(store, tenant, LogPosition::START).await;
        if all.len() >= count {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the log never showed {count} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_order_commits_are_neither_skipped_nor_reordered() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("reverse");
    let first = StreamId::new(tenant.clone(), "log", "first");
    let second = StreamId::new(tenant.clone(), "log", "second");

    // Transaction A takes its position first, transaction B second ...
    let mut a = begin_tenant(&pool, &tenant).await.unwrap();
    let appended_a =
        PgEventStore::append_in_tx(&mut a, &first, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
    let mut b = begin_tenant(&pool, &tenant).await.unwrap();
    let appended_b =
        PgEventStore::append_in_tx(&mut b, &second, ExpectedVersion::NoStream, vec![event(2)])
            .await
            .unwrap();
    assert!(appended_a.last_position < appended_b.first_position);

    assert!(drain(&store, &tenant, LogPosition::START).await.is_empty());
    let mut naive_seen = naive_read(&pool, &tenant, 0).await;
    assert!(naive_seen.is_empty());

    // ... but B commits first.
    b.commit().await.unwrap();
    assert!(
        drain(&store, &tenant, LogPosition::START).await.is_empty(),
        "B must stay invisible while the older transaction A is open"
    );
    naive_seen.extend(naive_read(&pool, &tenant, 0).await);
    assert_eq!(naive_seen.len(), 1, "the naive reader sees B at once");
    let naive_checkpoint = naive_seen[0];

    a.commit().await.unwrap();
    let safe = wait_for(&store, &tenant, 2).await;
    let numbers: Vec<_> = safe
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2], "both, in transaction order");
    assert!(safe[0].position < safe[1].position);

    // The control: the naive reader resumes after B's position and never sees A.
    naive_seen.extend(naive_read(&pool, &tenant, naive_checkpoint).await);
    assert_eq!(naive_seen.len(), 1, "the naive reader skipped A for good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_reader_sees_every_committed_event_once_under_stress() {
    const WRITERS: u32 = 24;
    const TRANSACTIONS: u64 = 15;
    let Some(pool) = support::pool_with(WRITERS + 4).await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("stress");
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..u64::from(WRITERS))
        .map(|w| {
            let (pool, tenant) = (pool.clone(), tenant.clone());
            tokio::spawn(async move {
                let stream = StreamId::new(tenant.clone(), "log", format!("w{w}"));
                let mut committed = 0u64;
                for t in 0..TRANSACTIONS {
                    let size = rand::random_range(1..=3u64);
                    let hold = rand::random_range(0..6u64);
                    let roll_back = rand::random_bool(0.1);
                    let mut tx = begin_tenant(&pool, &tenant).await.unwrap();
                    let batch = (0..size).map(|i| event(w * 10_000 + t * 10 + i)).collect();
                    PgEventStore::append_in_tx(&mut tx, &stream, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                    // Hold the transaction open for a random short time, so commits interleave
                    // out of position order.
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    if roll_back {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        committed += size;
                    }
                }
                committed
            })
        })
        .collect();

    let reader = {
        let (store, tenant, done) = (store.clone(), tenant.clone(), done.clone());
        tokio::spawn(async move {
            let filter = LogFilter::tenant(tenant);
            let mut after = LogPosition::START;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store.read_all(after, 50, &filter).await.unwrap();
                for e in &page {
                    assert!(
                        e.position > after,
                        "strictly increasing: {after} then {}",
                        e.position
                    );
                    after = e.position;
                    seen.push(e.event_id);
                }
                if page.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    // Writers of other tests may still hold the horizon back: wait until it passes ours.
    let horizon_passed = wait_for(&store, &tenant, usize::try_from(committed).unwrap()).await;
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no event seen twice");
    assert_eq!(seen.len() as u64, committed, "every committed event seen");
    assert_eq!(horizon_passed.len(), seen.len());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        u64::try_from(stored).unwrap(),
        committed,
        "the reader's count equals count(*)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_order_is_numeric_across_a_transaction_id_digit_boundary() {
    // Transaction ids travel as text; ordering or comparing them as text would put transaction
    // 10000 before 9999. Burn transaction ids up to the next power of ten, then append across it.
    const MAX_BURN: u64 = 200_000;
    let Some(pool) = support::pool().await else {
        return;
    };
    let store = PgEventStore::new(pool.clone());
    // Other tests of this binary take transaction ids concurrently and may carry the counter
    // past the boundary before the first append lands below it: then try the next boundary,
    // in a fresh tenant.
    let mut attempt = 0;
    let (tenant, stream, boundary) = loop {
        attempt += 1;
        assert!(
            attempt <= 5,
            "could not land an append below a digit boundary"
        );
        let next: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
                .fetch_one(&pool)
                .await
                .unwrap();
        let next: u64 = next.parse().unwrap();
        let boundary = 10_u64.pow(next.checked_ilog10().unwrap_or(0) + 1);
        let burn = boundary.saturating_sub(next).saturating_sub(30);
        if burn > MAX_BURN {
            eprintln!("next transaction id {next}: {boundary} is too far to burn up to; skipping");
            return;
        }
        burn_transaction_ids(&pool, burn).await;
        let tenant = support::tenant("digits");
        let stream = StreamId::new(tenant.clone(), "log", "digits");
        let first = store
            .append(&stream, ExpectedVersion::Any, vec![event(0)])
            .await
            .unwrap();
        if first.last_position.transaction() < boundary {
            break (tenant, stream, boundary);
        }
    };
    let mut n = 1;
    loop {
        let appended = store
            .append(&stream, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
        n += 1;
        if appended.last_position.transaction() >= boundary + 2 {
            break;
        }
        assert!(n < 10_000, "the transaction ids never crossed {boundary}");
    }
    let log = wait_for(&store, &tenant, usize::try_from(n).unwrap()).await;
    let numbers: Vec<u64> = log
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..n).collect::<Vec<_>>(),
        "log order is append order"
    );
    assert!(log.first().unwrap().position.transaction() < boundary);
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    // Resuming from a checkpoint just below the boundary finds the events above it.
    let below = log
        .iter()
        .rev()
        .find(|e| e.position.transaction() < boundary)
        .unwrap();
    let rest = drain(&store, &tenant, below.position).await;
    assert!(!rest.is_empty() && rest.iter().all(|e| e.position.transaction() >= boundary));
}

/// Commits `burn` empty transactions, moving the cluster's transaction counter on.
async fn burn_transaction_ids(pool: &sqlx::PgPool, burn: u64) {
    let mut conn = pool.acquire().await.unwrap();
    // One committed transaction per iteration, without waiting for each flush.
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    // Alone in its simple query: a multi-statement query is one transaction, where the loop's
    // COMMIT is not allowed.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN FOR i IN 1..{burn} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("RESET synchronous_commit")
        .execute(&mut *conn)
        .await
        .unwrap();
}
