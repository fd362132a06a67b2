use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct DepositedV1 {
    amount: u64,
}

// No `From<DepositedV1> for AccountEvent`: the last stored shape must convert into the enum.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(version = 2, upcast_from(1 = DepositedV1))]
    Deposited { cents: u64 },
}

fn main() {}
