use eventsource_core::Aggregate;

#[derive(Debug, Default, Aggregate)]
struct Account {
    balance: u64,
}

fn main() {}
