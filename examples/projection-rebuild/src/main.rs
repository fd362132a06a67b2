//! Rebuilding a read model by replay: a log of deposits and withdrawals across many accounts
//! feeds a balances projection; then a new generation of it is rebuilt from the start of the
//! log, with a progress bar (events processed of events to go, rate, ETA), and swapped in.
//!
//! Without `DATABASE_URL` it runs on the in-memory store, no services needed (`memory.rs`).
//! With it, on PostgreSQL (`postgres.rs`): the read model is a table behind a view, kept
//! current by a live `PgProjectionRunner`; a blue/green `PgRebuild` fills the next generation
//! while writer tasks keep appending, and cuts over by itself; then the live read model is
//! checked against a fresh fold of the log (the program exits non-zero if they differ).
//! Both projections are typed: they take `AccountEvent`s, decoded once by core's `Typed`.
//! Use a database of its own: the rebuild replays the whole log.
//!
//! ```sh
//! cargo run --release -p projection-rebuild -- --events 200000 --accounts 1000
//! createdb -h 127.0.0.1 -U postgres rebuild_demo
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/rebuild_demo cargo run -p projection-rebuild
//! ```
#![allow(clippy::print_stdout)] // printing the story is the point of this program

mod memory;
mod postgres;
mod progress;

use clap::Parser;
use eventsource_core::DomainEvent;
use serde::{Deserialize, Serialize};

/// Rebuild a balances read model from the event log.
#[derive(Debug, Parser)]
struct Args {
    /// Events to write before rebuilding [default: 100000 in memory, 30000 on PostgreSQL,
    /// where each event is a statement: about 25 s in a debug build on a busy 2-core machine].
    #[arg(long)]
    events: Option<u64>,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 500)]
    accounts: u64,
    /// PostgreSQL only: writer tasks appending while the rebuild runs.
    #[arg(long, default_value_t = 4)]
    writers: u64,
}

/// What happens to an account; the stored names are the example's own, so that other
/// programs' events in the same log are skipped rather than misread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "rebuild-demo.deposited")]
    Deposited { cents: u64 },
    #[event(name = "rebuild-demo.withdrawn")]
    Withdrawn { cents: u64 },
}

impl AccountEvent {
    /// The `i`-th event the example writes: mostly deposits, every fifth a withdrawal.
    fn nth(i: u64) -> Self {
        if i % 5 == 4 {
            Self::Withdrawn { cents: i % 40 }
        } else {
            Self::Deposited { cents: i % 100 }
        }
    }

    /// What the event changes a balance by.
    fn delta(&self) -> i64 {
        match *self {
            Self::Deposited { cents } => i64::try_from(cents).unwrap_or(i64::MAX),
            Self::Withdrawn { cents } => -i64::try_from(cents).unwrap_or(i64::MAX),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match std::env::var("DATABASE_URL") {
        Ok(url) => postgres::run(&url, args.events.unwrap_or(30_000), &args).await,
        Err(_) => memory::run(args.events.unwrap_or(100_000), &args).await,
    }
}
