use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = 2, upcast = deposit_v1)]
    FundsDeposited { cents: u64 },
}

fn deposit_v1(payload: serde_json::Value) -> serde_json::Value {
    payload
}

fn main() {}
