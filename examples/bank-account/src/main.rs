//! The eventsource quickstart: a bank account on the embedded in-memory store.
//!
//! Shows the derives, commands, a rejected command, two concurrent writers where one hits a
//! version conflict that the repository's retry resolves, and reading a stream and the tenant's
//! log back. Needs no services:
//!
//! ```sh
//! cargo run -p bank-account
//! ```
//!
//! With `DATABASE_URL` set, the same story runs on PostgreSQL (`PgEventStore`; the migrations
//! run first), in a tenant of its own per run so that runs do not meet:
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p bank-account
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use eventsource_core::{
    Aggregate, Appended, CommandContext, CommandError, DomainEvent, EventStore, ExpectedVersion,
    Handle, InMemoryEventStore, LogFilter, LogPosition, NewEvent, RecordedEvent, Repository,
    StoreError, StreamId, TenantId, Version, VersionRange,
};
use serde::{Deserialize, Serialize};

/// What happened to an account. Stored names are fixed here, not by the Rust variant names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "account-opened")]
    Opened { owner: String },
    #[event(name = "funds-deposited")]
    Deposited { cents: u64 },
    #[event(name = "funds-withdrawn")]
    Withdrawn { cents: u64 },
    /// A statement was requested: recorded for audit, changes no balance.
    #[event(name = "statement-requested", no_state_change)]
    StatementRequested,
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "bank-account", event = AccountEvent)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, e: account_event::Opened) {
        self.owner = Some(e.owner.clone());
    }

    fn when_deposited(&mut self, e: account_event::Deposited) {
        self.balance += e.cents;
    }

    fn when_withdrawn(&mut self, e: account_event::Withdrawn) {
        self.balance -= e.cents;
    }
}

#[derive(Debug, Clone)]
enum AccountCommand {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
    RequestStatement,
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum AccountError {
    #[error("account is already open")]
    AlreadyOpen,
    #[error("account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance} cents, requested {requested} cents")]
    InsufficientFunds { balance: u64, requested: u64 },
}

impl Handle for Account {
    type Command = AccountCommand;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match (command, &self.owner) {
            (AccountCommand::Open { .. }, Some(_)) => Err(AccountError::AlreadyOpen),
            (AccountCommand::Open { owner }, None) => Ok(vec![AccountEvent::Opened { owner }]),
            (_, None) => Err(AccountError::NotOpen),
            (AccountCommand::Deposit { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Deposited { cents }])
            }
            (AccountCommand::Withdraw { cents }, Some(_)) if cents > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: cents,
                })
            }
            (AccountCommand::Withdraw { cents }, Some(_)) => {
                Ok(vec![AccountEvent::Withdrawn { cents }])
            }
            (AccountCommand::RequestStatement, Some(_)) => {
                Ok(vec![AccountEvent::StatementRequested])
            }
        }
    }
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("store: in memory (set DATABASE_URL to run on PostgreSQL)");
        return story(InMemoryEventStore::new(), TenantId::default()).await;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    eventsource_postgres::MIGRATOR.run(&pool).await?;
    let tenant = TenantId::new(format!("bank-{}", uuid::Uuid::now_v7().simple()));
    println!("store: PostgreSQL, tenant {tenant}");
    story(eventsource_postgres::PgEventStore::new(pool), tenant).await
}

