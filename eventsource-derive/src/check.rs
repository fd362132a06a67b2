//! Checks that need the whole input: shapes the derives do not support, and conflicts between
//! variants. Also home of [`Errors`], which collects every diagnostic of one expansion.

use std::collections::HashMap;
use std::fmt::Display;

use quote::ToTokens;

use crate::ast::{AggregateStruct, EventEnum};
use crate::symbol::{self, SERDE_REPRESENTATION_KEYS};

/// Collects errors across the pipeline and combines them into one `syn::Error`, so the user
/// sees every mistake in one compile.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Adds an error spanned on `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// `Ok` when nothing was reported, else every error combined.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.combined.map_or(Ok(()), Err)
    }
}

/// Checks a `#[derive(DomainEvent)]` enum.
pub(crate) fn event(errors: &mut Errors, event: &EventEnum<'_>) {
    check_generics(errors, event);

    if event.variants.is_empty() {
        errors.spanned(
            event.ident,
            format_args!(
                "DomainEvent needs at least one variant: add the events of `{}`, \
                 like `Opened {{ owner: String }}`",
                event.ident
            ),
        );
    }

    for key in &event.serde_representation {
        errors.spanned(
            key,
            format_args!(
                "#[serde({})] is not supported on a DomainEvent enum: the stored payload \
                 relies on serde's default external tagging (no {}); remove it, and choose \
                 stored names with `#[event(name = \"...\")]` on each variant",
                key.to_token_stream(),
                symbol::list(SERDE_REPRESENTATION_KEYS)
            ),
        );
    }

    let mut names: HashMap<String, &syn::Ident> = HashMap::new();
    let mut methods: HashMap<String, &syn::Ident> = HashMap::new();
    for variant in &event.variants {
        let name = variant.stored_name();
        if let Some(first) = names.get(&name) {
            let message = format_args!(
                "duplicate event name \"{name}\": variant `{first}` already uses it. \
                 If `{}` is a new shape of that stored event, change `{first}` itself: \
                 raise its `version` and read older payloads with an upcaster, like \
                 `#[event(name = \"{name}\", version = 2, upcast = upcast_fn)]`; \
                 otherwise give `{}` its own `#[event(name = \"...\")]`",
                variant.ident, variant.ident
            );
            match &variant.attrs.name {
                Some(lit) => errors.spanned(lit, message),
                None => errors.spanned(variant.ident, message),
            }
        } else {
            names.insert(name, variant.ident);
        }

        let method = variant.handler.to_string();
        if let Some(first) = methods.get(&method) {
            errors.spanned(
                variant.ident,
                format_args!(
                    "variants `{first}` and `{}` both dispatch to `fn {method}`: \
                     rename one of them",
                    variant.ident
                ),
            );
        } else {
            methods.insert(method, variant.ident);
        }

        if let Some(upcast) = &variant.attrs.upcast
            && variant.version() < 2
        {
            errors.spanned(
                &upcast.key,
                format_args!(
                    "`upcast` needs `version` above 1: the upcaster turns older stored \
                     versions of `{}` into the current one; raise the version, like \
                     `#[event(version = 2, upcast = ...)]`",
                    variant.ident
                ),
            );
        }

        if let Some(untagged) = &variant.serde.untagged {
            errors.spanned(
                untagged,
                "#[serde(untagged)] is not supported on a DomainEvent variant: the stored \
                 payload relies on serde's default external tagging; remove it",
            );
        }
    }
}

/// An event enum has no parameters; lifetimes get advice of their own, since the fix is owned
/// fields, not just removing `<'a>`.
fn check_generics(errors: &mut Errors, event: &EventEnum<'_>) {
    let generics = &event.original.generics;
    if !generics.params.is_empty()
        && generics
            .params
            .iter()
            .all(|param| matches!(param, syn::GenericParam::Lifetime(_)))
    {
        errors.spanned(
            generics,
            format_args!(
                "DomainEvent cannot be derived for an enum that borrows: events are stored and \
                 decoded later, so they own their data; remove the lifetimes from `{}` and use \
                 owned fields (`String` for `&str`, `Vec<T>` for `&[T]`)",
                event.ident
            ),
        );
    } else if !generics.params.is_empty() {
        errors.spanned(
            generics,
            format_args!(
                "DomainEvent cannot be derived for a generic enum: every stored event type \
                 needs one concrete shape; remove the parameters from `{}`",
                event.ident
            ),
        );
    }
}

/// Checks a `#[derive(Aggregate)]` struct.
pub(crate) fn aggregate(errors: &mut Errors, aggregate: &AggregateStruct<'_>) {
    let generics = &aggregate.original.generics;
    if !generics.params.is_empty() {
        errors.spanned(
            generics,
            format_args!(
                "Aggregate cannot be derived for a generic struct: the aggregate type name is \
                 stored with every stream; remove the parameters from `{}`",
                aggregate.ident
            ),
        );
    }

    if !aggregate.attrs.present {
        errors.spanned(
            aggregate.ident,
            format_args!(
                "missing #[aggregate(...)] on `{}`: add `#[aggregate(event = YourEvent)]` \
                 naming the #[derive(DomainEvent)] enum it applies",
                aggregate.ident
            ),
        );
    } else if !aggregate.attrs.event_given {
        errors.spanned(
            aggregate.ident,
            format_args!(
                "missing `event` in #[aggregate(...)] on `{}`: add \
                 `event = YourEvent` naming the #[derive(DomainEvent)] enum it applies",
                aggregate.ident
            ),
        );
    }
}
