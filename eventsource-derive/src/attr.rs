//! Reads `#[event(...)]`, `#[aggregate(...)]` and the relevant parts of `#[serde(...)]` with
//! [`Attribute::parse_nested_meta`].
//!
//! Semantic mistakes (unknown or repeated keys, values of the wrong kind) are recorded in
//! [`Errors`] and parsing goes on, so one compile reports every mistake in an attribute; only a
//! syntax error (say, `name =` with nothing after it) stops reading that attribute.

use proc_macro2::TokenTree;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, ExprPath, Lit, LitInt, LitStr, Path, Token, Type};

use crate::check::Errors;
use crate::symbol::{
    self, AGGREGATE, AGGREGATE_KEYS, ALIAS, CRATE, DESERIALIZE, EVENT, EVENT_ENUM_KEYS, EVENT_KEYS,
    EVENT_TYPE, NAME, NO_STATE_CHANGE, RENAME, SERDE, SERDE_REPRESENTATION_KEYS, SNAPSHOT, Symbol,
    UNTAGGED, UPCAST, UPCAST_FROM, VERSION,
};

/// A positive integer given to `version` or `snapshot`, with its key for spans.
pub(crate) struct Version {
    /// The key as written.
    pub(crate) key: Path,
    /// Its value, at least 1.
    pub(crate) value: u32,
}

/// A key's value together with the key itself, for errors that point at the key.
pub(crate) struct Keyed<T> {
    /// The key as written (`upcast`).
    pub(crate) key: Path,
    /// The value given to it.
    pub(crate) value: T,
}

/// Everything `#[event(...)]` says about one variant.
#[derive(Default)]
pub(crate) struct EventAttrs {
    /// `name = "..."`: the stable stored type name.
    pub(crate) name: Option<LitStr>,
    /// `version = N`: the current schema version.
    pub(crate) version: Option<Version>,
    /// `upcast = path`: the upcaster from older versions.
    pub(crate) upcast: Option<Keyed<ExprPath>>,
    /// `upcast_from(1 = V1, ...)`: the stored shape of each older version, in the order given.
    pub(crate) upcast_from: Option<Keyed<Vec<(LitInt, Type)>>>,
    /// `alias = "..."`, repeatable: former stored names of this variant.
    pub(crate) aliases: Vec<LitStr>,
    /// `no_state_change`: the key as written.
    pub(crate) no_state_change: Option<Path>,
}

/// Everything `#[event(...)]` on the enum itself says.
#[derive(Default)]
pub(crate) struct EventEnumAttrs {
    /// `crate = "..."`: the path to `eventsource_core`.
    pub(crate) krate: Option<Path>,
}

/// Everything `#[aggregate(...)]` says about the aggregate struct.
#[derive(Default)]
pub(crate) struct AggregateAttrs {
    /// `crate = "..."`: the path to `eventsource_core`.
    pub(crate) krate: Option<Path>,
    /// Whether any `#[aggregate]` attribute was present.
    pub(crate) present: bool,
    /// `name = "..."`: the aggregate type name.
    pub(crate) name: Option<LitStr>,
    /// `event = Type`: the event enum.
    pub(crate) event: Option<Type>,
    /// Whether `event` was given at all, even with a value that was rejected.
    pub(crate) event_given: bool,
    /// `snapshot = N`: the snapshot schema version.
    pub(crate) snapshot: Option<Version>,
}

/// The variant-level `#[serde(...)]` keys that matter for decoding.
#[derive(Default)]
pub(crate) struct SerdeVariant {
    /// `rename = "..."` or `rename(deserialize = "...")`: the name serde reads.
    pub(crate) rename: Option<LitStr>,
    /// `untagged`, as written.
    pub(crate) untagged: Option<Path>,
}

