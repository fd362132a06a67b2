use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = "2")]
    Opened { owner: String },
}

fn main() {}
