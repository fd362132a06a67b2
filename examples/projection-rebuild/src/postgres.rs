//! The PostgreSQL mode: a balances read model behind a view, kept current by a live runner,
//! rebuilt blue/green while writers append, cut over automatically, then checked against a
//! fresh fold of the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use eventsource_core::{
    Appended, CheckpointStore as _, DomainEvent, Envelope, EventStore, ExpectedVersion, LogFilter,
    LogPosition, NewEvent, StreamId, TenantId, Typed,
};
use eventsource_postgres::{
    MIGRATOR, PgCheckpointStore, PgEventStore, PgProjectionRunner, PgRebuild, ProjectionOptions,
    RebuildOptions, RebuildPhase, RebuildReport, TypedPgProjection, TypedPgRebuildable,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::progress::Bar;
use crate::{AccountEvent, Args};

/// The projection's name: its checkpoint, leases and generations are kept under it.
const NAME: &str = "account-balances";

/// Balance per account, in table `account_balances`; readers query the view of that name in
/// `public`, which points at the serving generation.
struct Balances;

impl TypedPgProjection for Balances {
    type Event = AccountEvent;
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        NAME
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO account_balances (tenant, account, cents) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, account) \
             DO UPDATE SET cents = account_balances.cents + EXCLUDED.cents",
        )
        .bind(event.tenant().as_str())
        .bind(event.stream.aggregate_id())
        .bind(event.payload.delta())
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl TypedPgRebuildable for Balances {
    fn tables(&self) -> &[&str] {
        &["account_balances"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE account_balances (tenant text NOT NULL, account text NOT NULL, \
             cents bigint NOT NULL, PRIMARY KEY (tenant, account))",
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

pub(crate) async fn run(url: &str, events: u64, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(args.writers).unwrap_or(16).saturating_add(8))
        .connect(url)
        .await
        .context("connecting to DATABASE_URL")?;
    MIGRATOR.run(&pool).await?;
    let store = PgEventStore::new(pool.clone());
    println!("on PostgreSQL");

    // Generation 1 of the read model, then its live runner, which follows every append.
    let first = rebuild(&store).run(CancellationToken::new()).await?;
    let first = first.context("the first build was cancelled")?;
    println!(
        "read model created: generation {} (from the {} events already in the log)",
        first.generation, first.processed
    );
    let shutdown = CancellationToken::new();
    let live: JoinHandle<Result<(), _>> = tokio::spawn(
        PgProjectionRunner::new(
            store.clone(),
            Typed::new(Balances),
            ProjectionOptions::default()
                .with_instance_id("projection-rebuild-live")
                .with_max_idle_poll(Duration::from_millis(50)),
        )
        .run(shutdown.clone()),
    );

    let seeding = Instant::now();
    let written = Arc::new(Written::default());
    seed(&store, events, args.accounts, &written).await?;
    println!(
        "wrote {events} events over {} accounts in {:.1?}",
        args.accounts,
        seeding.elapsed()
    );
    caught_up(&store, written.head(), &live).await?;
    println!(
        "the live runner is current ({:.1?} after the writes began)",
        seeding.elapsed()
    );

    // Generation 2 while writers keep appending and the live runner keeps generation 1 current.
    let writing = CancellationToken::new();
    let seeded = written.events();
    let writers: Vec<_> = (0..args.writers)
        .map(|w| tokio::spawn(write(store.clone(), w, written.clone(), writing.clone())))
        .collect();
    let report = rebuild_with_progress(&store).await?;
    let during = written.events() - seeded;
    println!(
        "cut over to generation {} at log position {}: {} events in {:.1?} ({:.0} events/s), \
         {during} appended meanwhile",
        report.generation,
        report
            .cutover_position
            .map_or_else(|| "start".to_owned(), |at| at.to_string()),
        report.processed,
        report.elapsed,
        rate(report.processed, report.elapsed),
    );

    // Writers go on for a moment on the new generation, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.cancel();
    for writer in writers {
        writer.await??;
    }
    let after = written.events() - seeded;

    caught_up(&store, written.head(), &live).await?;
    shutdown.cancel();
    live.await??;
    let (accounts, cents, log) = verify(&pool, &store, written.head()).await?;
    println!(
        "verified: the live read model (generation {}) equals a fresh build of the log's {log} \
         events ({} accounts, {} cents in all); {after} events appended by {} writers during \
         and after the rebuild; {:.1?} in all",
        report.generation,
        accounts,
        cents,
        args.writers,
        started.elapsed()
    );
    Ok(())
}

/// Runs the next generation's rebuild, rendering its progress reports.
async fn rebuild_with_progress(store: &PgEventStore) -> anyhow::Result<RebuildReport> {
    let rebuild = rebuild(store);
    let mut progress = rebuild.progress();
    let bar = Bar::new("rebuilding")?;
    let render = tokio::spawn(async move {
        // Ends when the rebuild, and with it the sender, is dropped.
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            if p.phase != RebuildPhase::Starting {
                bar.update(p.processed, p.total, p.events_per_second, p.eta);
            }
        }
        bar.finish();
    });
    let report = rebuild.run(CancellationToken::new()).await;
    render.await?;
    report?.context("the rebuild was cancelled")
}

/// Compares what readers see (the view `account_balances`) with a fresh fold of the log;
/// returns the accounts, the cents in all, and the events of the log.
async fn verify(
    pool: &PgPool,
    store: &PgEventStore,
    head: LogPosition,
) -> anyhow::Result<(usize, i64, u64)> {
    let (expected, log) = fresh_build(store, head).await?;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT tenant, account, cents FROM account_balances")
            .fetch_all(pool)
            .await?;
    let served: HashMap<(String, String), i64> = rows
        .into_iter()
        .map(|(tenant, account, cents)| ((tenant, account), cents))
        .collect();
    if served != expected {
        let wrong = expected
            .iter()
            .filter(|(key, cents)| served.get(*key) != Some(cents))
            .count();
        bail!(
            "the live read model differs from a fresh build of the log: {wrong} of {} \
             accounts wrong, {} rows served",
            expected.len(),
            served.len()
        );
    }
    Ok((expected.len(), expected.values().sum(), log))
}

/// The next generation's rebuild.
fn rebuild(store: &PgEventStore) -> PgRebuild<Typed<Balances>> {
    PgRebuild::new(
        store.clone(),
        Typed::new(Balances),
        RebuildOptions::default().with_instance_id("projection-rebuild"),
    )
}

/// Appends `events` events, 100 per append, round the accounts, from four tasks.
async fn seed(
    store: &PgEventStore,
    events: u64,
    accounts: u64,
    written: &Arc<Written>,
) -> anyhow::Result<()> {
    const PER_APPEND: u64 = 100;
    const TASKS: u64 = 4;
    let appends = events.div_ceil(PER_APPEND);
    let tasks: Vec<JoinHandle<anyhow::Result<()>>> = (0..TASKS)
        .map(|t| {
            let (store, accounts, written) = (store.clone(), accounts.max(1), written.clone());
            tokio::spawn(async move {
                for k in (t..appends).step_by(usize::try_from(TASKS)?) {
                    let batch = (k * PER_APPEND..((k + 1) * PER_APPEND).min(events))
                        .map(|i| NewEvent::from_event(&AccountEvent::nth(i)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let account = account(k % accounts);
                    let n = batch.len() as u64;
                    let appended = store.append(&account, ExpectedVersion::Any, batch).await?;
                    written.record(n, &appended);
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Writer `w`: appends five events at a time to one account after another, 100 events a
/// second (well under what the rebuild applies, so that it reaches the head), until `writing`
/// is cancelled, recording them in `written`.
async fn write(
    store: PgEventStore,
    w: u64,
    written: Arc<Written>,
    writing: CancellationToken,
) -> anyhow::Result<()> {
    let mut i = 0;
    while !writing.is_cancelled() {
        let batch = (i..i + 5)
            .map(|n| NewEvent::from_event(&AccountEvent::nth(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let account = account(w * 7919 + i / 5);
        let appended = store.append(&account, ExpectedVersion::Any, batch).await?;
        written.record(5, &appended);
        i += 5;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn account(n: u64) -> StreamId {
    StreamId::new(TenantId::default(), "account", format!("acc-{n}"))
}

/// Folds the log afresh up to `head`: the balance of every account, and how many events the
/// log holds.
///
/// The log shows an event once every transaction that began before it ended, on the whole
/// server: a page may come back short of `head` for a moment, so it waits for the rest.
async fn fresh_build(
    store: &PgEventStore,
    head: LogPosition,
) -> anyhow::Result<(HashMap<(String, String), i64>, u64)> {
    let mut balances = HashMap::new();
    let (mut after, mut count) = (LogPosition::START, 0_u64);
    let deadline = Instant::now() + Duration::from_mins(1);
    while after < head {
        let page = store.read_all(after, 10_000, &LogFilter::all()).await?;
        let Some(last) = page.last() else {
            if Instant::now() > deadline {
                bail!("the log did not show {head} within a minute");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        after = last.position;
        // Only up to `head`: what the live runner was waited for.
        for event in page.into_iter().take_while(|event| event.position <= head) {
            count += 1;
            if !AccountEvent::knows(&event.event_type) {
                continue;
            }
            let event = event.decode::<AccountEvent>()?;
            *balances
                .entry((
                    event.tenant().as_str().to_owned(),
                    event.stream.aggregate_id().to_owned(),
                ))
                .or_default() += event.payload.delta();
        }
    }
    Ok((balances, count))
}

/// Waits until the live runner's checkpoint reaches `head`; fails if the runner stopped, or
/// after a minute.
async fn caught_up(
    store: &PgEventStore,
    head: LogPosition,
    live: &JoinHandle<Result<(), impl std::error::Error>>,
) -> anyhow::Result<()> {
    let checkpoints = PgCheckpointStore::new(store.pool().clone());
    let deadline = Instant::now() + Duration::from_mins(1);
    while checkpoints.load(NAME).await?.unwrap_or(LogPosition::START) < head {
        if live.is_finished() {
            bail!("the live runner stopped");
        }
        if Instant::now() > deadline {
            bail!("the live runner did not reach {head} within a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What this run appended: how many events, and the log position of the last one.
#[derive(Debug)]
struct Written {
    events: AtomicU64,
    head: Mutex<LogPosition>,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            events: AtomicU64::new(0),
            head: Mutex::new(LogPosition::START),
        }
    }
}

impl Written {
    fn record(&self, events: u64, appended: &Appended) {
        self.events.fetch_add(events, Ordering::Relaxed);
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        *head = (*head).max(appended.last_position);
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn head(&self) -> LogPosition {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[allow(clippy::cast_precision_loss, reason = "a rate for display")]
fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}
