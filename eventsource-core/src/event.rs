//! Domain events: stable type names, schema versions, encoding and upcasting.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The name and current schema version of one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType {
    /// Stable name stored with every event of this type.
    pub name: &'static str,
    /// Current schema version (1 unless raised with `#[event(version = N)]`).
    pub version: u32,
}

/// A domain event: a fact that happened, in the past tense.
///
/// Usually derived. `#[derive(DomainEvent)]` on an enum fixes each variant's stable type name
/// (the variant name, or `#[event(name = "...")]`) and schema version (`#[event(version = N)]`,
/// default 1), and generates [`encode`](DomainEvent::encode)/[`decode`](DomainEvent::decode):
/// the stored payload is the variant's fields as JSON, without the Rust enum tag, so renaming a
/// variant never breaks stored data as long as its `name` stays.
///
/// An older stored schema version is turned into the current one on read, either by typed
/// upcasters chained across versions, `#[event(version = 3, upcast_from(1 = V1, 2 = V2))]`
/// (`V1` converts into `V2` and `V2` into the enum with `From`/`TryFrom`), or by one JSON
/// upcaster, `#[event(version = 2, upcast = path::to_fn)]`, a
/// `fn(from_version: u32, payload: serde_json::Value) -> Result<serde_json::Value, UpcastError>`.
/// A renamed event keeps decoding under its former stored names with `#[event(alias = "...")]`.
///
/// ```
/// use eventsource_core::{DomainEvent, UpcastError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[event(name = "funds-deposited", version = 2, upcast = deposit_v1)]
///     FundsDeposited { cents: u64 },
/// }
///
/// // Version 1 stored `amount` in whole units.
/// fn deposit_v1(from: u32, mut payload: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
///     let amount = payload["amount"].as_u64().ok_or_else(|| UpcastError::new(from, "no amount"))?;
///     payload = serde_json::json!({ "cents": amount * 100 });
///     Ok(payload)
/// }
///
/// let old = AccountEvent::decode("funds-deposited", 1, serde_json::json!({ "amount": 3 }))?;
/// assert!(matches!(old, AccountEvent::FundsDeposited { cents: 300 }));
/// assert_eq!(old.event_type(), "funds-deposited");
/// assert_eq!(old.schema_version(), 2);
/// # Ok::<(), eventsource_core::DecodeError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "`{Self}` needs `#[derive(DomainEvent)]`",
    note = "add `#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]` to the event enum \
            (`use eventsource_core::DomainEvent;`): it implements `DomainEvent` and generates \
            the `<Enum>Handler` trait the aggregate implements"
)]
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// Every event type this enum can hold, with its current schema version.
    const EVENT_TYPES: &'static [EventType];

    /// Former stored names that still decode, each with the current name it maps to
    /// (`#[event(alias = "...")]`).
    const EVENT_ALIASES: &'static [(&'static str, &'static str)] = &[];

    /// The stable type name of this event.
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's type.
    fn schema_version(&self) -> u32;

    /// The payload to store: the event's fields as JSON.
    ///
    /// # Errors
    ///
    /// Fails only when the event's `Serialize` implementation fails.
    fn encode(&self) -> Result<serde_json::Value, serde_json::Error>;

    /// Rebuilds an event from its stored type name, schema version and payload, upcasting older
    /// versions first.
    ///
    /// # Errors
    ///
    /// See [`DecodeError`]'s variants.
    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError>;

    /// Whether `event_type` is a stored type name this enum decodes, current or former (an
    /// alias). Typed handlers skip other events without decoding them.
    ///
    /// ```
    /// # use eventsource_core::DomainEvent;
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, DomainEvent)]
    /// # enum AccountEvent { #[event(name = "account-opened")] Opened }
    /// assert!(AccountEvent::knows("account-opened"));
    /// assert!(!AccountEvent::knows("Opened"));
    /// ```
    #[must_use]
    fn knows(event_type: &str) -> bool {
        Self::EVENT_TYPES
            .iter()
            .any(|known| known.name == event_type)
            || Self::EVENT_ALIASES
                .iter()
                .any(|(alias, _)| *alias == event_type)
    }
}

