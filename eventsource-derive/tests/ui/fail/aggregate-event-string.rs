use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = "AccountEvent")]
struct Account {
    open: bool,
}

fn main() {}
