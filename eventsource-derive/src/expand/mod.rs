//! Code generation. Generated code names everything by absolute path (`::eventsource_core::…`,
//! or the path given by `crate = "..."`, and `::core::…`), marks impls
//! `#[automatically_derived]`, and names its own locals with mixed-site hygiene so user fields
//! and paths cannot capture them.

pub(crate) mod aggregate;
pub(crate) mod event;

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};

/// A local variable of generated code, invisible to user tokens.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// `tokens` with every span set to `span`, so a path such as the crate path given by
/// `crate = "..."` reports errors where the surrounding `quote_spanned!` points.
fn respan(tokens: impl ToTokens, span: Span) -> TokenStream {
    tokens
        .into_token_stream()
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
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

#[cfg(test)]
mod tests {
    /// With `crate = "..."`, nothing generated names `eventsource_core`: a renamed dependency
    /// compiles without it in the extern prelude.
    #[test]
    fn crate_path_replaces_every_mention_of_eventsource_core() {
        let event: syn::DeriveInput = syn::parse_quote! {
            #[event(crate = "renamed")]
            enum CounterEvent {
                #[event(version = 2, upcast = up)]
                Added { by: u32 },
                Moved(u8, u8),
                Named(String),
                Reset,
            }
        };
        let aggregate: syn::DeriveInput = syn::parse_quote! {
            #[aggregate(event = CounterEvent, snapshot = 1, crate = "renamed")]
            struct Counter { value: u32 }
        };
        for expanded in [
            super::event::derive(&event),
            super::aggregate::derive(&aggregate),
        ] {
            let code = expanded.to_string();
            assert!(code.contains("renamed"), "{code}");
            assert!(!code.contains("eventsource_core"), "{code}");
            assert!(!code.contains("compile_error"), "{code}");
        }
    }
}
