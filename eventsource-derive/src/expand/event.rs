//! `#[derive(DomainEvent)]`: the `DomainEvent` impl, the `<Enum>Handler` trait and the
//! blanket `Dispatch` impl.

use std::collections::HashSet;

use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned as _;

use super::{local, with_fallback};
use crate::ast::{EventEnum, EventVariant, Style};
use crate::check::{self, Errors};

/// Expands `#[derive(DomainEvent)]`; errors become `compile_error!` plus a fallback.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let event = EventEnum::from_ast(&mut errors, input);
    if let Some(event) = &event {
        check::event(&mut errors, event);
    }
    match (errors.finish(), &event) {
        (Ok(()), Some(event)) => expand(event),
        (result, event) => with_fallback(result.err(), &fallback(input, event.as_ref())),
    }
}

fn expand(event: &EventEnum<'_>) -> TokenStream {
    let domain_event = domain_event_impl(event);
    let handler_trait = handler_trait(event, false);
    let dispatch = dispatch_impl(event);
    quote! {
        #domain_event
        #handler_trait
        #dispatch
    }
}

fn domain_event_impl(event: &EventEnum<'_>) -> TokenStream {
    let ident = event.ident;
    let names: Vec<String> = event
        .variants
        .iter()
        .map(EventVariant::stored_name)
        .collect();
    let versions: Vec<Literal> = event
        .variants
        .iter()
        .map(|variant| Literal::u32_unsuffixed(variant.version()))
        .collect();
    let variants: Vec<&Ident> = event.variants.iter().map(|variant| variant.ident).collect();

    let event_type = local("event_type");
    let schema_version = local("schema_version");
    let payload = local("payload");
    let decode_arms = event
        .variants
        .iter()
        .map(|variant| decode_arm(variant, &event_type, &schema_version, &payload));

    quote! {
        #[automatically_derived]
        impl ::eventsource_core::DomainEvent for #ident {
            const EVENT_TYPES: &'static [::eventsource_core::EventType] = &[
                #(::eventsource_core::EventType { name: #names, version: #versions },)*
            ];

            fn event_type(&self) -> &'static str {
                match self {
                    #(Self::#variants { .. } => #names,)*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    #(Self::#variants { .. } => #versions,)*
                }
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<
                ::eventsource_core::__private::serde_json::Value,
                ::eventsource_core::__private::serde_json::Error,
            > {
                ::eventsource_core::__private::serde_json::to_value(self)
                    .map(::eventsource_core::__private::strip_tag)
            }

            fn decode(
                #event_type: &str,
                #schema_version: u32,
                #payload: ::eventsource_core::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, ::eventsource_core::DecodeError> {
                match #event_type {
                    #(#decode_arms)*
                    _ => ::core::result::Result::Err(::eventsource_core::DecodeError::UnknownType {
                        event_type: ::std::string::String::from(#event_type),
                    }),
                }
            }
        }
    }
}

/// `"name" => match schema_version { current => decode, 1..current => upcast, other => error }`.
fn decode_arm(
    variant: &EventVariant<'_>,
    event_type: &Ident,
    schema_version: &Ident,
    payload: &Ident,
) -> TokenStream {
    let name = variant.stored_name();
    let serde_name = variant.serde_name();
    let unit = variant.style == Style::Unit;
    let current = Literal::u32_unsuffixed(variant.version());
    let stored = local("stored");
    let decode = quote! {
        ::eventsource_core::__private::with_tag::<Self>(#event_type, #serde_name, #unit, #payload)
    };
    let upcast_arm = variant.attrs.upcast.as_ref().map(|upcast| {
        let path = &upcast.value;
        let upcaster = local("upcaster");
        let source = local("source");
        quote! {
            #stored @ 1..#current => {
                let #upcaster: fn(
                    u32,
                    ::eventsource_core::__private::serde_json::Value,
                ) -> ::core::result::Result<
                    ::eventsource_core::__private::serde_json::Value,
                    ::eventsource_core::UpcastError,
                > = #path;
                match #upcaster(#stored, #payload) {
                    ::core::result::Result::Ok(#payload) => #decode,
                    ::core::result::Result::Err(#source) => ::core::result::Result::Err(
                        ::eventsource_core::DecodeError::Upcast {
                            event_type: ::std::string::String::from(#event_type),
                            source: #source,
                        },
                    ),
                }
            }
        }
    });
    quote! {
        #name => match #schema_version {
            #current => #decode,
            #upcast_arm
            #stored => ::core::result::Result::Err(
                ::eventsource_core::DecodeError::UnsupportedVersion {
                    event_type: ::std::string::String::from(#event_type),
                    stored: #stored,
                    current: #current,
                },
            ),
        },
    }
}