/// The example itself, on any store.
async fn story<S>(inner: S, tenant: TenantId) -> Result<(), Box<dyn std::error::Error>>
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    let store = Interleaving::new(inner);
    let accounts = Repository::<Account, _>::new(store.clone()).with_tenant(tenant.clone());
    let ctx = CommandContext::new()
        .with_actor("teller-7")
        .with_source("bank-account example");

    accounts
        .execute_with(
            "acc-1",
            AccountCommand::Open {
                owner: "Ada".into(),
            },
            &ctx,
        )
        .await?;
    accounts
        .execute_with("acc-1", AccountCommand::Deposit { cents: 10_000 }, &ctx)
        .await?;
    accounts
        .execute_with("acc-1", AccountCommand::Withdraw { cents: 3_000 }, &ctx)
        .await?;
    let account = accounts.load("acc-1").await?;
    println!(
        "opened acc-1 for Ada, deposited 100.00, withdrew 30.00: balance {} at version {}",
        money(account.state().balance),
        account.version()
    );

    // A command the aggregate refuses: a typed domain error, nothing written.
    match accounts
        .execute("acc-1", AccountCommand::Withdraw { cents: 1_000_000 })
        .await
    {
        Err(CommandError::Rejected(e)) => println!("rejected a withdrawal of 10000.00: {e}"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }

    // Two writers: the payroll deposit runs on the account as this process knows it, then a
    // card payment from another process commits before the payroll deposit appends. The
    // payroll append conflicts; the repository reloads the tail, handles the command again and
    // succeeds. (A clone of `accounts` would share its cache, whose per-aggregate lock makes
    // commands on one account in one process take turns instead of conflicting.)
    let card = Repository::<Account, _>::new(store.clone()).with_tenant(tenant.clone());
    store.before_next_append(async move {
        let done = card
            .execute("acc-1", AccountCommand::Withdraw { cents: 2_500 })
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "card payment of 25.00 committed first (version {})",
            done.version
        );
        Ok(())
    });
    let payroll = accounts
        .execute("acc-1", AccountCommand::Deposit { cents: 50_000 })
        .await?;
    println!(
        "payroll deposit of 500.00 hit {} conflict(s) and succeeded on attempt {} (version {})",
        payroll.attempts - 1,
        payroll.attempts,
        payroll.version
    );

    accounts
        .execute("acc-1", AccountCommand::RequestStatement)
        .await?;
    let stream = accounts.stream_id("acc-1");
    let history = store.read_stream(&stream, VersionRange::all()).await?;
    println!("stream {stream} holds {} events:", history.len());
    for recorded in &history {
        let event = recorded.decode::<AccountEvent>()?;
        println!(
            "  v{} {:<20} {:?} (actor {})",
            event.version,
            event.event_type,
            event.payload,
            event.metadata.actor.as_deref().unwrap_or("-")
        );
    }

    accounts
        .execute(
            "acc-2",
            AccountCommand::Open {
                owner: "Grace".into(),
            },
        )
        .await?;
    let log = store
        .read_all(LogPosition::START, 100, &LogFilter::tenant(tenant))
        .await?;
    let streams: std::collections::BTreeSet<String> =
        log.iter().map(|e| e.stream.to_string()).collect();
    println!(
        "the tenant's log: {} events across {} streams, last position {}",
        log.len(),
        streams.len(),
        log.last().map_or(LogPosition::START, |e| e.position)
    );

    let account = accounts.load("acc-1").await?;
    println!(
        "final balance of acc-1: {} (100.00 - 30.00 - 25.00 + 500.00)",
        money(account.state().balance)
    );
    Ok(())
}

type Hook = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A store wrapper that runs a competing writer just before the next append, so the example
/// provokes a conflict deterministically instead of hoping two tasks collide.
#[derive(Clone)]
struct Interleaving<S> {
    inner: S,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl<S> std::fmt::Debug for Interleaving<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interleaving").finish_non_exhaustive()
    }
}

impl<S> Interleaving<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            hook: Arc::new(Mutex::new(None)),
        }
    }

    fn before_next_append(&self, hook: impl Future<Output = Result<(), String>> + Send + 'static) {
        if let Ok(mut slot) = self.hook.lock() {
            *slot = Some(Box::pin(hook));
        }
    }
}

impl<S: EventStore> EventStore for Interleaving<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let hook = self.hook.lock().ok().and_then(|mut slot| slot.take());
        if let Some(hook) = hook {
            hook.await.map_err(|e| StoreError::Backend(e.into()))?;
        }
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, range).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit, filter).await
    }

    async fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: uuid::Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_by_correlation(tenant, correlation_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_core::testing::Scenario;

    #[test]
    fn withdrawing_more_than_the_balance_is_rejected() {
        Scenario::<Account>::given([
            AccountEvent::Opened {
                owner: "Ada".into(),
            },
            AccountEvent::Deposited { cents: 500 },
        ])
        .when(AccountCommand::Withdraw { cents: 501 })
        .then_error(AccountError::InsufficientFunds {
            balance: 500,
            requested: 501,
        });
    }

    #[test]
    fn deposits_add_to_the_balance() {
        let state = Scenario::<Account>::given([AccountEvent::Opened {
            owner: "Ada".into(),
        }])
        .when(AccountCommand::Deposit { cents: 250 })
        .then([AccountEvent::Deposited { cents: 250 }]);
        assert_eq!(state.balance, 250);
    }

    #[test]
    fn a_closed_account_takes_no_deposit() {
        Scenario::<Account>::given_no_events()
            .when(AccountCommand::Deposit { cents: 1 })
            .then_error(AccountError::NotOpen);
    }

    #[test]
    fn statements_change_nothing() {
        let mut account = Account::default();
        account.apply(&AccountEvent::StatementRequested);
        assert_eq!(account.balance, 0);
        assert_eq!(
            AccountEvent::StatementRequested.event_type(),
            "statement-requested"
        );
    }
}
