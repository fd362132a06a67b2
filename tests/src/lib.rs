//! End-to-end tests across the eventsource crates live in `tests/`.
//!
//! The workspace README is included here so that its code compiles as a doctest.
#![doc = include_str!("../../README.md")]
