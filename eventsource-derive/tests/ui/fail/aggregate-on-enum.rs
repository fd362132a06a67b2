use eventsource_core::Aggregate;

#[derive(Debug, Default, Aggregate)]
enum Account {
    #[default]
    Closed,
    Open,
}

fn main() {}
