use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

// A new shape of a stored event is a new schema version, not a second variant.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Deposited { cents: u64 },
    #[event(name = "Deposited")]
    DepositedV2 { cents: u64, memo: String },
}

fn main() {}
