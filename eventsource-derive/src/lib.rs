//! Derive macros for `eventsource`: `#[derive(DomainEvent)]` and `#[derive(Aggregate)]`.
//!
//! Use them through `eventsource_core`, which re-exports both next to the traits they
//! implement (`use eventsource_core::{Aggregate, DomainEvent};`), as serde does with its
//! derives.
//!
//! # How the two derives cooperate
//!
//! `#[derive(DomainEvent)]` on `enum AccountEvent` emits, besides the `DomainEvent` impl, a
//! handler trait `AccountEventHandler` with one `when_<variant>` method per variant, and a
//! blanket `impl<H: AccountEventHandler> Dispatch<H> for AccountEvent` whose `match` has one arm
//! per variant and no wildcard.
//!
//! `#[derive(Aggregate)]` with `#[aggregate(event = AccountEvent)]` emits an `Aggregate` impl
//! whose `apply` calls `Dispatch`. So the aggregate must implement `AccountEventHandler`, and
//! the compiler checks that every variant has its handler: forgetting one is rustc's
//! "not all trait items implemented, missing: `when_funds_deposited`". Variants that change
//! no state opt out with `#[event(no_state_change)]`, which gives their method an empty
//! default body.
//!
//! The naming rule: variant `FundsDeposited` dispatches to `fn when_funds_deposited` (the
//! variant name in snake_case, prefixed with `when_`); enum `AccountEvent` gets the trait
//! `AccountEventHandler`.
//!
//! Handlers take what they use. A struct variant's handler receives a borrowed view of the
//! variant, a `Copy` struct of the same name in the module `account_event` (the enum's name in
//! snake_case) whose fields are references to the event's: `fn when_funds_deposited(&mut
//! self, e: account_event::FundsDeposited)` reads `e.cents` and ignores the rest. A
//! one-field tuple variant's handler receives a reference to its field, so events declared as
//! structs of their own (`Deposited(Deposited)`) are handled as `e: &Deposited`; a longer tuple
//! variant's handler receives a tuple of references, a unit variant's nothing.
//!
//! ```
//! use eventsource_core::{Aggregate, AggregateRoot, DomainEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     #[event(name = "funds-deposited")]
//!     FundsDeposited { cents: u64 },
//!     #[event(no_state_change)]
//!     Viewed,
//! }
//!
//! #[derive(Debug, Default, Aggregate)]
//! #[aggregate(name = "account", event = AccountEvent)]
//! struct Account {
//!     owner: String,
//!     balance: u64,
//! }
//!
//! impl AccountEventHandler for Account {
//!     fn when_opened(&mut self, e: account_event::Opened) {
//!         self.owner.clone_from(e.owner);
//!     }
//!     fn when_funds_deposited(&mut self, e: account_event::FundsDeposited) {
//!         self.balance += e.cents;
//!     }
//!     // `when_viewed` keeps its empty default body.
//! }
//!
//! let events = [
//!     AccountEvent::Opened { owner: "ada".into() },
//!     AccountEvent::FundsDeposited { cents: 250 },
//!     AccountEvent::Viewed,
//! ];
//! let root = AggregateRoot::<Account>::from_history("acc-1", events);
//! assert_eq!(root.state().balance, 250);
//! assert_eq!(Account::TYPE, "account");
//! assert_eq!(AccountEvent::FundsDeposited { cents: 1 }.event_type(), "funds-deposited");
//! ```
//!
//! Mistakes in the attributes are compile errors pointing at the offending token and saying
//! how to fix it; the derives never panic.