/// Reads every `#[event(...)]` attribute of one variant.
pub(crate) fn event_variant(errors: &mut Errors, attrs: &[Attribute]) -> EventAttrs {
    let mut out = EventAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path() == EVENT) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path == NAME {
                if let Some(name) =
                    string_value(errors, &meta, "#[event(name = \"funds-deposited\")]")?
                {
                    set(errors, &mut out.name, &meta.path, EVENT, name);
                }
            } else if meta.path == VERSION {
                if let Some(version) =
                    version_value(errors, &meta, "#[event(version = 2)]", "schema versions")?
                {
                    set(errors, &mut out.version, &meta.path, EVENT, version);
                }
            } else if meta.path == UPCAST {
                let value: Expr = meta.value()?.parse()?;
                if let Expr::Path(path) = value {
                    let keyed = Keyed {
                        key: meta.path.clone(),
                        value: path,
                    };
                    set(errors, &mut out.upcast, &meta.path, EVENT, keyed);
                } else {
                    errors.spanned(
                        value,
                        "`upcast` must be a path to a function \
                         `fn(u32, serde_json::Value) -> Result<serde_json::Value, UpcastError>`, \
                         like `#[event(version = 2, upcast = upcast_deposited)]`",
                    );
                }
            } else if meta.path == ALIAS {
                if let Some(alias) = string_value(errors, &meta, "#[event(alias = \"deposited\")]")?
                {
                    out.aliases.push(alias);
                }
            } else if meta.path == UPCAST_FROM {
                let content;
                syn::parenthesized!(content in meta.input);
                let entries = content.parse_terminated(
                    |input| {
                        let version: LitInt = input.parse()?;
                        input.parse::<Token![=]>()?;
                        let ty: Type = input.parse()?;
                        Ok((version, ty))
                    },
                    Token![,],
                )?;
                let keyed = Keyed {
                    key: meta.path.clone(),
                    value: entries.into_iter().collect(),
                };
                set(errors, &mut out.upcast_from, &meta.path, EVENT, keyed);
            } else if meta.path == CRATE {
                skip_value(&meta)?;
                errors.spanned(
                    &meta.path,
                    "`crate` goes on the enum, not on a variant: write \
                     `#[event(crate = \"...\")]` above the enum",
                );
            } else if meta.path == NO_STATE_CHANGE {
                if has_value(&meta) {
                    skip_value(&meta)?;
                    errors.push(meta.error(
                        "`no_state_change` takes no value: write `#[event(no_state_change)]`",
                    ));
                } else {
                    set(
                        errors,
                        &mut out.no_state_change,
                        &meta.path,
                        EVENT,
                        meta.path.clone(),
                    );
                }
            } else {
                unknown_key(errors, &meta, EVENT, EVENT_KEYS)?;
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// Reads every `#[event(...)]` attribute on the enum itself: only `crate` belongs there.
pub(crate) fn event_enum(errors: &mut Errors, attrs: &[Attribute]) -> EventEnumAttrs {
    let mut out = EventEnumAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path() == EVENT) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path == CRATE {
                if let Some(path) = crate_value(errors, &meta, EVENT)? {
                    set(errors, &mut out.krate, &meta.path, EVENT, path);
                }
            } else if EVENT_KEYS.iter().any(|key| meta.path == *key) {
                skip_value(&meta)?;
                errors.spanned(
                    &meta.path,
                    format_args!(
                        "`{}` goes on the variants of the enum, not on the enum itself; \
                         on the enum, #[event(...)] takes only {}",
                        display_path(&meta.path),
                        symbol::list(EVENT_ENUM_KEYS)
                    ),
                );
            } else {
                unknown_key(errors, &meta, EVENT, EVENT_ENUM_KEYS)?;
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// Reads every `#[aggregate(...)]` attribute of the aggregate struct.
pub(crate) fn aggregate(errors: &mut Errors, attrs: &[Attribute]) -> AggregateAttrs {
    let mut out = AggregateAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path() == AGGREGATE) {
        out.present = true;
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path == NAME {
                if let Some(name) = string_value(errors, &meta, "#[aggregate(name = \"account\")]")?
                {
                    set(errors, &mut out.name, &meta.path, AGGREGATE, name);
                }
            } else if meta.path == EVENT_TYPE {
                out.event_given = true;
                let input = meta.value()?;
                if input.peek(LitStr) {
                    let quoted: LitStr = input.parse()?;
                    errors.spanned(
                        quoted,
                        "`event` takes the event enum's type, not a string: \
                         write it without quotes, like `#[aggregate(event = AccountEvent)]`",
                    );
                } else {
                    let ty: Type = input.parse()?;
                    if matches!(ty, Type::Path(_)) {
                        set(errors, &mut out.event, &meta.path, AGGREGATE, ty);
                    } else {
                        errors.spanned(
                            ty,
                            "`event` must name the event enum, \
                             like `#[aggregate(event = AccountEvent)]`",
                        );
                    }
                }
            } else if meta.path == CRATE {
                if let Some(path) = crate_value(errors, &meta, AGGREGATE)? {
                    set(errors, &mut out.krate, &meta.path, AGGREGATE, path);
                }
            } else if meta.path == SNAPSHOT {
                if let Some(version) = version_value(
                    errors,
                    &meta,
                    "#[aggregate(snapshot = 1)]",
                    "snapshot versions",
                )? {
                    set(errors, &mut out.snapshot, &meta.path, AGGREGATE, version);
                }
            } else {
                unknown_key(errors, &meta, AGGREGATE, AGGREGATE_KEYS)?;
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// The enum-level `#[serde(...)]` keys that change the enum representation (`tag`, `content`,
/// `untagged`, `rename_all`), as written.
///
/// Malformed serde attributes are left to serde's own derive to report.
pub(crate) fn serde_representation(attrs: &[Attribute]) -> Vec<Path> {
    let mut found = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path() == SERDE) {
        let _ = attr.parse_nested_meta(|meta| {
            if SERDE_REPRESENTATION_KEYS
                .iter()
                .any(|key| meta.path == *key)
            {
                found.push(meta.path.clone());
            }
            skip_value(&meta)
        });
    }
    found
}

/// The variant-level `#[serde(...)]` keys that matter for decoding.
///
/// Malformed serde attributes are left to serde's own derive to report.
pub(crate) fn serde_variant(attrs: &[Attribute]) -> SerdeVariant {
    let mut out = SerdeVariant::default();
    for attr in attrs.iter().filter(|attr| attr.path() == SERDE) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path == RENAME {
                if meta.input.peek(Token![=]) {
                    if let Ok(name) = meta.value()?.parse::<LitStr>() {
                        out.rename = Some(name);
                    }
                } else if meta.input.peek(syn::token::Paren) {
                    return meta.parse_nested_meta(|inner| {
                        if inner.path == DESERIALIZE
                            && let Ok(name) = inner.value()?.parse::<LitStr>()
                        {
                            out.rename = Some(name);
                        }
                        skip_value(&inner)
                    });
                }
            } else if meta.path == UNTAGGED {
                out.untagged = Some(meta.path.clone());
            }
            skip_value(&meta)
        });
    }
    out
}

