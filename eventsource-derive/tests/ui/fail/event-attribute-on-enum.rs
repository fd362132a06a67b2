use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(version = 2)]
enum AccountEvent {
    Opened {
        #[event(name = "owner")]
        owner: String,
    },
}

fn main() {}
