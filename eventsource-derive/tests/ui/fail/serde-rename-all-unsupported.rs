use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum AccountEvent {
    FundsDeposited { cents: u64 },
}

fn main() {}
