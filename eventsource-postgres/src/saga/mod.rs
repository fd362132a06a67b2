//! Durable sagas on PostgreSQL: [`PgSagaStore`], the one-transaction [`PgSagaHandler`], the
//! [`PgSagaRunner`] feeding it from the
//! log, and the shared [`PgDeadlineRunner`]. See the crate documentation, *Durable sagas*.

mod deadline;
mod handler;
mod runner;
mod store;

pub use deadline::PgDeadlineRunner;
pub use handler::PgSagaHandler;
pub use runner::PgSagaRunner;
pub use store::PgSagaStore;
