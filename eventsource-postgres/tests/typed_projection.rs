//! Typed PostgreSQL projections (`TypedPgProjection`, `TypedPgRebuildable` wrapped in core's
//! `Typed`): the runner hands each event of the enum, decoded, to the typed methods and its side
//! effect, skips other types without writing and moves its checkpoint past them, halts before
//! an undecodable event naming it (the handler reports it as permanent); a typed projection is
//! rebuilt into a generation and cut over like an untyped one.

mod support;

use std::sync::Mutex;

use eventsource_core::{
    CheckpointStore, DomainEvent, Envelope, EventHandler, EventStore, ExpectedVersion, LogFilter,
    LogPosition, NewEvent, RecordedEvent, StreamId, TenantId, Typed, TypedError,
};
use eventsource_postgres::{
    PgCheckpointStore, PgEventStore, PgProjectionError, PgProjectionHandler, PgProjectionRunner,
    PgRebuild, ProjectionOptions, RebuildOptions, TypedPgProjection, TypedPgRebuildable,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "typed-deposited")]
    Deposited { cents: i64 },
    #[event(name = "typed-withdrawn")]
    Withdrawn { cents: i64 },
}

/// Balance per account in table `typed_balances`; records the events its side effect saw.
struct Balances {
    name: String,
    side_effects: Mutex<Vec<(String, AccountEvent)>>,
}

impl Balances {
    fn new(name: &str) -> Typed<Self> {
        Typed::new(Self {
            name: name.to_owned(),
            side_effects: Mutex::default(),
        })
    }
}

const CREATE_BALANCES: &str = "CREATE TABLE IF NOT EXISTS typed_balances (
    projection text NOT NULL, account text NOT NULL, cents bigint NOT NULL,
    PRIMARY KEY (projection, account))";

impl TypedPgProjection for Balances {
    type Event = AccountEvent;
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let delta = match event.payload {
            AccountEvent::Deposited { cents } => cents,
            AccountEvent::Withdrawn { cents } => -cents,
        };
        sqlx::query(
            "INSERT INTO typed_balances (projection, account, cents) VALUES ($1, $2, $3) \
             ON CONFLICT (projection, account) DO UPDATE \
             SET cents = typed_balances.cents + EXCLUDED.cents",
        )
        .bind(&self.name)
        .bind(event.stream.aggregate_id())
        .bind(delta)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn side_effect(&self, event: &Envelope<AccountEvent>) {
        self.side_effects.lock().unwrap().push((
            event.stream.aggregate_id().to_owned(),
            event.payload.clone(),
        ));
    }
}

impl TypedPgRebuildable for Balances {
    fn tables(&self) -> &[&str] {
        &["typed_balances"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(CREATE_BALANCES).execute(conn).await?;
        Ok(())
    }
}

async fn setup() -> Option<(PgPool, PgEventStore, TenantId, String)> {
    let pool = support::pool().await?;
    let mut tx = pool.begin().await.unwrap();
    // Concurrent CREATE TABLE IF NOT EXISTS can collide: one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(7245017)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(CREATE_BALANCES)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("typed");
    let name = format!("typed-{}", Uuid::now_v7().simple());
    Some((pool, store, tenant, name))
}

/// Appends `events` to `account`'s stream, one append each, and waits until the tenant's log
/// shows them (another test's open transaction may hide them for a moment).
async fn append(store: &PgEventStore, tenant: &TenantId, account: &str, events: Vec<NewEvent>) {
    let expected = log(store, tenant).await.len() + events.len();
    let stream = StreamId::new(tenant.clone(), "account", account);
    for event in events {
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log(store, tenant).await.len() < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn event(e: &AccountEvent) -> NewEvent {
    NewEvent::from_event(e).unwrap()
}

async fn log(store: &PgEventStore, tenant: &TenantId) -> Vec<RecordedEvent> {
    store
        .read_all(
            LogPosition::START,
            10_000,
            &LogFilter::tenant(tenant.clone()),
        )
        .await
        .unwrap()
}

/// `(account, cents)` of projection `name` in `table` (a table, or a reader view).
async fn balances(pool: &PgPool, table: &str, name: &str) -> Vec<(String, i64)> {
    let query =
        format!("SELECT account, cents FROM {table} WHERE projection = $1 ORDER BY account");
    sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(name)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn options(tenant: &TenantId) -> ProjectionOptions {
    ProjectionOptions::default().with_filter(LogFilter::tenant(tenant.clone()))
}

#[tokio::test]
async fn a_typed_projection_gets_its_events_decoded_and_skips_other_types() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(
        &store,
        &tenant,
        "a-1",
        vec![
            event(&AccountEvent::Deposited { cents: 500 }),
            // Another enum's event in the same log: skipped without decoding.
            NewEvent::new("order-placed", 1, json!({ "sku": "x" })),
            event(&AccountEvent::Withdrawn { cents: 120 }),
        ],
    )
    .await;
    append(
        &store,
        &tenant,
        "a-2",
        vec![
            event(&AccountEvent::Deposited { cents: 70 }),
            NewEvent::new("order-placed", 1, json!({ "sku": "y" })),
        ],
    )
    .await;
    let runner = PgProjectionRunner::new(store.clone(), Balances::new(&name), options(&tenant));
    assert_eq!(
        runner.catch_up().await.unwrap(),
        5,
        "every event of the log counts"
    );
    assert_eq!(
        balances(&pool, "typed_balances", &name).await,
        [("a-1".to_owned(), 380), ("a-2".to_owned(), 70)]
    );
    // The checkpoint is past the trailing foreign event.
    let log = log(&store, &tenant).await;
    assert_eq!(
        PgCheckpointStore::new(pool.clone())
            .load(&name)
            .await
            .unwrap(),
        Some(log.last().unwrap().position)
    );
    // The side effect ran once per event of the enum, live, with the decoded event.
    assert_eq!(
        *runner.projection().get_ref().side_effects.lock().unwrap(),
        [
            ("a-1".to_owned(), AccountEvent::Deposited { cents: 500 }),
            ("a-1".to_owned(), AccountEvent::Withdrawn { cents: 120 }),
            ("a-2".to_owned(), AccountEvent::Deposited { cents: 70 }),
        ]
    );
}

#[tokio::test]
async fn an_undecodable_event_halts_the_typed_runner_before_it_and_is_permanent_for_the_handler() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(
        &store,
        &tenant,
        "a-1",
        vec![
            event(&AccountEvent::Deposited { cents: 500 }),
            // The enum's type name, a payload it cannot decode.
            NewEvent::new("typed-deposited", 1, json!({ "cents": "many" })),
            event(&AccountEvent::Deposited { cents: 1 }),
        ],
    )
    .await;
    let log = log(&store, &tenant).await;
    let runner = PgProjectionRunner::new(store.clone(), Balances::new(&name), options(&tenant));
    let err = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::Apply { event_id, source: TypedError::Decode(_), .. }
            if *event_id == log[1].event_id),
        "{err:?}"
    );
    assert_eq!(
        balances(&pool, "typed_balances", &name).await,
        [("a-1".to_owned(), 500)]
    );
    assert_eq!(
        PgCheckpointStore::new(pool.clone())
            .load(&name)
            .await
            .unwrap(),
        Some(log[0].position),
        "the checkpoint stays before the undecodable event"
    );

