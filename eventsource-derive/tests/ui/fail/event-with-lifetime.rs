use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent<'a> {
    Opened { owner: &'a str },
}

fn main() {}
