//! A typed view of the derive input that borrows the `syn` nodes, so every later step can
//! still point errors at the user's tokens.
//!
//! The naming rules live here: [`handler_method`] (variant `FundsDeposited` dispatches to
//! `fn when_funds_deposited`), [`handler_trait`] (`AccountEvent` → `AccountEventHandler`),
//! [`views_module`] (`AccountEvent` → `account_event`, home of the view
//! `account_event::FundsDeposited<'_>` a struct variant's handler receives) and [`snake_case`],
//! which also gives an aggregate's default type name.

use proc_macro2::Ident;
use quote::format_ident;
use syn::ext::IdentExt as _;
use syn::{Data, DeriveInput, Field, Fields, Path, Type, Variant, Visibility};

use crate::attr::{self, AggregateAttrs, EventAttrs, SerdeVariant};
use crate::check::Errors;
use crate::symbol::{AGGREGATE, EVENT};

/// A `#[derive(DomainEvent)]` enum.
pub(crate) struct EventEnum<'a> {
    /// The whole input, for spans.
    pub(crate) original: &'a DeriveInput,
    /// The enum's name.
    pub(crate) ident: &'a Ident,
    /// The enum's visibility, given to the handler trait too.
    pub(crate) vis: &'a Visibility,
    /// The generated handler trait's name.
    pub(crate) handler_trait: Ident,
    /// The generated module holding the borrowed views of the struct variants.
    pub(crate) views: Ident,
    /// The variants, in declaration order.
    pub(crate) variants: Vec<EventVariant<'a>>,
    /// Enum-level `#[serde(...)]` keys that change the representation (rejected by `check`).
    pub(crate) serde_representation: Vec<syn::Path>,
    /// The path generated code names `eventsource_core` by: `#[event(crate = "...")]`, else
    /// `::eventsource_core`.
    pub(crate) krate: Path,
}

/// How a variant holds its fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `V { a: A }`.
    Named,
    /// `V(A, B)`.
    Tuple,
    /// `V`.
    Unit,
}

/// One variant of an event enum.
pub(crate) struct EventVariant<'a> {
    /// The variant's name.
    pub(crate) ident: &'a Ident,
    /// Named, tuple or unit.
    pub(crate) style: Style,
    /// The fields, in declaration order.
    pub(crate) fields: Vec<EventField<'a>>,
    /// What `#[event(...)]` says.
    pub(crate) attrs: EventAttrs,
    /// What `#[serde(...)]` says.
    pub(crate) serde: SerdeVariant,
    /// The handler method this variant dispatches to (`when_<snake_case>`).
    pub(crate) handler: Ident,
}

/// One field of an event variant.
pub(crate) struct EventField<'a> {
    /// The handler parameter and `match` binding: the field's name, or `field<N>` for a tuple
    /// field.
    pub(crate) binding: Ident,
    /// The field's type; the handler takes `&` of it.
    pub(crate) ty: &'a Type,
}

/// A `#[derive(Aggregate)]` struct.
pub(crate) struct AggregateStruct<'a> {
    /// The whole input, for spans.
    pub(crate) original: &'a DeriveInput,
    /// The struct's name.
    pub(crate) ident: &'a Ident,
    /// What `#[aggregate(...)]` says.
    pub(crate) attrs: AggregateAttrs,
    /// The path generated code names `eventsource_core` by: `#[aggregate(crate = "...")]`, else
    /// `::eventsource_core`.
    pub(crate) krate: Path,
}

impl<'a> EventEnum<'a> {
    /// Builds the view, reporting attribute mistakes; `None` when the input is not an enum.
    pub(crate) fn from_ast(errors: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => {
                errors.spanned(
                    data.struct_token,
                    "DomainEvent can only be derived for enums; wrap the event structs in an \
                     enum, like `enum AccountEvent { Opened(Opened), Deposited(Deposited) }`",
                );
                return None;
            }
            Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "DomainEvent can only be derived for enums; declare the events as the \
                     variants of an enum",
                );
                return None;
            }
        };
        let enum_attrs = attr::event_enum(errors, &input.attrs);
        let variants = data
            .variants
            .iter()
            .map(|variant| EventVariant::from_ast(errors, variant))
            .collect();
        Some(Self {
            original: input,
            ident: &input.ident,
            vis: &input.vis,
            handler_trait: handler_trait(&input.ident),
            views: views_module(&input.ident),
            variants,
            serde_representation: attr::serde_representation(&input.attrs),
            krate: enum_attrs.krate.unwrap_or_else(default_crate),
        })
    }
}

impl<'a> EventVariant<'a> {
    fn from_ast(errors: &mut Errors, variant: &'a Variant) -> Self {
        let style = match &variant.fields {
            Fields::Named(_) => Style::Named,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Unit => Style::Unit,
        };
        let fields = variant
            .fields
            .iter()
            .enumerate()
            .map(|(index, field)| EventField::from_ast(errors, index, field))
            .collect();
        Self {
            ident: &variant.ident,
            style,
            fields,
            attrs: attr::event_variant(errors, &variant.attrs),
            serde: attr::serde_variant(&variant.attrs),
            handler: handler_method(&variant.ident),
        }
    }

    /// The stable type name stored with each event: `#[event(name = "...")]`, else the
    /// variant's name.
    pub(crate) fn stored_name(&self) -> String {
        self.attrs
            .name
            .as_ref()
            .map_or_else(|| self.ident.unraw().to_string(), syn::LitStr::value)
    }

