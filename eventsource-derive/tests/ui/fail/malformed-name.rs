use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = account_opened)]
    Opened { owner: String },
}

fn main() {}
