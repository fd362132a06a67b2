//! `#[derive(Aggregate)]`: the `Aggregate` impl, whose `apply` goes through `Dispatch` to the
//! `<Event>Handler` methods.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned as _;

use super::{local, respan, with_fallback};
use crate::ast::AggregateStruct;
use crate::check::{self, Errors};

/// Expands `#[derive(Aggregate)]`; errors become `compile_error!` plus a fallback.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let aggregate = AggregateStruct::from_ast(&mut errors, input);
    if let Some(aggregate) = &aggregate {
        check::aggregate(&mut errors, aggregate);
    }
    match (errors.finish(), &aggregate) {
        (Ok(()), Some(aggregate)) => expand(aggregate),
        (result, aggregate) => with_fallback(result.err(), &fallback(aggregate.as_ref())),
    }
}

fn expand(aggregate: &AggregateStruct<'_>) -> TokenStream {
    let krate = &aggregate.krate;
    let ident = aggregate.ident;
    let name = aggregate.type_name();
    let Some(event_ty) = &aggregate.attrs.event else {
        // `check::aggregate` reports a missing `event`; nothing to generate without it.
        return TokenStream::new();
    };
    let event = local("event");
    // Spanned on the event type, so "`Account` does not handle the events of `AccountEvent`"
    // points at `event = AccountEvent`.
    let dispatch_krate = respan(krate, event_ty.span());
    let dispatch = quote_spanned! {event_ty.span()=>
        <#event_ty as #dispatch_krate::Dispatch<Self>>::dispatch
    };
    let snapshot = aggregate.attrs.snapshot.as_ref().map(|version| {
        let number = Literal::u32_unsuffixed(version.value);
        // Spanned on the `snapshot` key, so a missing `Serialize`/`Deserialize` points there.
        let span = version.key.span();
        let state = local("state");
        let spanned_krate = respan(krate, span);
        let to_value = quote_spanned! {span=>
            #spanned_krate::__private::serde_json::to_value(self).ok()
        };
        let from_value = quote_spanned! {span=>
            #spanned_krate::__private::serde_json::from_value(#state).ok()
        };
        quote! {
            const SNAPSHOT_VERSION: ::core::option::Option<u32> =
                ::core::option::Option::Some(#number);

            fn snapshot(&self) -> ::core::option::Option<#krate::__private::serde_json::Value> {
                #to_value
            }

            fn restore(
                #state: #krate::__private::serde_json::Value,
            ) -> ::core::option::Option<Self> {
                #from_value
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #krate::Aggregate for #ident {
            const TYPE: &'static str = #name;

            type Event = #event_ty;

            fn apply(&mut self, #event: &Self::Event) {
                #dispatch(#event, self);
            }

            #snapshot
        }
    }
}

/// What is emitted next to the errors: an `Aggregate` impl that applies nothing, when the
/// input is a non-generic struct naming its event type; nothing otherwise.
fn fallback(aggregate: Option<&AggregateStruct<'_>>) -> TokenStream {
    let Some(aggregate) = aggregate else {
        return TokenStream::new();
    };
    let (Some(event_ty), true) = (
        &aggregate.attrs.event,
        aggregate.original.generics.params.is_empty(),
    ) else {
        return TokenStream::new();
    };
    let ident = aggregate.ident;
    let krate = &aggregate.krate;
    let name = aggregate.type_name();
    quote! {
        #[automatically_derived]
        impl #krate::Aggregate for #ident {
            const TYPE: &'static str = #name;

            type Event = #event_ty;

            fn apply(&mut self, _event: &Self::Event) {}
        }
    }
}
