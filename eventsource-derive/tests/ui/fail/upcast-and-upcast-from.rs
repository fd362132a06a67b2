use eventsource_core::{DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    amount: u64,
}

fn upcast(_: u32, payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    Ok(payload)
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = 2, upcast = upcast, upcast_from(1 = DepositedV1))]
    Deposited { cents: u64 },
}

fn main() {}
