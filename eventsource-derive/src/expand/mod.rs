//! Code generation. Generated code names everything by absolute path (`::eventsource_core::…`,
//! `::core::…`), marks impls `#[automatically_derived]`, and names its own locals with
//! mixed-site hygiene so user fields and paths cannot capture them.

pub(crate) mod aggregate;
pub(crate) mod event;

use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;

/// A local variable of generated code, invisible to user tokens.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The errors as `compile_error!`s, followed by a fallback impl that keeps the rest of the
/// user's code from failing in cascade (as thiserror's `fallback.rs` does).
fn with_fallback(error: Option<syn::Error>, fallback: &TokenStream) -> TokenStream {
    let compile_error = error.map(syn::Error::into_compile_error);
    quote! {
        #compile_error
        #fallback
    }
}
