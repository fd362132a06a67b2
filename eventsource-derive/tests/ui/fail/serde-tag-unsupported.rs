use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type")]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