/// Why a stored payload could not become a domain event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No variant has this stored type name: the event was written by other code, or a variant
    /// was removed.
    #[error("unknown event type `{event_type}`")]
    UnknownType {
        /// The stored type name.
        event_type: String,
    },
    /// The stored schema version is newer than the code, or older without an upcaster.
    #[error(
        "event type `{event_type}` has no decoder for schema version {stored} (current is {current})"
    )]
    UnsupportedVersion {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        stored: u32,
        /// The schema version this code writes.
        current: u32,
    },
    /// The upcaster rejected the stored payload.
    #[error("upcasting `{event_type}` failed")]
    Upcast {
        /// The stored type name.
        event_type: String,
        /// The upcaster's reason.
        #[source]
        source: UpcastError,
    },
    /// The payload does not deserialize into the variant's fields.
    #[error("payload of `{event_type}` does not match its fields")]
    Payload {
        /// The stored type name.
        event_type: String,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// An upcaster could not turn an old payload into the current shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot upcast from schema version {from_version}: {reason}")]
pub struct UpcastError {
    /// The stored schema version.
    pub from_version: u32,
    /// Why.
    pub reason: String,
}

impl UpcastError {
    /// Creates an upcast error.
    pub fn new(from_version: u32, reason: impl Into<String>) -> Self {
        Self {
            from_version,
            reason: reason.into(),
        }
    }
}

/// Deserializes a payload stored with an older schema version into its typed shape.
#[doc(hidden)]
pub fn stored_shape<T: DeserializeOwned>(
    event_type: &str,
    payload: serde_json::Value,
) -> Result<T, DecodeError> {
    serde_json::from_value(payload).map_err(|source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    })
}

/// One typed upcast step: the shape of `from_version` into the next one (or the event).
#[doc(hidden)]
pub fn upcast_step<S, T>(event_type: &str, from_version: u32, value: S) -> Result<T, DecodeError>
where
    T: TryFrom<S>,
    T::Error: std::fmt::Display,
{
    T::try_from(value).map_err(|reason| DecodeError::Upcast {
        event_type: event_type.to_owned(),
        source: UpcastError::new(from_version, reason.to_string()),
    })
}

/// Strips serde's external enum tag: `{"Variant": {...}}` becomes `{...}` and `"Variant"`
/// becomes `null`.
#[doc(hidden)]
#[must_use]
pub fn strip_tag(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .map_or(serde_json::Value::Null, |(_, inner)| inner),
        serde_json::Value::String(_) => serde_json::Value::Null,
        other => other,
    }
}

/// Puts serde's external enum tag back and deserializes.
///
/// The tag is presented to `E`'s `Deserialize` directly ([`Tagged`]) rather than by wrapping
/// the payload in a one-entry JSON object: decoding an aggregate's events on load allocates
/// nothing for the tag.
#[doc(hidden)]
pub fn with_tag<E: DeserializeOwned>(
    event_type: &str,
    serde_variant: &str,
    unit: bool,
    payload: serde_json::Value,
) -> Result<E, DecodeError> {
    let payload = if unit {
        serde_json::Value::Null
    } else {
        payload
    };
    E::deserialize(Tagged {
        variant: serde_variant,
        payload,
    })
    .map_err(|source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    })
}

/// An externally tagged enum value: the variant's name beside its content, as serde_json
/// would read `{"<variant>": <content>}`.
struct Tagged<'a> {
    variant: &'a str,
    payload: serde_json::Value,
}

impl<'de> serde::Deserializer<'de> for Tagged<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> serde::de::EnumAccess<'de> for Tagged<'_> {
    type Error = serde_json::Error;
    type Variant = TaggedContent;

    fn variant_seed<V: serde::de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, TaggedContent), serde_json::Error> {
        let variant = seed.deserialize(
            serde::de::value::StrDeserializer::<serde_json::Error>::new(self.variant),
        )?;
        Ok((variant, TaggedContent(self.payload)))
    }
}

/// The content of a [`Tagged`] value.
struct TaggedContent(serde_json::Value);

impl<'de> serde::de::VariantAccess<'de> for TaggedContent {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), serde_json::Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: serde::de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, serde_json::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        serde::Deserializer::deserialize_seq(self.0, visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        serde::Deserializer::deserialize_struct(self.0, "", fields, visitor)
    }
}
