use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    amount: u64,
}

// Version 2's shape is missing: the chain must reach the version before the current one.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = 3, upcast_from(1 = DepositedV1))]
    Deposited { cents: u64 },
}

fn main() {}
