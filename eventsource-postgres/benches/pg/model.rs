//! The aggregates the scenarios command and load.

use eventsource_core::{Aggregate, DomainEvent, Handle, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub(crate) enum CounterEvent {
    Incremented { by: u64 },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 1)]
pub(crate) struct Counter {
    pub(crate) value: u64,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self, e: counter_event::Incremented) {
        self.value += e.by;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub(crate) struct Never;

impl Handle for Counter {
    type Command = u64;
    type Error = Never;
    fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { by }])
    }
}

pub(crate) fn event() -> NewEvent {
    NewEvent::new("Incremented", 1, json!({ "by": 1 }))
}

/// A bank account, the aggregate of the command-shape scenarios: realistic payloads (an owner,
/// a currency, a reference and a description per deposit) and a rule that needs the state.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
pub(crate) enum AccountEvent {
    Opened {
        owner: String,
        email: String,
        currency: String,
        overdraft_cents: u64,
    },
    FundsDeposited {
        amount_cents: u64,
        reference: String,
        description: String,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, snapshot = 1)]
pub(crate) struct Account {
    pub(crate) open: bool,
    pub(crate) balance_cents: u64,
    pub(crate) deposits: u64,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, _e: account_event::Opened) {
        self.open = true;
    }

    fn when_funds_deposited(&mut self, e: account_event::FundsDeposited) {
        self.balance_cents += e.amount_cents;
        self.deposits += 1;
    }
}

/// The commands of [`Account`].
#[derive(Debug, Clone)]
pub(crate) enum AccountCommand {
    Open {
        owner: String,
        email: String,
    },
    Deposit {
        amount_cents: u64,
        reference: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

impl Handle for Account {
    type Command = AccountCommand;
    type Error = AccountError;
    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner, email } => Ok(vec![AccountEvent::Opened {
                owner,
                email,
                currency: "EUR".to_owned(),
                overdraft_cents: 50_000,
            }]),
            AccountCommand::Deposit { .. } if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit {
                amount_cents,
                reference,
            } => Ok(vec![AccountEvent::FundsDeposited {
                amount_cents,
                reference,
                description: "card payment, terminal 0042, Rue de la Loi 16, Brussels".to_owned(),
            }]),
        }
    }
}

/// The `k`-th command (0-9) a new account gets: `Open`, then nine deposits.
pub(crate) fn account_command(id: &str, k: u64) -> AccountCommand {
    if k == 0 {
        AccountCommand::Open {
            owner: format!("Jane Doe {id}"),
            email: format!("jane.doe+{id}@example.com"),
        }
    } else {
        AccountCommand::Deposit {
            amount_cents: 1_000 + k,
            reference: format!("dep-{id}-{k}"),
        }
    }
}

/// The stored payload of `command` applied to an account, as the raw engine writes it (the
/// same JSON the framework stores for the event).
pub(crate) fn account_payload(command: &AccountCommand) -> (&'static str, serde_json::Value) {
    match command {
        AccountCommand::Open { owner, email } => (
            "Opened",
            json!({ "owner": owner, "email": email, "currency": "EUR", "overdraft_cents": 50_000 }),
        ),
        AccountCommand::Deposit {
            amount_cents,
            reference,
        } => (
            "FundsDeposited",
            json!({
                "amount_cents": amount_cents,
                "reference": reference,
                "description": "card payment, terminal 0042, Rue de la Loi 16, Brussels",
            }),
        ),
    }
}

/// The raw engine's account fold over `(event_type, payload)` rows: the same state as
/// [`Account`], read from `serde_json::Value`s.
pub(crate) fn raw_account_fold<'a>(
    rows: impl Iterator<Item = (&'a str, serde_json::Value)>,
) -> Account {
    let mut account = Account::default();
    for (event_type, payload) in rows {
        match event_type {
            "Opened" => account.open = true,
            "FundsDeposited" => {
                account.balance_cents += payload["amount_cents"].as_u64().unwrap_or(0);
                account.deposits += 1;
            }
            other => panic!("unknown raw event type {other}"),
        }
    }
    account
}
