//! Runtime behaviour of the code `#[derive(DomainEvent)]` and `#[derive(Aggregate)]` generate.

use eventsource_core::{
    Aggregate, AggregateRoot, DecodeError, DomainEvent, EventType, UpcastError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened {
        owner: String,
    },
    #[event(name = "funds-deposited", version = 2, upcast = deposit_from_v1)]
    Deposited {
        cents: u64,
    },
    #[event(name = "funds-withdrawn", version = 2)]
    Withdrawn {
        cents: u64,
    },
    #[serde(rename = "frozen")]
    Frozen(String),
    Moved(u32, u32),
    #[event(no_state_change)]
    Viewed,
    #[event(no_state_change)]
    Audited {
        by: String,
        at: u64,
    },
}

/// Version 1 stored whole units under `amount`.
fn deposit_from_v1(from: u32, payload: Value) -> Result<Value, UpcastError> {
    let Value::Object(mut fields) = payload else {
        return Err(UpcastError::new(from, "not an object"));
    };
    let amount = fields
        .remove("amount")
        .as_ref()
        .and_then(Value::as_u64)
        .ok_or_else(|| UpcastError::new(from, "no `amount`"))?;
    Ok(json!({ "cents": amount * 100 }))
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
struct Account {
    owner: String,
    balance: u64,
    frozen_by: Option<String>,
    position: (u32, u32),
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, e: account_event::Opened) {
        self.owner.clone_from(e.owner);
    }

    fn when_deposited(&mut self, e: account_event::Deposited) {
        self.balance += e.cents;
    }

    fn when_withdrawn(&mut self, e: account_event::Withdrawn) {
        self.balance -= e.cents;
    }

    fn when_frozen(&mut self, by: &String) {
        self.frozen_by = Some(by.clone());
    }

    fn when_moved(&mut self, (x, y): (&u32, &u32)) {
        self.position = (*x, *y);
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent, snapshot = 2)]
struct BalanceView {
    balance: u64,
}

impl AccountEventHandler for BalanceView {
    fn when_opened(&mut self, _: account_event::Opened) {}

    fn when_deposited(&mut self, e: account_event::Deposited) {
        self.balance += e.cents;
    }

    fn when_withdrawn(&mut self, e: account_event::Withdrawn) {
        self.balance -= e.cents;
    }

    fn when_frozen(&mut self, _: &String) {}

    fn when_moved(&mut self, _: (&u32, &u32)) {}
}

fn every_variant() -> Vec<AccountEvent> {
    vec![
        AccountEvent::Opened {
            owner: "ada".to_owned(),
        },
        AccountEvent::Deposited { cents: 500 },
        AccountEvent::Withdrawn { cents: 120 },
        AccountEvent::Frozen("bank".to_owned()),
        AccountEvent::Moved(3, 4),
        AccountEvent::Viewed,
        AccountEvent::Audited {
            by: "eve".to_owned(),
            at: 7,
        },
    ]
}

#[test]
fn event_types_list_names_and_versions_in_declaration_order() {
    assert_eq!(
        AccountEvent::EVENT_TYPES,
        &[
            EventType {
                name: "Opened",
                version: 1
            },
            EventType {
                name: "funds-deposited",
                version: 2
            },
            EventType {
                name: "funds-withdrawn",
                version: 2
            },
            EventType {
                name: "Frozen",
                version: 1
            },
            EventType {
                name: "Moved",
                version: 1
            },
            EventType {
                name: "Viewed",
                version: 1
            },
            EventType {
                name: "Audited",
                version: 1
            },
        ]
    );
}

#[test]
fn event_type_and_schema_version_follow_the_attributes() {
    let seen: Vec<(&str, u32)> = every_variant()
        .iter()
        .map(|event| (event.event_type(), event.schema_version()))
        .collect();
    assert_eq!(
        seen,
        [
            ("Opened", 1),
            ("funds-deposited", 2),
            ("funds-withdrawn", 2),
            ("Frozen", 1),
            ("Moved", 1),
            ("Viewed", 1),
            ("Audited", 1),
        ]
    );
}

#[test]
fn encode_strips_the_enum_tag() {
    let payloads: Vec<Value> = every_variant()
        .iter()
        .map(|event| event.encode().expect("encodes"))
        .collect();
    assert_eq!(
        payloads,
        [
            json!({ "owner": "ada" }),
            json!({ "cents": 500 }),
            json!({ "cents": 120 }),
            json!("bank"),
            json!([3, 4]),
            Value::Null,
            json!({ "by": "eve", "at": 7 }),
        ]
    );
    assert_ne!(
        AccountEvent::Deposited { cents: 5 }
            .encode()
            .expect("encodes"),
        json!({ "Deposited": { "cents": 5 } })
    );
}

