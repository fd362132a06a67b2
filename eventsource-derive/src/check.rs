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
        check_upcasts(errors, variant);
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
        for alias in &variant.attrs.aliases {
            if let Some(first) = names.get(&alias.value()) {
                errors.spanned(
                    alias,
                    format_args!(
                        "alias \"{}\" of `{}` is already a stored name of `{first}`: \
                         a stored name decodes to one variant only",
                        alias.value(),
                        variant.ident
                    ),
                );
            } else {
                names.insert(alias.value(), variant.ident);
            }
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

/// `upcast_from(k = Vk, ...)` lists each older version once, in order, up to the one before the
/// current; it replaces `upcast`, not joins it.
fn check_upcasts(errors: &mut Errors, variant: &crate::ast::EventVariant<'_>) {
    let Some(chain) = &variant.attrs.upcast_from else {
        return;
    };
    let current = variant.version();
    if let Some(upcast) = &variant.attrs.upcast {
        errors.spanned(
            &upcast.key,
            "give either `upcast` (one JSON upcaster) or `upcast_from` (typed upcasters, one \
             stored shape per version), not both",
        );
    }
    if current < 2 {
        errors.spanned(
            &chain.key,
            format_args!(
                "`upcast_from` needs `version` above 1: it lists the stored shapes of the \
                 versions before the current one; raise the version of `{}`, like \
                 `#[event(version = 2, upcast_from(1 = {}V1))]`",
                variant.ident, variant.ident
            ),
        );
        return;
    }
    if chain.value.is_empty() {
        errors.spanned(
            &chain.key,
            "`upcast_from` lists at least one older version, like `upcast_from(1 = DepositedV1)`",
        );
        return;
    }
    let first = chain.value[0].0.base10_parse::<u32>().unwrap_or(0);
    for (index, (version, _)) in chain.value.iter().enumerate() {
        let expected = first.saturating_add(u32::try_from(index).unwrap_or(u32::MAX));
        let value = version.base10_parse::<u32>().ok();
        if value == Some(0) || value.is_none() || value != Some(expected) || expected >= current {
            errors.spanned(
                version,
                format_args!(
                    "`upcast_from` lists consecutive older versions in increasing order, the \
                     last one being {} (the current version is {current}): each stored shape \
                     converts into the next one's type, the last into the enum",
                    current - 1
                ),
            );
            return;
        }
    }
    if let Some((last, _)) = chain.value.last()
        && last.base10_parse::<u32>().ok() != Some(current - 1)
    {
        errors.spanned(
            last,
            format_args!(
                "`upcast_from` must reach version {}, the one before the current version \
                 {current}: the last listed shape converts into the enum",
                current - 1
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
