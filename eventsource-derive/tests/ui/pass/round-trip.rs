//! A full aggregate and event enum: stored names, versions, an upcaster and a no-op event.
#![deny(warnings)]

use eventsource_core::{Aggregate, AggregateRoot, DecodeError, DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
    #[event(name = "funds-deposited", version = 2, upcast = upcast_deposit)]
    FundsDeposited { cents: u64 },
    #[event(name = "funds-withdrawn")]
    #[event(version = 3)]
    FundsWithdrawn { cents: u64 },
    #[event(no_state_change)]
    StatementViewed { by: String },
    #[event(name = "closed", no_state_change)]
    Closed,
}

/// Version 1 stored whole units under `amount`.
fn upcast_deposit(from: u32, payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    let amount = payload["amount"]
        .as_u64()
        .ok_or_else(|| UpcastError::new(from, "no `amount`"))?;
    Ok(serde_json::json!({ "cents": amount * 100 }))
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
struct Account {
    owner: String,
    balance: u64,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, e: account_event::Opened) {
        self.owner.clone_from(e.owner);
    }

    fn when_funds_deposited(&mut self, e: account_event::FundsDeposited) {
        self.balance += e.cents;
    }

    fn when_funds_withdrawn(&mut self, e: account_event::FundsWithdrawn) {
        self.balance -= e.cents;
    }
}

/// The default name is the struct's name in snake_case.
#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct BankAccountView {
    views: u32,
}

impl AccountEventHandler for BankAccountView {
    fn when_opened(&mut self, _: account_event::Opened) {}
    fn when_funds_deposited(&mut self, _: account_event::FundsDeposited) {}
    fn when_funds_withdrawn(&mut self, _: account_event::FundsWithdrawn) {}
    // A no_state_change handler may still be overridden.
    fn when_statement_viewed(&mut self, _: account_event::StatementViewed) {
        self.views += 1;
    }
}

fn main() {
    assert_eq!(Account::TYPE, "account");
    assert_eq!(BankAccountView::TYPE, "bank_account_view");
    assert_eq!(Account::SNAPSHOT_VERSION, None);

    let names: Vec<(&str, u32)> = AccountEvent::EVENT_TYPES
        .iter()
        .map(|ty| (ty.name, ty.version))
        .collect();
    assert_eq!(
        names,
        [
            ("Opened", 1),
            ("funds-deposited", 2),
            ("funds-withdrawn", 3),
            ("StatementViewed", 1),
            ("closed", 1),
        ]
    );

    let events = vec![
        AccountEvent::Opened { owner: "ada".into() },
        AccountEvent::FundsDeposited { cents: 500 },
        AccountEvent::FundsWithdrawn { cents: 200 },
        AccountEvent::StatementViewed { by: "bob".into() },
        AccountEvent::Closed,
    ];

    // Every event survives encode/decode under its stored name and version.
    let mut decoded = Vec::new();
    for event in &events {
        let payload = event.encode().unwrap();
        decoded.push(AccountEvent::decode(event.event_type(), event.schema_version(), payload).unwrap());
    }
    assert_eq!(decoded, events);

    // A version-1 deposit is upcast on read.
    let old = AccountEvent::decode("funds-deposited", 1, serde_json::json!({ "amount": 3 })).unwrap();
    assert_eq!(old, AccountEvent::FundsDeposited { cents: 300 });
    let broken = AccountEvent::decode("funds-deposited", 1, serde_json::json!({}));
    assert!(matches!(broken, Err(DecodeError::Upcast { .. })));
    // No upcaster for funds-withdrawn: older versions are unsupported.
    let withdrawn = AccountEvent::decode("funds-withdrawn", 2, serde_json::json!({ "cents": 1 }));
    assert!(matches!(
        withdrawn,
        Err(DecodeError::UnsupportedVersion { stored: 2, current: 3, .. })
    ));

    let root = AggregateRoot::<Account>::from_history("acc-1", decoded.clone());
    assert_eq!(root.state().owner, "ada");
    assert_eq!(root.state().balance, 300);

    let view = AggregateRoot::<BankAccountView>::from_history("acc-1", decoded);
    assert_eq!(view.state().views, 1);
}
