//! Test kits: given/when/then scenarios for aggregates and the store conformance suite.
//!
//! Enabled by the `testing` feature (on by default).

pub mod conformance;
pub mod scenario;

pub use scenario::{Outcome, Scenario};
