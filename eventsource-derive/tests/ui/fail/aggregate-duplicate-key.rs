use eventsource_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account", event = AccountEvent)]
#[aggregate(name = "bank-account")]
struct Account {
    open: bool,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, _: account_event::Opened) {
        self.open = true;
    }
}

fn main() {}