#[test]
fn decode_round_trips_every_variant() {
    for event in every_variant() {
        let payload = event.encode().expect("encodes");
        let decoded = AccountEvent::decode(event.event_type(), event.schema_version(), payload)
            .expect("decodes");
        assert_eq!(decoded, event);
    }
}

#[test]
fn serde_rename_on_a_variant_is_honoured() {
    // serde knows the variant as "frozen"; the stored name stays "Frozen".
    let tagged = serde_json::to_value(AccountEvent::Frozen("x".to_owned())).expect("serializes");
    assert_eq!(tagged, json!({ "frozen": "x" }));
    let decoded = AccountEvent::decode("Frozen", 1, json!("x")).expect("decodes");
    assert_eq!(decoded, AccountEvent::Frozen("x".to_owned()));
}

#[test]
fn older_versions_are_upcast() {
    let decoded =
        AccountEvent::decode("funds-deposited", 1, json!({ "amount": 3 })).expect("upcasts");
    assert_eq!(decoded, AccountEvent::Deposited { cents: 300 });
}

#[test]
fn a_failing_upcaster_is_reported() {
    let error = AccountEvent::decode("funds-deposited", 1, json!({})).expect_err("no amount");
    let DecodeError::Upcast { event_type, source } = error else {
        panic!("expected an upcast error, got {error:?}");
    };
    assert_eq!(event_type, "funds-deposited");
    assert_eq!(source, UpcastError::new(1, "no `amount`"));
}

#[test]
fn older_versions_without_an_upcaster_are_unsupported() {
    let error =
        AccountEvent::decode("funds-withdrawn", 1, json!({ "cents": 1 })).expect_err("no upcaster");
    assert!(
        matches!(
            &error,
            DecodeError::UnsupportedVersion { event_type, stored: 1, current: 2 }
                if event_type == "funds-withdrawn"
        ),
        "{error:?}"
    );
}

#[test]
fn future_versions_are_unsupported() {
    for (event_type, stored, current) in [("funds-deposited", 3, 2), ("Opened", 2, 1)] {
        let error = AccountEvent::decode(event_type, stored, json!({ "cents": 1, "owner": "a" }))
            .expect_err("newer than the code");
        assert!(
            matches!(
                &error,
                DecodeError::UnsupportedVersion { event_type: name, stored: s, current: c }
                    if name == event_type && *s == stored && *c == current
            ),
            "{error:?}"
        );
    }
}

#[test]
fn version_zero_is_unsupported_even_with_an_upcaster() {
    let error = AccountEvent::decode("funds-deposited", 0, json!({ "amount": 1 }))
        .expect_err("versions start at 1");
    assert!(
        matches!(error, DecodeError::UnsupportedVersion { stored: 0, .. }),
        "{error:?}"
    );
}

#[test]
fn unknown_types_are_reported_by_name() {
    // The Rust variant name is not a stored name when `name` overrides it.
    for name in ["Deposited", "nope"] {
        let error = AccountEvent::decode(name, 1, json!({ "cents": 1 })).expect_err("unknown");
        assert!(
            matches!(&error, DecodeError::UnknownType { event_type } if event_type == name),
            "{error:?}"
        );
    }
}

#[test]
fn a_payload_that_does_not_match_is_reported() {
    let error = AccountEvent::decode("Opened", 1, json!({ "owner": 5 })).expect_err("bad field");
    assert!(
        matches!(&error, DecodeError::Payload { event_type, .. } if event_type == "Opened"),
        "{error:?}"
    );
}

#[test]
fn apply_dispatches_every_variant_to_its_handler() {
    let root = AggregateRoot::<Account>::from_history("acc-1", every_variant());
    let state = root.state();
    assert_eq!(state.owner, "ada");
    assert_eq!(state.balance, 380);
    assert_eq!(state.frozen_by.as_deref(), Some("bank"));
    assert_eq!(state.position, (3, 4));
    assert_eq!(Account::TYPE, "account");
    assert_eq!(Account::SNAPSHOT_VERSION, None);
    assert_eq!(Account::default().snapshot(), None);
}

#[test]
fn snapshot_attribute_serializes_the_state() {
    assert_eq!(BalanceView::TYPE, "balance_view");
    assert_eq!(BalanceView::SNAPSHOT_VERSION, Some(2));
    let mut view = BalanceView::default();
    for event in every_variant() {
        view.apply(&event);
    }
    let snapshot = view.snapshot().expect("snapshots");
    assert_eq!(snapshot, json!({ "balance": 380 }));
    assert_eq!(BalanceView::restore(snapshot), Some(view));
    assert_eq!(BalanceView::restore(json!([])), None);
}
