use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
    FundsDeposited { cents: u64 },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    balance: u64,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, _: account_event::Opened) {}
}

fn main() {}
