use eventsource_core::Aggregate;
use serde::{Deserialize, Serialize};

// The enum lacks `DomainEvent` in its derives.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    open: bool,
}

fn main() {}
