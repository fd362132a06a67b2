use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "funds-deposited")]
    #[event(version = 2, name = "deposited")]
    FundsDeposited { cents: u64 },
}

fn main() {}
