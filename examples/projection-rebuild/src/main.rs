//! Rebuilding a read model by replay: a log of deposits across many accounts feeds a balances
//! projection; then a new generation of it is rebuilt from the start of the log, with a
//! progress bar (events processed of events to go, rate, ETA), and swapped in.
//!
//! Runs on the in-memory store, no services needed:
//!
//! ```sh
//! cargo run --release -p projection-rebuild -- --events 200000 --accounts 1000
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

use std::collections::HashMap;

use clap::Parser;
use eventsource_core::{
    EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore, NewEvent, Projection,
    ProjectionRunner, RecordedEvent, StreamId, TenantId,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Rebuild a balances read model from the event log.
#[derive(Debug, Parser)]
struct Args {
    /// Events to write before rebuilding.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Accounts the deposits are spread over.
    #[arg(long, default_value_t = 500)]
    accounts: u64,
}

/// Balance per account, folded from `funds-deposited` events.
#[derive(Debug, Default)]
struct Balances {
    cents: HashMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("event {0} has no amount")]
struct NoAmount(String);

impl Projection for Balances {
    type Error = NoAmount;

    fn name(&self) -> &'static str {
        "balances"
    }

    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), NoAmount> {
        let cents = event.payload["cents"]
            .as_u64()
            .ok_or_else(|| NoAmount(event.event_id.to_string()))?;
        *self
            .cents
            .entry(event.stream.aggregate_id().to_owned())
            .or_default() += cents;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = InMemoryEventStore::new();
    let tenant = TenantId::default();
    for i in 0..args.events {
        let account = StreamId::new(
            tenant.clone(),
            "account",
            format!("acc-{}", i % args.accounts.max(1)),
        );
        let deposit = NewEvent::new(
            "funds-deposited",
            1,
            serde_json::json!({ "cents": i % 100 }),
        );
        store
            .append(&account, ExpectedVersion::Any, vec![deposit])
            .await?;
    }
    println!(
        "wrote {} deposits over {} accounts",
        args.events, args.accounts
    );

    let mut runner = ProjectionRunner::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        Balances::default(),
    );
    runner.catch_up().await?;
    let total: u64 = runner.projection().cents.values().sum();
    println!("read model built: {total} cents in all");

    let bar = ProgressBar::new(args.events).with_style(ProgressStyle::with_template(
        "rebuilding {bar:40} {pos}/{len} events, {per_sec}, eta {eta}",
    )?);
    let old = runner
        .rebuild(Balances::default(), |progress| {
            bar.set_length(progress.total);
            bar.set_position(progress.processed);
        })
        .await?;
    bar.finish();
    let rebuilt: u64 = runner.projection().cents.values().sum();
    println!(
        "swapped in the new generation: {rebuilt} cents in all ({})",
        if rebuilt == old.cents.values().sum::<u64>() {
            "same as before"
        } else {
            "differs"
        }
    );
    Ok(())
}
