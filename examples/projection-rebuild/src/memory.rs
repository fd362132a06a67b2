//! The in-memory mode: the log in an `InMemoryEventStore`, the read model a map, rebuilt by
//! `ProjectionRunner::rebuild` and swapped in.

use std::collections::HashMap;
use std::convert::Infallible;

use eventsource_core::{
    Envelope, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore, NewEvent,
    ProjectionRunner, StreamId, TenantId, Typed, TypedProjection,
};

use crate::progress::Bar;
use crate::{AccountEvent, Args};

/// Balance per account.
#[derive(Debug, Default)]
struct Balances {
    cents: HashMap<String, i64>,
}

impl Balances {
    fn total(&self) -> i64 {
        self.cents.values().sum()
    }
}

impl TypedProjection for Balances {
    type Event = AccountEvent;
    type Error = Infallible;

    fn name(&self) -> &'static str {
        "balances"
    }

    async fn apply(&mut self, event: &Envelope<AccountEvent>) -> Result<(), Infallible> {
        *self
            .cents
            .entry(event.stream.aggregate_id().to_owned())
            .or_default() += event.payload.delta();
        Ok(())
    }
}

pub(crate) async fn run(events: u64, args: &Args) -> anyhow::Result<()> {
    println!("DATABASE_URL is not set: in memory");
    let store = InMemoryEventStore::new();
    let tenant = TenantId::default();
    for i in 0..events {
        let account = StreamId::new(
            tenant.clone(),
            "account",
            format!("acc-{}", i % args.accounts.max(1)),
        );
        let event = NewEvent::from_event(&AccountEvent::nth(i))?;
        store
            .append(&account, ExpectedVersion::Any, vec![event])
            .await?;
    }
    println!("wrote {events} events over {} accounts", args.accounts);

    let mut runner = ProjectionRunner::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        Typed::new(Balances::default()),
    );
    runner.catch_up().await?;
    let total = runner.projection().get_ref().total();
    println!("read model built: {total} cents in all");

    let bar = Bar::new("rebuilding")?;
    let old = runner
        .rebuild(Typed::new(Balances::default()), |progress| {
            bar.update(
                progress.processed,
                progress.total,
                progress.rate,
                progress.eta,
            );
        })
        .await?;
    bar.finish();
    let rebuilt = runner.projection().get_ref().total();
    println!(
        "swapped in the new generation: {rebuilt} cents in all ({})",
        if rebuilt == old.get_ref().total() {
            "same as before"
        } else {
            "differs"
        }
    );
    Ok(())
}
