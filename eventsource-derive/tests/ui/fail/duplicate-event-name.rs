use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "deposited")]
    FundsDeposited { cents: u64 },
    #[event(name = "deposited")]
    FundsWithdrawn { cents: u64 },
}

fn main() {}