/// Reports every attribute named `name` in `attrs` as misplaced.
pub(crate) fn reject(errors: &mut Errors, attrs: &[Attribute], name: Symbol, message: &str) {
    for attr in attrs.iter().filter(|attr| attr.path() == name) {
        errors.spanned(attr, message);
    }
}

/// Stores a key's value, or reports the key when it was already given.
fn set<T>(errors: &mut Errors, slot: &mut Option<T>, key: &Path, attr: Symbol, value: T) {
    if slot.is_some() {
        errors.spanned(
            key,
            format_args!(
                "duplicate key `{}` in #[{attr}(...)]: give each key once",
                display_path(key)
            ),
        );
    } else {
        *slot = Some(value);
    }
}

/// Reads `= "..."` and checks it is a non-empty string literal.
fn string_value(
    errors: &mut Errors,
    meta: &ParseNestedMeta<'_>,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let key = display_path(&meta.path);
    let value: Expr = meta.value()?.parse()?;
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            if lit.value().is_empty() {
                errors.spanned(
                    lit,
                    format_args!("`{key}` must not be empty: it is stored, so pick a stable name, like `{example}`"),
                );
                Ok(None)
            } else {
                Ok(Some(lit))
            }
        }
        other => {
            errors.spanned(
                other,
                format_args!("`{key}` must be a string literal, like `{example}`"),
            );
            Ok(None)
        }
    }
}

/// Reads `= "path"` and parses the string as the path to `eventsource_core`, as serde's
/// `#[serde(crate = "...")]` does.
fn crate_value(
    errors: &mut Errors,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
) -> syn::Result<Option<Path>> {
    let example = format!("#[{attr}(crate = \"::my_app::eventsource_core\")]");
    let Some(lit) = string_value(errors, meta, &example)? else {
        return Ok(None);
    };
    if let Ok(path) = lit.parse::<Path>() {
        return Ok(Some(path));
    }
    errors.spanned(
        &lit,
        format_args!(
            "`crate` must be the path `eventsource_core` is reachable by, in a string, \
             like `{example}`"
        ),
    );
    Ok(None)
}

/// Reads `= N` and checks it is an integer literal in `1..=u32::MAX`.
fn version_value(
    errors: &mut Errors,
    meta: &ParseNestedMeta<'_>,
    example: &str,
    what: &str,
) -> syn::Result<Option<Version>> {
    let key = display_path(&meta.path);
    let value: Expr = meta.value()?.parse()?;
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = value
    else {
        errors.spanned(
            value,
            format_args!("`{key}` must be an integer literal, like `{example}`"),
        );
        return Ok(None);
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            errors.spanned(
                lit,
                format_args!("{what} start at 1: write `{key} = 1` or higher, like `{example}`"),
            );
            Ok(None)
        }
        Ok(value) => Ok(Some(Version {
            key: meta.path.clone(),
            value,
        })),
        Err(_) => {
            errors.spanned(
                lit,
                format_args!("`{key}` must be an integer from 1 to {}", u32::MAX),
            );
            Ok(None)
        }
    }
}

/// Reports an unknown key by name, lists the valid ones, and skips its value.
fn unknown_key(
    errors: &mut Errors,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
    valid: &[Symbol],
) -> syn::Result<()> {
    errors.spanned(
        &meta.path,
        format_args!(
            "unknown key `{}` in #[{attr}(...)]: expected {}",
            display_path(&meta.path),
            symbol::list(valid)
        ),
    );
    skip_value(meta)
}

/// Whether the key is followed by a value (`= ...` or `(...)`) rather than `,` or the end.
fn has_value(meta: &ParseNestedMeta<'_>) -> bool {
    !meta.input.is_empty() && !meta.input.peek(Token![,])
}

/// Skips whatever follows a key up to the next `,`.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    while has_value(meta) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// A key path as the user wrote it, for messages.
fn display_path(path: &Path) -> String {
    let mut out = String::new();
    if path.leading_colon.is_some() {
        out.push_str("::");
    }
    for (index, segment) in path.segments.iter().enumerate() {
        if index > 0 {
            out.push_str("::");
        }
        out.push_str(&segment.ident.to_string());
    }
    out
}