mod ast;
mod attr;
mod check;
mod expand;
mod symbol;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `eventsource_core::DomainEvent` for an enum, plus its handler trait and `Dispatch`.
///
/// Each variant is one event type. The derive generates:
///
/// - `impl DomainEvent for E`: `EVENT_TYPES`, `event_type`, `schema_version`, and
///   `encode`/`decode`. The stored payload is the variant's fields as JSON without serde's
///   enum tag (`{"cents": 5}`, `null` for a unit variant); `decode` picks the variant by its
///   stored name, upcasting older schema versions first.
/// - `trait EHandler` (same visibility as `E`), with one method per variant: variant
///   `FundsDeposited { cents: u64, memo: String }` dispatches to `fn when_funds_deposited(&mut
///   self, e: e::FundsDeposited<'_>)`; a one-field tuple variant `Opened(Opened)` to `fn
///   when_opened(&mut self, e: &Opened)`; a tuple variant `Moved(i32, i32)` to `fn
///   when_moved(&mut self, e: (&i32, &i32))`; a unit variant's method takes no argument.
/// - `mod e` (`E` in snake_case, same visibility as `E`), when `E` has struct variants: one
///   borrowed view per struct variant, named as the variant, `Debug + Copy`, with one public
///   field per variant field holding `&'event FieldType`. Field types resolve as in the
///   enum's module (the module does `use super::*`), so declare the enum at module level, not
///   inside a function body, when its fields name types of that body.
/// - `impl<H: EHandler + ?Sized> Dispatch<H> for E`, the `match` that `#[derive(Aggregate)]`'s
///   `apply` calls.
///
/// # Enum attribute
///
/// - `#[event(crate = "path::to::eventsource_core")]`: the path generated code names
///   `eventsource_core` by (default `::eventsource_core`), for a renamed dependency or a
///   framework that re-exports it, as serde's `#[serde(crate = "...")]`.
///
/// # Variant attributes
///
/// Keys can be combined: `#[event(name = "funds-deposited", version = 2, upcast = f)]`.
///
/// - `name = "funds-deposited"`: the stable type name stored with every event (default: the
///   variant's name). Keep it when renaming the variant.
/// - `version = N`: the current schema version, at least 1 (default 1).
/// - `alias = "deposited"` (repeatable): a former stored name of this variant, after a rename;
///   events stored under it decode as this variant (and are written under `name` from then
///   on). Listed in `DomainEvent::EVENT_ALIASES`.
/// - `upcast_from(1 = DepositedV1, 2 = DepositedV2)`: typed upcasters. With `version = 3`, the
///   payload of a stored version-1 event is deserialized as `DepositedV1`, converted with
///   `TryFrom` (or `From`) into `DepositedV2`, and that into the enum (`impl From<DepositedV2>
///   for AccountEvent`); a version-2 event takes the last step only. The listed versions are
///   consecutive and end just below the current one; a failing `TryFrom` (its error `Display`)
///   becomes `DecodeError::Upcast` naming the version it started from. Versions before the
///   first listed one are unsupported. Not combined with `upcast`.
/// - `upcast = path::to_fn`: with `version` above 1, a
///   `fn(u32, serde_json::Value) -> Result<serde_json::Value, UpcastError>` that turns a
///   payload stored with an older version (given as the first argument) into the current shape.
///   Without it, older versions fail to decode with `DecodeError::UnsupportedVersion`.
/// - `no_state_change`: the event changes no aggregate state; its handler method gets an empty
///   default body instead of being required.
///
/// `#[serde(rename = "...")]` on a variant is honoured. Enum-level `#[serde(tag)]`,
/// `#[serde(content)]`, `#[serde(untagged)]` and `#[serde(rename_all)]` are rejected: the
/// payload relies on serde's default external tagging; choose stored names with
/// `#[event(name = "...")]` instead.
///
/// The enum must not be generic or borrow (events are stored, so they own their data) and must
/// have at least one variant.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::event::derive(&input).into()
}

/// Derives `eventsource_core::Aggregate` for a struct whose events are a
/// `#[derive(DomainEvent)]` enum.
///
/// `#[aggregate(event = AccountEvent)]` is required. `apply` dispatches each event to the
/// struct's `AccountEventHandler` methods (variant `FundsDeposited` → `when_funds_deposited`),
/// so the struct must implement that trait, with one method per variant.
///
/// # Struct attributes
///
/// - `event = Type` (required): the event enum.
/// - `name = "account"`: the aggregate type name, part of every stream id (default: the
///   struct's name in snake_case, `BankAccount` → `"bank_account"`).
/// - `snapshot = N`: enables snapshots with schema version `N` (at least 1); the state is
///   stored with serde, so the struct must implement `Serialize` and `Deserialize`.
/// - `crate = "path::to::eventsource_core"`: the path generated code names `eventsource_core`
///   by (default `::eventsource_core`).
///
/// The struct must not be generic, and `Aggregate` also needs `Default + Send + Sync +
/// 'static`.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::aggregate::derive(&input).into()
}