    /// The current schema version: `#[event(version = N)]`, else 1.
    pub(crate) fn version(&self) -> u32 {
        self.attrs
            .version
            .as_ref()
            .map_or(1, |version| version.value)
    }

    /// The name serde gives the variant: `#[serde(rename = "...")]`, else the variant's name.
    pub(crate) fn serde_name(&self) -> String {
        self.serde
            .rename
            .as_ref()
            .map_or_else(|| self.ident.unraw().to_string(), syn::LitStr::value)
    }
}

impl<'a> EventField<'a> {
    fn from_ast(errors: &mut Errors, index: usize, field: &'a Field) -> Self {
        attr::reject(
            errors,
            &field.attrs,
            EVENT,
            "#[event(...)] goes on the variants of the enum, not on their fields",
        );
        let binding = field
            .ident
            .clone()
            .unwrap_or_else(|| format_ident!("field{}", index));
        Self {
            binding,
            ty: &field.ty,
        }
    }
}

impl<'a> AggregateStruct<'a> {
    /// Builds the view, reporting attribute mistakes; `None` when the input is not a struct.
    pub(crate) fn from_ast(errors: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        match &input.data {
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject(
                        errors,
                        &field.attrs,
                        AGGREGATE,
                        "#[aggregate(...)] goes on the struct, not on its fields",
                    );
                }
            }
            Data::Enum(data) => {
                errors.spanned(
                    data.enum_token,
                    "Aggregate can only be derived for structs: an aggregate is a plain struct \
                     holding the state its events build; derive DomainEvent on the event enum",
                );
                return None;
            }
            Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "Aggregate can only be derived for structs: an aggregate is a plain struct \
                     holding the state its events build",
                );
                return None;
            }
        }
        let mut attrs = attr::aggregate(errors, &input.attrs);
        Some(Self {
            original: input,
            ident: &input.ident,
            krate: attrs.krate.take().unwrap_or_else(default_crate),
            attrs,
        })
    }

    /// The aggregate type name: `#[aggregate(name = "...")]`, else the struct's name in
    /// snake_case (`BankAccount` → `bank_account`).
    pub(crate) fn type_name(&self) -> String {
        self.attrs.name.as_ref().map_or_else(
            || snake_case(&self.ident.unraw().to_string()),
            syn::LitStr::value,
        )
    }
}

/// `::eventsource_core`, the path generated code uses unless `crate = "..."` says otherwise.
pub(crate) fn default_crate() -> Path {
    syn::parse_quote!(::eventsource_core)
}

/// The handler trait of an event enum: `AccountEvent` → `AccountEventHandler`.
pub(crate) fn handler_trait(event: &Ident) -> Ident {
    format_ident!("{}Handler", event.unraw(), span = event.span())
}

/// The module of an event enum's borrowed views: `AccountEvent` → `account_event`.
pub(crate) fn views_module(event: &Ident) -> Ident {
    let name = snake_case(&event.unraw().to_string());
    match name.as_str() {
        // Keywords that cannot be raw identifiers.
        "crate" | "self" | "super" => format_ident!("{}_", name, span = event.span()),
        _ if syn::parse_str::<Ident>(&name).is_err() => Ident::new_raw(&name, event.span()),
        _ => Ident::new(&name, event.span()),
    }
}

/// The handler method of a variant: `FundsDeposited` → `when_funds_deposited`.
///
/// The single place this mapping is written down. The method name is spanned on the variant,
/// the token it comes from.
pub(crate) fn handler_method(variant: &Ident) -> Ident {
    Ident::new(
        &format!("when_{}", snake_case(&variant.unraw().to_string())),
        variant.span(),
    )
}

/// `FundsDeposited` → `funds_deposited`, `HTTPRequestSent` → `http_request_sent`,
/// `V2Opened` → `v2_opened`.
///
/// A word starts at an uppercase letter that follows a lowercase letter or digit, or that
/// follows an uppercase letter and precedes a lowercase one (the end of an acronym).
pub(crate) fn snake_case(ident: &str) -> String {
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (index, &current) in chars.iter().enumerate() {
        if current.is_uppercase() {
            let previous = index.checked_sub(1).and_then(|before| chars.get(before));
            let next = chars.get(index + 1);
            let starts_word = match previous {
                Some(previous) if previous.is_lowercase() || previous.is_numeric() => true,
                Some(previous) if previous.is_uppercase() => {
                    next.is_some_and(|next| next.is_lowercase())
                }
                _ => false,
            };
            if starts_word {
                out.push('_');
            }
            out.extend(current.to_lowercase());
        } else {
            out.push(current);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_splits_words() {
        assert_eq!(snake_case("FundsDeposited"), "funds_deposited");
        assert_eq!(snake_case("Opened"), "opened");
        assert_eq!(snake_case("HTTPRequestSent"), "http_request_sent");
        assert_eq!(snake_case("V2Opened"), "v2_opened");
        assert_eq!(snake_case("AccountV2"), "account_v2");
        assert_eq!(snake_case("Funds_Deposited"), "funds_deposited");
        assert_eq!(snake_case("already_snake"), "already_snake");
        assert_eq!(snake_case("BankAccount"), "bank_account");
        assert_eq!(snake_case("A"), "a");
    }
}
