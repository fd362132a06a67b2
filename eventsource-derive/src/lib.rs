//! Derive macros for `eventsource`; use them through `eventsource_core`.

use proc_macro::TokenStream;

/// Derives `eventsource_core::DomainEvent`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Derives `eventsource_core::Aggregate`.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
