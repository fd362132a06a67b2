use eventsource_core::Aggregate;

#[derive(Debug, Default, Aggregate)]
#[aggregate(name = "account")]
struct Account {
    balance: u64,
}

fn main() {}
