use eventsource_core::Aggregate;
use serde::{Deserialize, Serialize};

// Without `#[derive(DomainEvent)]` there is no `AccountEventHandler` to implement.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
}

#[derive(Debug, Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    open: bool,
}

impl AccountEventHandler for Account {
    fn when_opened(&mut self, _: account_event::Opened) {
        self.open = true;
    }
}

fn main() {}