/// The `<Enum>Handler` trait. In a fallback every method gets an empty default body (and
/// duplicate names are dropped), so the user's impl does not fail in cascade.
fn handler_trait(event: &EventEnum<'_>, fallback: bool) -> TokenStream {
    let vis = event.vis;
    let ident = event.ident;
    let trait_ident = &event.handler_trait;
    let method_list = event
        .variants
        .iter()
        .map(|variant| format!("`{}`", variant.handler))
        .collect::<Vec<_>>()
        .join(", ");

    let trait_doc = format!(
        " Handlers for the events of `{ident}`: one `when_<variant>` method per variant \
         ({method_list}).\n\n Generated by `#[derive(DomainEvent)]`. Implement it for the \
         aggregate whose `#[aggregate(event = {ident})]` names this enum: its `apply` \
         dispatches every variant to its method, so a missing handler is a compile error \
         that names the variant."
    );
    let message = format!("`{{Self}}` does not handle the events of `{ident}`");
    let label = format!("`{{Self}}` needs `impl {trait_ident} for {{Self}}`");
    let note = format!(
        "implement `{trait_ident}` with one `when_<variant>` method per event variant: \
         {method_list}"
    );

    let mut seen = HashSet::new();
    let methods = event.variants.iter().filter_map(|variant| {
        if fallback && !seen.insert(variant.handler.to_string()) {
            return None;
        }
        let method = &variant.handler;
        let default_body = fallback || variant.attrs.no_state_change.is_some();
        let params = variant.fields.iter().map(|field| {
            let name = if default_body {
                field.unused_binding()
            } else {
                field.binding.clone()
            };
            let ty = field.ty;
            // Spanned on the field's type, so rustc's "type in trait" note points at it.
            let reference = quote_spanned!(ty.span()=> &);
            quote!(#name: #reference #ty)
        });
        let mut doc = format!(
            " Applies `{ident}::{}` (stored as `{}`, schema version {}).",
            variant.ident,
            variant.stored_name(),
            variant.version()
        );
        if variant.attrs.no_state_change.is_some() {
            doc.push_str(
                "\n\n Marked `#[event(no_state_change)]`: does nothing unless overridden.",
            );
        }
        let body = if default_body { quote!({}) } else { quote!(;) };
        Some(quote! {
            #[doc = #doc]
            fn #method(&mut self, #(#params),*) #body
        })
    });

    quote! {
        #[doc = #trait_doc]
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        // Handlers take each field as `&FieldType`, so a `String` field gives `&String`.
        #[allow(clippy::ptr_arg)]
        #vis trait #trait_ident {
            #(#methods)*
        }
    }
}

/// `impl<H: <Enum>Handler + ?Sized> Dispatch<H> for Enum`: a `match` with one arm per variant
/// and no wildcard.
fn dispatch_impl(event: &EventEnum<'_>) -> TokenStream {
    let ident = event.ident;
    let trait_ident = &event.handler_trait;
    let handler_param = handler_param(ident);
    let handler = local("handler");
    let arms = event.variants.iter().map(|variant| {
        let variant_ident = variant.ident;
        let method = &variant.handler;
        let bindings: Vec<&Ident> = variant.fields.iter().map(|field| &field.binding).collect();
        let pattern = match variant.style {
            Style::Named => quote!(Self::#variant_ident { #(#bindings),* }),
            Style::Tuple => quote!(Self::#variant_ident(#(#bindings),*)),
            Style::Unit => quote!(Self::#variant_ident),
        };
        quote!(#pattern => #handler.#method(#(#bindings),*),)
    });
    quote! {
        #[automatically_derived]
        impl<#handler_param: #trait_ident + ?::core::marker::Sized>
            ::eventsource_core::Dispatch<#handler_param> for #ident
        {
            fn dispatch(&self, #handler: &mut #handler_param) {
                match self {
                    #(#arms)*
                }
            }
        }
    }
}

/// The handler type parameter of the `Dispatch` impl, `H` unless the enum itself is called so.
fn handler_param(event: &Ident) -> Ident {
    if event == "H" {
        format_ident!("Handler")
    } else {
        format_ident!("H")
    }
}

/// What is emitted next to the errors: a `DomainEvent` impl whose methods are unreachable, and
/// (for an enum) the handler trait with default bodies and a `Dispatch` impl, so code using
/// the enum reports only the real mistakes. Nothing for a generic input.
fn fallback(input: &DeriveInput, event: Option<&EventEnum<'_>>) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = &input.ident;
    let handler = event.map(|event| {
        let handler_trait = handler_trait(event, true);
        let trait_ident = &event.handler_trait;
        let handler_param = handler_param(ident);
        quote! {
            #handler_trait

            #[automatically_derived]
            impl<#handler_param: #trait_ident + ?::core::marker::Sized>
                ::eventsource_core::Dispatch<#handler_param> for #ident
            {
                fn dispatch(&self, _handler: &mut #handler_param) {
                    ::core::unreachable!()
                }
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl ::eventsource_core::DomainEvent for #ident {
            const EVENT_TYPES: &'static [::eventsource_core::EventType] = &[];

            fn event_type(&self) -> &'static str {
                ::core::unreachable!()
            }

            fn schema_version(&self) -> u32 {
                ::core::unreachable!()
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<
                ::eventsource_core::__private::serde_json::Value,
                ::eventsource_core::__private::serde_json::Error,
            > {
                ::core::unreachable!()
            }

            fn decode(
                _event_type: &str,
                _schema_version: u32,
                _payload: ::eventsource_core::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, ::eventsource_core::DecodeError> {
                ::core::unreachable!()
            }
        }

        #handler
    }
}
