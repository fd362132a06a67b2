//! The words the derives read inside attributes, in one place (as in serde's `symbol.rs`).

use std::fmt::{self, Display};

use proc_macro2::Ident;
use syn::Path;

/// A keyword of `#[event(...)]`, `#[aggregate(...)]` or `#[serde(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Symbol(&'static str);

/// `#[event(...)]` on an event variant.
pub(crate) const EVENT: Symbol = Symbol("event");
/// `#[event(name = "...")]`, `#[aggregate(name = "...")]`: the stable stored name.
pub(crate) const NAME: Symbol = Symbol("name");
/// `#[event(version = N)]`: the current schema version.
pub(crate) const VERSION: Symbol = Symbol("version");
/// `#[event(upcast = path)]`: turns older stored versions into the current one.
pub(crate) const UPCAST: Symbol = Symbol("upcast");
/// `#[event(upcast_from(1 = V1, 2 = V2))]`: typed upcasters, one stored shape per version.
pub(crate) const UPCAST_FROM: Symbol = Symbol("upcast_from");
/// `#[event(alias = "...")]`: a former stored name that still decodes to this variant.
pub(crate) const ALIAS: Symbol = Symbol("alias");
/// `#[event(no_state_change)]`: the handler method gets an empty default body.
pub(crate) const NO_STATE_CHANGE: Symbol = Symbol("no_state_change");

/// `#[event(crate = "...")]`, `#[aggregate(crate = "...")]`: the path generated code names
/// `eventsource_core` by.
pub(crate) const CRATE: Symbol = Symbol("crate");

/// Every key `#[event(...)]` accepts on a variant, in the order error messages list them.
pub(crate) const EVENT_KEYS: &[Symbol] =
    &[NAME, ALIAS, VERSION, UPCAST, UPCAST_FROM, NO_STATE_CHANGE];

/// Every key `#[event(...)]` accepts on the enum itself.
pub(crate) const EVENT_ENUM_KEYS: &[Symbol] = &[CRATE];

/// `#[aggregate(...)]` on an aggregate struct.
pub(crate) const AGGREGATE: Symbol = Symbol("aggregate");
/// `#[aggregate(event = Type)]`: the aggregate's event enum.
pub(crate) const EVENT_TYPE: Symbol = Symbol("event");
/// `#[aggregate(snapshot = N)]`: the snapshot schema version.
pub(crate) const SNAPSHOT: Symbol = Symbol("snapshot");

/// Every key `#[aggregate(...)]` accepts, in the order error messages list them.
pub(crate) const AGGREGATE_KEYS: &[Symbol] = &[NAME, EVENT_TYPE, SNAPSHOT, CRATE];

/// `#[serde(...)]`, read to find the enum representation and renamed variants.
pub(crate) const SERDE: Symbol = Symbol("serde");
/// `#[serde(tag = "...")]`: internal tagging.
pub(crate) const TAG: Symbol = Symbol("tag");
/// `#[serde(content = "...")]`: adjacent tagging.
pub(crate) const CONTENT: Symbol = Symbol("content");
/// `#[serde(untagged)]`: no tag at all.
pub(crate) const UNTAGGED: Symbol = Symbol("untagged");
/// `#[serde(rename_all = "...")]`: renames every variant.
pub(crate) const RENAME_ALL: Symbol = Symbol("rename_all");
/// `#[serde(rename = "...")]` on a variant.
pub(crate) const RENAME: Symbol = Symbol("rename");
/// `#[serde(rename(deserialize = "..."))]`.
pub(crate) const DESERIALIZE: Symbol = Symbol("deserialize");

/// The container-level serde keys that change the enum representation the stored payload
/// relies on.
pub(crate) const SERDE_REPRESENTATION_KEYS: &[Symbol] = &[TAG, CONTENT, UNTAGGED, RENAME_ALL];

impl Symbol {
    /// The keyword as written.
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}

/// Lists keys for an error message: "`name`, `version`, `upcast` or `no_state_change`".
pub(crate) fn list(keys: &[Symbol]) -> String {
    let mut out = String::new();
    for (index, key) in keys.iter().enumerate() {
        if index > 0 {
            out.push_str(if index + 1 == keys.len() {
                " or "
            } else {
                ", "
            });
        }
        out.push('`');
        out.push_str(key.as_str());
        out.push('`');
    }
    out
}
