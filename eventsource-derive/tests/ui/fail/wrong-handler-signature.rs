use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    FundsDeposited { cents: u64 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    balance: u64,
}

impl AccountEventHandler for Account {
    // The handler of a struct variant takes its view, `account_event::FundsDeposited`.
    fn when_funds_deposited(&mut self, cents: &u64) {
        self.balance += cents;
    }
}

fn main() {}
