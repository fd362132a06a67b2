//! Commands in the shape users send them: each task opens a new account and sends it ten
//! commands (`Open`, then nine deposits), then moves on to the next new account. No warm-up:
//! every aggregate starts unknown to the repository and to the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eventsource_core::{EventStore, Repository, TenantId};
use eventsource_postgres::PgEventStore;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::harness::{Table, compare};
use crate::model::{Account, AccountCommand, account_command, account_payload, raw_account_fold};
use crate::raw::{RAW_INSERT_TYPED, RAW_LOAD_TYPED};

/// Commands each account gets: `Open` and nine deposits.
const COMMANDS_PER_AGGREGATE: u64 = 10;

/// Per-task command counters: command `n` of a task goes to its account `n / 10`, as command
/// `n % 10`. They run on across the alternating rounds, so no account is reused.
fn counters(tasks: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..tasks).map(|_| AtomicU64::new(0)).collect())
}

/// The raw engine's command: load the stream (`SELECT version, event_type, payload`), fold
/// it, check the rule, insert the next version; retry on a unique violation.
async fn raw_account_command(pool: &PgPool, stream: &str, command: &AccountCommand) -> u64 {
    loop {
        let rows = sqlx::query(RAW_LOAD_TYPED)
            .bind(stream)
            .fetch_all(pool)
            .await
            .expect("raw load");
        let account = raw_account_fold(
            rows.iter()
                .map(|row| (row.get::<&str, _>(1), row.get::<serde_json::Value, _>(2))),
        );
        let accepted = match command {
            AccountCommand::Open { .. } => !account.open,
            AccountCommand::Deposit { .. } => account.open,
        };
        assert!(accepted, "raw: command rejected on {stream}");
        let (event_type, payload) = account_payload(command);
        let next = i64::try_from(rows.len()).expect("small") + 1;
        match sqlx::query(RAW_INSERT_TYPED)
            .bind(stream)
            .bind(next)
            .bind(Uuid::now_v7())
            .bind(event_type)
            .bind(payload)
            .execute(pool)
            .await
        {
            Ok(_) => return 1,
            Err(e)
                if e.as_database_error()
                    .is_some_and(sqlx::error::DatabaseError::is_unique_violation) => {}
            Err(e) => panic!("raw append: {e}"),
        }
    }
}

/// Runs the shape with `repos` (command `k` of an account goes through `repos[k % len]`:
/// two repositories stand for two processes writing the same accounts) beside raw sqlx.
async fn shape<S: EventStore + Clone + 'static>(
    pool: &PgPool,
    repos: Vec<Repository<Account, S>>,
    tasks: usize,
) -> (f64, f64, u64) {
    let prefix = Uuid::now_v7().simple().to_string();
    let (fw_next, raw_next) = (counters(tasks), counters(tasks));
    let conflicts = Arc::new(AtomicU64::new(0));
    let repos = Arc::new(repos);
    let (p, c) = (prefix.clone(), conflicts.clone());
    let fw = move |task: usize, _| {
        let (repos, p, c, next) = (repos.clone(), p.clone(), c.clone(), fw_next.clone());
        async move {
            let n = next[task].fetch_add(1, Ordering::Relaxed);
            let (k, id) = (
                n % COMMANDS_PER_AGGREGATE,
                format!("{p}-{task}-{}", n / COMMANDS_PER_AGGREGATE),
            );
            let repo = &repos[usize::try_from(k).expect("small") % repos.len()];
            let done = repo
                .execute(&id, account_command(&id, k))
                .await
                .expect("command");
            c.fetch_add(u64::from(done.attempts - 1), Ordering::Relaxed);
            1
        }
    };
    let pool2 = pool.clone();
    let raw = move |task: usize, _| {
        let (pool, p, next) = (pool2.clone(), prefix.clone(), raw_next.clone());
        async move {
            let n = next[task].fetch_add(1, Ordering::Relaxed);
            let k = n % COMMANDS_PER_AGGREGATE;
            let id = format!("{p}-{task}-{}", n / COMMANDS_PER_AGGREGATE);
            raw_account_command(&pool, &format!("raw-{id}"), &account_command(&id, k)).await
        }
    };
    let (framework, raw) = compare(tasks, fw, raw).await;
    (framework, raw, conflicts.load(Ordering::Relaxed))
}

pub(crate) async fn commands_on_new_aggregates(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
) {
    for tasks in [1, 16] {
        for cached in [true, false] {
            let repo = Repository::<Account, _>::new(store.clone()).with_tenant(tenant.clone());
            // The repository as it comes (cache on), then without its cache.
            let repo = if cached { repo } else { repo.without_cache() };
            let (framework, raw, conflicts) = shape(pool, vec![repo], tasks).await;
            let cache = if cached { "cache on" } else { "cache off" };
            table.throughput(
                &format!(
                    "new accounts x 10 cmds, {tasks} task(s), {cache}, cmds/s [conflicts {conflicts}]"
                ),
                "",
                framework,
                raw,
            );
        }
    }
    // Two processes (two repositories, each with its own cache) alternate on every account:
    // with the cache, a command finds its aggregate stale; after its first conflict the
    // aggregate reads its tail before each command.
    for cached in [true, false] {
        let repos = (0..2)
            .map(|_| {
                let repo = Repository::<Account, _>::new(store.clone()).with_tenant(tenant.clone());
                if cached { repo } else { repo.without_cache() }
            })
            .collect();
        let (framework, raw, conflicts) = shape(pool, repos, 16).await;
        let cache = if cached { "cache on" } else { "cache off" };
        table.throughput(
            &format!("  same, 16 tasks, 2 processes alternating, {cache} [conflicts {conflicts}]"),
            "",
            framework,
            raw,
        );
    }
}
