//! Schema evolution: typed upcasters chained across versions, and stored names kept as aliases
//! after a rename.

use eventsource_core::{DecodeError, DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    /// Stored as `deposited` (v1, v2) before it was renamed; `money-in` was a short-lived name.
    #[event(
        name = "funds-deposited",
        alias = "deposited",
        alias = "money-in",
        version = 3
    )]
    #[event(upcast_from(1 = DepositedV1, 2 = DepositedV2))]
    Deposited { cents: u64, memo: String },
    #[event(name = "account-opened", alias = "Opened")]
    Opened { owner: String },
}

/// Version 1: whole units.
#[derive(Debug, Deserialize)]
struct DepositedV1 {
    amount: u64,
}

/// Version 2: cents and an optional note.
#[derive(Debug, Deserialize)]
struct DepositedV2 {
    cents: u64,
    note: Option<String>,
}

impl From<DepositedV1> for DepositedV2 {
    fn from(v1: DepositedV1) -> Self {
        Self {
            cents: v1.amount * 100,
            note: None,
        }
    }
}

impl TryFrom<DepositedV2> for AccountEvent {
    type Error = &'static str;

    fn try_from(v2: DepositedV2) -> Result<Self, Self::Error> {
        if v2.cents == 0 {
            return Err("a deposit of nothing");
        }
        Ok(AccountEvent::Deposited {
            cents: v2.cents,
            memo: v2.note.unwrap_or_default(),
        })
    }
}

fn deposited(cents: u64, memo: &str) -> AccountEvent {
    AccountEvent::Deposited {
        cents,
        memo: memo.to_owned(),
    }
}

#[test]
fn version_1_goes_through_the_whole_chain_under_its_old_name() {
    let event = AccountEvent::decode("deposited", 1, json!({ "amount": 3 })).expect("upcasts");
    assert_eq!(event, deposited(300, ""));
    assert_eq!(event.event_type(), "funds-deposited");
    assert_eq!(event.schema_version(), 3);
}

#[test]
fn version_2_takes_the_last_step_only() {
    let stored = json!({ "cents": 250, "note": "rent" });
    for name in ["deposited", "money-in", "funds-deposited"] {
        let event = AccountEvent::decode(name, 2, stored.clone()).expect("upcasts");
        assert_eq!(event, deposited(250, "rent"), "{name}");
    }
}

#[test]
fn the_current_version_decodes_as_is_and_is_written_under_the_new_name() {
    let event = deposited(7, "x");
    let payload = event.encode().expect("encodes");
    assert_eq!(payload, json!({ "cents": 7, "memo": "x" }));
    assert_eq!(
        AccountEvent::decode("deposited", 3, payload).expect("decodes"),
        event
    );
    let opened = AccountEvent::decode("Opened", 1, json!({ "owner": "ada" })).expect("alias");
    assert_eq!(opened.event_type(), "account-opened");
}

#[test]
fn a_failing_step_names_the_version_it_started_from() {
    let error = AccountEvent::decode("deposited", 1, json!({ "amount": 0 })).expect_err("zero");
    let DecodeError::Upcast { event_type, source } = error else {
        panic!("expected an upcast error, got {error:?}");
    };
    assert_eq!(event_type, "deposited");
    assert_eq!(source, UpcastError::new(2, "a deposit of nothing"));
}

#[test]
fn an_old_payload_that_does_not_match_its_shape_is_a_payload_error() {
    let error = AccountEvent::decode("deposited", 1, json!({ "cents": 3 })).expect_err("no amount");
    assert!(
        matches!(&error, DecodeError::Payload { event_type, .. } if event_type == "deposited"),
        "{error:?}"
    );
}

#[test]
fn versions_outside_the_chain_are_unsupported() {
    for stored in [0, 4] {
        let error = AccountEvent::decode("deposited", stored, json!({})).expect_err("unsupported");
        assert!(
            matches!(error, DecodeError::UnsupportedVersion { current: 3, .. }),
            "{error:?}"
        );
    }
}

#[test]
fn aliases_are_known_and_listed() {
    assert!(AccountEvent::knows("deposited") && AccountEvent::knows("Opened"));
    assert!(!AccountEvent::knows("Deposited"));
    assert_eq!(
        AccountEvent::EVENT_ALIASES,
        &[
            ("deposited", "funds-deposited"),
            ("money-in", "funds-deposited"),
            ("Opened", "account-opened"),
        ]
    );
}
