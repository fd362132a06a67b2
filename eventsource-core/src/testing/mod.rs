//! Test kits: given/when/then scenarios for aggregates and sagas, and the store conformance
//! suites.
//!
//! Enabled by the `testing` feature (on by default).

pub mod conformance;
pub mod saga;
pub mod scenario;

pub use saga::{SagaDeliveryError, SagaOutcome, SagaScenario, recorded};
pub use scenario::{Outcome, Scenario};
