//! End-to-end tests across the eventsource crates live in `tests/`.
//!
//! The workspace README's Rust code compiles and runs here as a doctest.
#![cfg_attr(doctest, doc = include_str!("../../README.md"))]

pub mod child;
pub mod order_saga;
pub mod projection_model;
pub mod routing;
