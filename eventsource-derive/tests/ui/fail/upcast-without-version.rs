use eventsource_core::{DomainEvent, UpcastError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(upcast = deposit_v0)]
    FundsDeposited { cents: u64 },
}

fn deposit_v0(_from: u32, payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    Ok(payload)
}

fn main() {}
