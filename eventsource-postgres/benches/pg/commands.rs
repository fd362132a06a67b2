//! Commands through the repository.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventsource_core::{Repository, RetryPolicy, TenantId};
use eventsource_postgres::PgEventStore;
use serde_json::json;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::harness::{Table, compare, run_times, with_group};
use crate::model::Counter;
use crate::raw::{RAW_INSERT, RAW_LOAD};

/// Aggregates each task of the command scenarios works on, in turn.
pub(crate) const AGGREGATES_PER_TASK: u64 = 50;

/// The raw command loop: load the stream, fold it, insert the next version; retry on a
/// unique violation (someone appended first).
pub(crate) async fn raw_command(
    pool: &PgPool,
    prefix: &str,
    hot: bool,
    task: usize,
    i: u64,
    conflicts: &AtomicU64,
) -> u64 {
    let stream = if hot {
        format!("r{prefix}-hot")
    } else {
        format!("r{prefix}-{task}-{}", i % AGGREGATES_PER_TASK)
    };
    loop {
        let rows = sqlx::query(RAW_LOAD)
            .bind(&stream)
            .fetch_all(pool)
            .await
            .expect("raw load");
        let mut value = 0u64;
        for row in &rows {
            let payload: serde_json::Value = row.get(1);
            value += payload["by"].as_u64().unwrap_or(0);
        }
        std::hint::black_box(value);
        let next = i64::try_from(rows.len()).unwrap_or(i64::MAX) + 1;
        match sqlx::query(RAW_INSERT)
            .bind(&stream)
            .bind(next)
            .bind(Uuid::now_v7())
            .bind(json!({ "by": 1 }))
            .execute(pool)
            .await
        {
            Ok(_) => return 1,
            Err(e)
                if e.as_database_error()
                    .is_some_and(sqlx::error::DatabaseError::is_unique_violation) =>
            {
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("raw append: {e}"),
        }
    }
}

pub(crate) async fn commands(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    // Commands through the Repository: load + handle + append, `AGGREGATES_PER_TASK` aggregates
    // per task.
    let retry = RetryPolicy::default()
        .with_max_attempts(1000)
        .with_base_delay(Duration::from_micros(100));
    for (tasks, hot) in [(1, false), (16, false), (16, true)] {
        let label = if hot {
            "one hot stream".to_owned()
        } else {
            "distinct aggregates".to_owned()
        };
        // The recommended set-up (cache + group commit) first, then each turned off.
        for (cached, grouped) in [(true, true), (true, false), (false, false)] {
            let prefix = Uuid::now_v7().simple().to_string();
            let store = if grouped {
                with_group(store.clone())
            } else {
                store.clone().without_group_commit()
            };
            let mut repo = Repository::<Counter, _>::new(store)
                .with_tenant(tenant.clone())
                .with_retry(retry);
            repo = if cached {
                repo.with_cache(10_000)
            } else {
                repo.without_cache()
            };
            let conflicts = Arc::new(AtomicU64::new(0));
            let (p, c) = (prefix.clone(), conflicts.clone());
            let fw = move |task, i| {
                let (repo, p, c) = (repo.clone(), p.clone(), c.clone());
                async move {
                    let id = if hot {
                        format!("{p}-hot")
                    } else {
                        format!("{p}-{task}-{}", i % AGGREGATES_PER_TASK)
                    };
                    let done = repo.execute(&id, 1).await.expect("command");
                    c.fetch_add(u64::from(done.attempts - 1), Ordering::Relaxed);
                    1
                }
            };
            let raw_conflicts = Arc::new(AtomicU64::new(0));
            let (pool2, c) = (pool.clone(), raw_conflicts.clone());
            let raw = move |task, i| {
                let (pool, p, c) = (pool2.clone(), prefix.clone(), c.clone());
                async move { raw_command(&pool, &p, hot, task, i, &c).await }
            };
            // Steady state: every aggregate has been commanded once (with the cache, loaded
            // once) before the timed rounds, so the first round does not carry the one-off
            // loads of the whole working set. Both sides get the same warm-up.
            run_times(tasks, AGGREGATES_PER_TASK, &fw).await;
            run_times(tasks, AGGREGATES_PER_TASK, &raw).await;
            conflicts.store(0, Ordering::Relaxed);
            raw_conflicts.store(0, Ordering::Relaxed);
            let (framework, raw) = compare(tasks, fw, raw).await;
            let setup = match (cached, grouped) {
                (true, true) => {
                    format!("commands, {tasks} task(s), {label}, cache + group commit, cmds/s")
                }
                (true, false) => "  same, cache, no group commit".to_owned(),
                _ => "  same, no cache, no group commit".to_owned(),
            };
            let name = format!(
                "{setup} [conflicts {}/raw {}]",
                conflicts.load(Ordering::Relaxed),
                raw_conflicts.load(Ordering::Relaxed)
            );
            table.throughput(&name, "", framework, raw);
        }
    }
}