    // Through at-least-once delivery: the same event fails, permanently (dead-lettered at once).
    let handler = PgProjectionHandler::new(pool.clone(), Balances::new(&format!("{name}-h")));
    let err = handler.handle(&log[1]).await.unwrap_err();
    assert!(
        matches!(
            &err,
            PgProjectionError::Apply {
                source: TypedError::Decode(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(handler.is_permanent(&err));
    handler.handle(&log[2]).await.unwrap();
    assert_eq!(
        balances(&pool, "typed_balances", &format!("{name}-h")).await,
        [("a-1".to_owned(), 1)]
    );

    // The projection's own errors are transient by default: the group retries them.
    append(
        &store,
        &tenant,
        "a-1",
        vec![event(&AccountEvent::Deposited { cents: i64::MAX })],
    )
    .await;
    let overflow = self::log(&store, &tenant).await.pop().unwrap();
    let err = handler.handle(&overflow).await.unwrap_err();
    assert!(
        matches!(
            &err,
            PgProjectionError::Apply {
                source: TypedError::Handler(_),
                ..
            }
        ),
        "bigint out of range: {err:?}"
    );
    assert!(!handler.is_permanent(&err));
}

#[tokio::test]
async fn a_typed_projection_is_rebuilt_into_a_generation_and_cut_over() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    let readers = format!("readers_{}", Uuid::now_v7().simple());
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&readers)
        .execute(&pool)
        .await
        .unwrap();
    append(
        &store,
        &tenant,
        "a-1",
        vec![
            event(&AccountEvent::Deposited { cents: 300 }),
            NewEvent::new("order-placed", 1, json!({ "sku": "x" })),
            event(&AccountEvent::Withdrawn { cents: 100 }),
        ],
    )
    .await;
    let rebuild = |projection| {
        PgRebuild::new(
            store.clone(),
            projection,
            RebuildOptions::default()
                .with_filter(LogFilter::tenant(tenant.clone()))
                .with_reader_schema(&readers),
        )
    };
    let projection = Balances::new(&name);
    let report = rebuild(projection)
        .run(CancellationToken::new())
        .await
        .unwrap()
        .expect("cut over");
    assert_eq!(report.generation, 1);
    assert_eq!(report.processed, 3);
    let view = format!("{readers}.typed_balances");
    assert_eq!(
        balances(&pool, &view, &name).await,
        [("a-1".to_owned(), 200)]
    );
    // The live runner continues on generation 1; a second rebuild cuts over to generation 2.
    append(
        &store,
        &tenant,
        "a-2",
        vec![event(&AccountEvent::Deposited { cents: 40 })],
    )
    .await;
    let live = PgProjectionRunner::new(store.clone(), Balances::new(&name), options(&tenant));
    assert_eq!(live.catch_up().await.unwrap(), 1);
    let second = rebuild(Balances::new(&name))
        .run(CancellationToken::new())
        .await
        .unwrap()
        .expect("cut over");
    assert_eq!(second.generation, 2);
    assert_eq!(
        balances(&pool, &view, &name).await,
        [("a-1".to_owned(), 200), ("a-2".to_owned(), 40)]
    );
    // A rebuild never runs side effects; only the live runner's event had one.
    assert_eq!(
        live.projection()
            .get_ref()
            .side_effects
            .lock()
            .unwrap()
            .len(),
        1
    );
}
