//! The cqrs-es reference bank account on the in-memory store: opens an account, deposits,
//! and shows both rules rejecting a command. Needs no services:
//!
//! ```sh
//! cargo run -p bank-account-cqrs
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

use bank_account_cqrs::{Account, AccountCommand};
use eventsource_core::{CommandError, InMemoryEventStore, Repository};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let accounts = Repository::<Account, _>::new(InMemoryEventStore::new());
    let open = || AccountCommand::Open {
        account_id: "a-1".into(),
    };
    accounts.execute("a-1", open()).await?;
    accounts
        .execute(
            "a-1",
            AccountCommand::Deposit {
                amount: 250,
                seq: 1,
            },
        )
        .await?;
    let again = accounts.execute("a-1", open()).await;
    let zero = accounts
        .execute("a-1", AccountCommand::Deposit { amount: 0, seq: 2 })
        .await;
    let account = accounts.load("a-1").await?;
    println!(
        "a-1 balance {} at version {}; opening again: {}; depositing 0: {}",
        account.state().balance,
        account.version(),
        outcome(again),
        outcome(zero),
    );
    Ok(())
}

/// The domain error's message, or "accepted".
fn outcome<T, E: std::error::Error>(result: Result<T, CommandError<E>>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(CommandError::Rejected(e)) => e.to_string(),
        Err(other) => other.to_string(),
    }
}
