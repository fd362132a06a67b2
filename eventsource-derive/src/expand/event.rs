//! `#[derive(DomainEvent)]`: the `DomainEvent` impl, the `<Enum>Handler` trait, the module of
//! borrowed views its methods receive, and the blanket `Dispatch` impl.

use std::collections::HashSet;

use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{DeriveInput, Path, Visibility};

use super::{local, respan, with_fallback};
use crate::ast::{EventEnum, EventVariant, Style, default_crate};
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
    let views = views_module(event);
    let dispatch = dispatch_impl(event);
    quote! {
        #domain_event
        #handler_trait
        #views
        #dispatch
    }
}

fn domain_event_impl(event: &EventEnum<'_>) -> TokenStream {
    let krate = &event.krate;
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

    let alias_pairs = event.variants.iter().flat_map(|variant| {
        let name = variant.stored_name();
        variant
            .attrs
            .aliases
            .iter()
            .map(move |alias| quote!((#alias, #name)))
    });
    let event_type = local("event_type");
    let schema_version = local("schema_version");
    let payload = local("payload");
    let decode_arms = event
        .variants
        .iter()
        .map(|variant| decode_arm(krate, variant, &event_type, &schema_version, &payload));

    quote! {
        #[automatically_derived]
        impl #krate::DomainEvent for #ident {
            const EVENT_TYPES: &'static [#krate::EventType] = &[
                #(#krate::EventType { name: #names, version: #versions },)*
            ];

            const EVENT_ALIASES: &'static [(&'static str, &'static str)] = &[
                #(#alias_pairs,)*
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
                #krate::__private::serde_json::Value,
                #krate::__private::serde_json::Error,
            > {
                #krate::__private::serde_json::to_value(self)
                    .map(#krate::__private::strip_tag)
            }

            fn decode(
                #event_type: &str,
                #schema_version: u32,
                #payload: #krate::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                match #event_type {
                    #(#decode_arms)*
                    _ => ::core::result::Result::Err(#krate::DecodeError::UnknownType {
                        event_type: ::std::string::String::from(#event_type),
                    }),
                }
            }
        }
    }
}

/// `"name" => match schema_version { current => decode, 1..current => upcast, other => error }`.
fn decode_arm(
    krate: &Path,
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
        #krate::__private::with_tag::<Self>(#event_type, #serde_name, #unit, #payload)
    };
    let upcast_arm = variant.attrs.upcast.as_ref().map(|upcast| {
        let path = &upcast.value;
        let upcaster = local("upcaster");
        let source = local("source");
        quote! {
            #stored @ 1..#current => {
                let #upcaster: fn(
                    u32,
                    #krate::__private::serde_json::Value,
                ) -> ::core::result::Result<
                    #krate::__private::serde_json::Value,
                    #krate::UpcastError,
                > = #path;
                match #upcaster(#stored, #payload) {
                    ::core::result::Result::Ok(#payload) => #decode,
                    ::core::result::Result::Err(#source) => ::core::result::Result::Err(
                        #krate::DecodeError::Upcast {
                            event_type: ::std::string::String::from(#event_type),
                            source: #source,
                        },
                    ),
                }
            }
        }
    });
    let chain_arms = variant
        .attrs
        .upcast_from
        .as_ref()
        .map(|chain| typed_upcast_arms(krate, &chain.value, event_type, payload));
    let aliases = &variant.attrs.aliases;
    quote! {
        #name #(| #aliases)* => match #schema_version {
            #current => #decode,
            #upcast_arm
            #chain_arms
            #stored => ::core::result::Result::Err(
                #krate::DecodeError::UnsupportedVersion {
                    event_type: ::std::string::String::from(#event_type),
                    stored: #stored,
                    current: #current,
                },
            ),
        },
    }
}

