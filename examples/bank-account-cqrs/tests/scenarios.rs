//! The four given/when/then tests of the cqrs-es reference domain (counted by
//! `tests/line_count.rs`).

use bank_account_cqrs::{Account, AccountCommand::*, AccountError, deposited, opened};
use eventsource_core::testing::Scenario;

#[test]
fn opens_an_account() {
    Scenario::<Account>::given_no_events()
        .when(Open {
            account_id: "a-1".into(),
        })
        .then([opened("a-1".into())]);
}

#[test]
fn refuses_to_open_twice() {
    Scenario::<Account>::given([opened("a-1".into())])
        .when(Open {
            account_id: "a-1".into(),
        })
        .then_error(AccountError::AlreadyOpen);
}

#[test]
fn deposits() {
    Scenario::<Account>::given([opened("a-1".into())])
        .when(Deposit { amount: 5, seq: 1 })
        .then([deposited("a-1", 5, 1)]);
}

#[test]
fn refuses_a_bad_amount() {
    Scenario::<Account>::given([opened("a-1".into())])
        .when(Deposit { amount: 0, seq: 2 })
        .then_error(AccountError::BadAmount);
}
