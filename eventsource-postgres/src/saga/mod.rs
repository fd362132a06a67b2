//! Durable sagas on PostgreSQL: [`PgSagaStore`], the one-transaction [`PgSagaHandler`] and the
//! shared [`PgDeadlineRunner`]. See the crate documentation, *Durable sagas*.

mod deadline;
mod handler;
mod store;

pub use deadline::PgDeadlineRunner;
pub use handler::PgSagaHandler;
pub use store::PgSagaStore;