/// One arm per version listed in `upcast_from(k = Vk, ..)`: deserialize the payload as `Vk`,
/// then convert it step by step (`TryFrom`) through every later listed type into `Self`.
fn typed_upcast_arms(
    krate: &Path,
    chain: &[(syn::LitInt, syn::Type)],
    event_type: &Ident,
    payload: &Ident,
) -> TokenStream {
    let value = local("value");
    let arms = chain.iter().enumerate().map(|(start, (version, ty))| {
        let steps = chain[start..]
            .iter()
            .enumerate()
            .map(|(offset, (from, source))| {
                let target = chain
                    .get(start + offset + 1)
                    .map_or_else(|| quote!(Self), |(_, next)| quote!(#next));
                // Spanned on the listed type, so a missing `From`/`TryFrom` points at it.
                let span = source.span();
                let step = respan(quote!(#krate::__private::upcast_step), span);
                quote_spanned! {span=>
                    let #value = #step::<#source, #target>(#event_type, #from, #value)?;
                }
            });
        quote! {
            #version => {
                let #value = #krate::__private::stored_shape::<#ty>(#event_type, #payload)?;
                #(#steps)*
                ::core::result::Result::Ok(#value)
            }
        }
    });
    quote!(#(#arms)*)
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
         that names the variant. A struct variant's method receives the variant's borrowed \
         view from the module `{views}`, a one-field tuple variant's a reference to the \
         field, a tuple variant's a tuple of references, a unit variant's nothing.",
        views = event.views,
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
        let name = if default_body {
            format_ident!("_event")
        } else {
            format_ident!("event")
        };
        let param = handler_param_type(event, variant).map(|ty| quote!(#name: #ty));
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
            fn #method(&mut self, #param) #body
        })
    });

    quote! {
        #[doc = #trait_doc]
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        // A one-field tuple variant's handler takes `&Field`, so a `String` field gives
        // `&String` and a `u64` field `&u64`; the user's impl cannot change the trait.
        #[allow(clippy::ptr_arg, clippy::trivially_copy_pass_by_ref)]
        #vis trait #trait_ident {
            #(#methods)*
        }
    }
}

/// What a variant's handler receives: the view `views::Variant<'_>` for a struct variant,
/// `&Field` for a one-field tuple variant, `(&A, &B, ..)` for a longer tuple variant, nothing
/// for a unit variant. Spanned on the user's tokens, so a mismatch's "type in trait" note
/// points at the variant or the field.
fn handler_param_type(event: &EventEnum<'_>, variant: &EventVariant<'_>) -> Option<TokenStream> {
    match variant.style {
        Style::Unit => None,
        Style::Named => {
            let view = variant.ident;
            let mut views = event.views.clone();
            views.set_span(view.span());
            Some(quote_spanned!(view.span()=> #views::#view<'_>))
        }
        Style::Tuple => {
            let refs: Vec<TokenStream> = variant
                .fields
                .iter()
                .map(|field| {
                    let ty = field.ty;
                    let reference = quote_spanned!(ty.span()=> &);
                    quote!(#reference #ty)
                })
                .collect();
            match refs.as_slice() {
                [single] => Some(single.clone()),
                _ => Some(quote!((#(#refs),*))),
            }
        }
    }
}

/// The module of borrowed views, one struct per struct variant, each field a reference to the
/// event's field. Nothing when the enum has no struct variant.
///
/// The module sees the enum's scope through `use super::*`, so field types named at module
/// level resolve; types declared inside a function body do not (a limitation of Rust paths,
/// documented on the derive).
fn views_module(event: &EventEnum<'_>) -> TokenStream {
    let named: Vec<&EventVariant<'_>> = event
        .variants
        .iter()
        .filter(|variant| variant.style == Style::Named)
        .collect();
    if named.is_empty() {
        return TokenStream::new();
    }
    let vis = event.vis;
    let inner = inner_visibility(vis);
    let ident = event.ident;
    let views = &event.views;
    let trait_ident = &event.handler_trait;
    let module_doc = format!(
        " Borrowed views of the struct variants of `{ident}`, generated by \
         `#[derive(DomainEvent)]`: `{trait_ident}`'s method for a struct variant receives its \
         view, whose fields borrow the event's, so a handler reads only what it uses."
    );
    let structs = named.iter().map(|variant| {
        let view = variant.ident;
        let doc = format!(
            " The fields of `{ident}::{view}`, borrowed: what `{trait_ident}::{}` receives.",
            variant.handler
        );
        let fields = variant.fields.iter().map(|field| {
            let name = &field.binding;
            let ty = field.ty;
            let doc = format!(" `{ident}::{view}`'s `{}`.", name.unraw());
            quote! {
                #[doc = #doc]
                #inner #name: &'event #ty
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy)]
            // A handler reads the fields it needs; the others are never read.
            #[allow(dead_code)]
            #inner struct #view<'event> {
                #(#fields,)*
            }
        }
    });
    quote! {
        #[doc = #module_doc]
        #vis mod #views {
            // Field types are named as in the enum's module; prelude-only fields use nothing.
            #[allow(unused_imports)]
            use super::*;

            #(#structs)*
        }
    }
}

/// The visibility, inside the views module, of what the enum's visibility reaches from outside
/// it: a private enum's views are `pub(super)`, a `pub(crate)` enum's `pub(crate)`.
fn inner_visibility(vis: &Visibility) -> TokenStream {
    match vis {
        Visibility::Public(token) => quote!(#token),
        Visibility::Inherited => quote!(pub(super)),
        Visibility::Restricted(restricted) => {
            let path = &restricted.path;
            if path.is_ident("crate") || path.leading_colon.is_some() {
                quote!(#vis)
            } else if path.is_ident("self") {
                quote!(pub(super))
            } else if path
                .segments
                .first()
                .is_some_and(|segment| segment.ident == "crate")
            {
                quote!(#vis)
            } else {
                quote!(pub(in super::#path))
            }
        }
    }
}

/// `impl<H: <Enum>Handler + ?Sized> Dispatch<H> for Enum`: a `match` with one arm per variant
/// and no wildcard.
fn dispatch_impl(event: &EventEnum<'_>) -> TokenStream {
    let krate = &event.krate;
    let ident = event.ident;
    let trait_ident = &event.handler_trait;
    let views = &event.views;
    let handler_param = handler_param(ident);
    let handler = local("handler");
    let arms = event.variants.iter().map(|variant| {
        let variant_ident = variant.ident;
        let method = &variant.handler;
        let bindings: Vec<&Ident> = variant.fields.iter().map(|field| &field.binding).collect();
        match variant.style {
            Style::Named => quote! {
                Self::#variant_ident { #(#bindings),* } =>
                    #handler.#method(#views::#variant_ident { #(#bindings),* }),
            },
            Style::Tuple if bindings.len() == 1 => quote! {
                Self::#variant_ident(#(#bindings),*) => #handler.#method(#(#bindings),*),
            },
            Style::Tuple => quote! {
                Self::#variant_ident(#(#bindings),*) => #handler.#method((#(#bindings),*)),
            },
            Style::Unit => quote!(Self::#variant_ident => #handler.#method(),),
        }
    });
    quote! {
        #[automatically_derived]
        impl<#handler_param: #trait_ident + ?::core::marker::Sized>
            #krate::Dispatch<#handler_param> for #ident
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
    let krate = event.map_or_else(default_crate, |event| event.krate.clone());
    let handler = event.map(|event| {
        let handler_trait = handler_trait(event, true);
        let views = views_module(event);
        let trait_ident = &event.handler_trait;
        let handler_param = handler_param(ident);
        quote! {
            #handler_trait
            #views

            #[automatically_derived]
            impl<#handler_param: #trait_ident + ?::core::marker::Sized>
                #krate::Dispatch<#handler_param> for #ident
            {
                fn dispatch(&self, _handler: &mut #handler_param) {
                    ::core::unreachable!()
                }
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #krate::DomainEvent for #ident {
            const EVENT_TYPES: &'static [#krate::EventType] = &[];

            fn event_type(&self) -> &'static str {
                ::core::unreachable!()
            }

            fn schema_version(&self) -> u32 {
                ::core::unreachable!()
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<
                #krate::__private::serde_json::Value,
                #krate::__private::serde_json::Error,
            > {
                ::core::unreachable!()
            }

            fn decode(
                _event_type: &str,
                _schema_version: u32,
                _payload: #krate::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                ::core::unreachable!()
            }
        }

        #handler
    }
}
