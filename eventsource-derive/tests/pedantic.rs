//! The code the derives generate is clean under the user's `clippy::pedantic`.
//!
//! This file is linted by the workspace's `cargo clippy --all-targets -- -D warnings` (CI), with
//! pedantic on below as well as in `[workspace.lints]`, so a lint that fires on generated code
//! fails CI. Its events have many fields, `String`, `Vec`, `Option`, tuple, one-field tuple and
//! unit variants; the enum is public and documented, so `missing_docs` checks the generated
//! items too.
#![warn(
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub
)]

use eventsource_core::{Aggregate, AggregateRoot, DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};

/// Public, documented events: the generated trait, views and impls must need no `#[allow]`.
pub mod events {
    use eventsource_core::DomainEvent;
    use serde::{Deserialize, Serialize};

    /// An account's id and owner, as a struct of its own.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Opened {
        /// The account.
        pub account_id: String,
        /// Who owns it.
        pub owner: String,
    }

    /// What happens to an account.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
    pub enum LedgerEvent {
        /// Opened, as a one-field tuple variant around a struct.
        Opened(Opened),
        /// Money came in: many fields of many kinds.
        #[event(name = "ledger-deposited", version = 2, upcast = super::deposited_from_v1)]
        Deposited {
            /// The account.
            account_id: String,
            /// Cents.
            amount: i64,
            /// ISO currency.
            currency: String,
            /// The bank's reference.
            reference: Option<String>,
            /// Free text.
            description: String,
            /// Labels.
            tags: Vec<String>,
            /// Sequence number.
            seq: u64,
            /// Whether it was a transfer.
            transfer: bool,
            /// Exchange rate, if any.
            rate: Option<f64>,
        },
        /// A tuple variant.
        Moved(String, u32, Vec<u8>),
        /// A one-field tuple variant of a copy type.
        Flagged(u8),
        /// A one-field tuple variant of a `String`.
        Renamed(String),
        /// A unit variant.
        Frozen,
        /// Changes no state.
        #[event(no_state_change)]
        Viewed {
            /// Who looked.
            by: String,
        },
    }
}

use events::{LedgerEvent, LedgerEventHandler, ledger_event};

/// Version 1 had no `rate`.
fn deposited_from_v1(
    from: u32,
    mut payload: serde_json::Value,
) -> Result<serde_json::Value, UpcastError> {
    let fields = payload
        .as_object_mut()
        .ok_or_else(|| UpcastError::new(from, "not an object"))?;
    fields.insert("rate".to_owned(), serde_json::Value::Null);
    Ok(payload)
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "ledger", event = LedgerEvent, snapshot = 1)]
struct Ledger {
    owner: String,
    balance: i64,
    tags: usize,
    moved_to: Option<(String, u32)>,
    flags: u8,
    frozen: bool,
}

impl LedgerEventHandler for Ledger {
    fn when_opened(&mut self, e: &events::Opened) {
        self.owner.clone_from(&e.owner);
    }

    fn when_deposited(&mut self, e: ledger_event::Deposited) {
        self.balance += e.amount;
        self.tags += e.tags.len();
    }

    fn when_moved(&mut self, (to, floor, _): (&String, &u32, &Vec<u8>)) {
        self.moved_to = Some((to.clone(), *floor));
    }

    fn when_flagged(&mut self, flag: &u8) {
        self.flags |= flag;
    }

    fn when_renamed(&mut self, owner: &String) {
        self.owner.clone_from(owner);
    }

    fn when_frozen(&mut self) {
        self.frozen = true;
    }
}

fn deposit(amount: i64) -> LedgerEvent {
    LedgerEvent::Deposited {
        account_id: "a-1".to_owned(),
        amount,
        currency: "EUR".to_owned(),
        reference: None,
        description: "salary".to_owned(),
        tags: vec!["pay".to_owned()],
        seq: 1,
        transfer: false,
        rate: Some(1.0),
    }
}

#[test]
fn generated_code_works_under_pedantic() {
    let history = [
        LedgerEvent::Opened(events::Opened {
            account_id: "a-1".to_owned(),
            owner: "ada".to_owned(),
        }),
        deposit(250),
        LedgerEvent::Moved("b-2".to_owned(), 3, vec![1]),
        LedgerEvent::Flagged(4),
        LedgerEvent::Renamed("grace".to_owned()),
        LedgerEvent::Viewed {
            by: "eve".to_owned(),
        },
        LedgerEvent::Frozen,
    ];
    for event in &history {
        let payload = event.encode().expect("encodes");
        let back = LedgerEvent::decode(event.event_type(), event.schema_version(), payload)
            .expect("decodes");
        assert_eq!(&back, event);
    }
    let root = AggregateRoot::<Ledger>::from_history("a-1", history);
    let state = root.state();
    assert_eq!(
        (state.owner.as_str(), state.balance, state.tags),
        ("grace", 250, 1)
    );
    assert_eq!(state.moved_to, Some(("b-2".to_owned(), 3)));
    assert!(state.frozen && state.flags == 4);
    assert_eq!(
        Ledger::restore(state.snapshot().expect("snapshots")).as_ref(),
        Some(state)
    );

    let old = serde_json::json!({
        "account_id": "a-1", "amount": 5, "currency": "EUR", "reference": null,
        "description": "", "tags": [], "seq": 2, "transfer": true,
    });
    let upcast = LedgerEvent::decode("ledger-deposited", 1, old).expect("upcasts");
    assert!(matches!(
        upcast,
        LedgerEvent::Deposited {
            rate: None,
            amount: 5,
            ..
        }
    ));
}
