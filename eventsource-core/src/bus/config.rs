//! Choosing the adapter from configuration or the environment.

use super::memory::{DEFAULT_MAX_HISTORY, InMemoryBus};

/// Which adapter a [`BusConfig`] asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterKind {
    /// [`InMemoryBus`] (the default).
    #[default]
    Memory,
    /// The Redis adapter of `eventsource-redis`.
    Redis,
}

/// Why the bus configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable holds a value it cannot hold.
    #[error("{variable}={value:?} is not valid: expected {expected}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it may hold.
        expected: &'static str,
    },
    /// The Redis adapter was chosen without `REDIS_URL`.
    #[error("EVENT_BUS_ADAPTER=redis needs REDIS_URL")]
    MissingRedisUrl,
}

/// The bus configuration: which adapter, and its settings.
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `EVENT_BUS_ADAPTER` | `memory` or `redis` | `memory` |
/// | `REDIS_URL` | the Redis adapter's server | required for `redis` |
/// | `EVENT_BUS_MEMORY_MAX_HISTORY` | events kept per topic by [`InMemoryBus`] | 1000 |
///
/// ```
/// # use eventsource_core::bus::{AdapterKind, BusConfig};
/// let config = BusConfig::from_lookup(|name| match name {
///     "EVENT_BUS_ADAPTER" => Some("redis".to_owned()),
///     "REDIS_URL" => Some("redis://127.0.0.1/".to_owned()),
///     _ => None,
/// })?;
/// assert_eq!(config.adapter, AdapterKind::Redis);
/// assert_eq!(BusConfig::from_lookup(|_| None)?.adapter, AdapterKind::Memory);
/// # Ok::<(), eventsource_core::bus::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusConfig {
    /// The adapter.
    pub adapter: AdapterKind,
    /// The Redis server, for [`AdapterKind::Redis`].
    pub redis_url: Option<String>,
    /// Events kept per topic by the in-memory adapter.
    pub memory_max_history: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            adapter: AdapterKind::Memory,
            redis_url: None,
            memory_max_history: DEFAULT_MAX_HISTORY,
        }
    }
}

impl BusConfig {
    /// Reads the variables of the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup` (a map in tests, the environment in
    /// [`from_env`](Self::from_env)).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(value) = lookup("EVENT_BUS_ADAPTER") {
            config.adapter = match value.trim().to_ascii_lowercase().as_str() {
                "" | "memory" => AdapterKind::Memory,
                "redis" => AdapterKind::Redis,
                _ => {
                    return Err(ConfigError::Invalid {
                        variable: "EVENT_BUS_ADAPTER",
                        value,
                        expected: "memory or redis",
                    });
                }
            };
        }
        config.redis_url = lookup("REDIS_URL").filter(|url| !url.is_empty());
        if let Some(value) = lookup("EVENT_BUS_MEMORY_MAX_HISTORY") {
            config.memory_max_history = value.trim().parse().map_err(|_| ConfigError::Invalid {
                variable: "EVENT_BUS_MEMORY_MAX_HISTORY",
                value,
                expected: "a whole number of events",
            })?;
        }
        if config.adapter == AdapterKind::Redis && config.redis_url.is_none() {
            return Err(ConfigError::MissingRedisUrl);
        }
        Ok(config)
    }

    /// The in-memory bus this configuration describes (whatever the adapter).
    #[must_use]
    pub fn memory_bus(&self) -> InMemoryBus {
        InMemoryBus::with_max_history(self.memory_max_history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<BusConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        BusConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn variables_choose_the_adapter_and_its_settings() {
        let memory = config(&[("EVENT_BUS_MEMORY_MAX_HISTORY", "5")]).unwrap();
        assert_eq!(memory.adapter, AdapterKind::Memory);
        assert_eq!(memory.memory_max_history, 5);
        let redis = config(&[("EVENT_BUS_ADAPTER", "Redis"), ("REDIS_URL", "redis://h/")]).unwrap();
        assert_eq!(redis.adapter, AdapterKind::Redis);
        assert_eq!(redis.redis_url.as_deref(), Some("redis://h/"));
        assert_eq!(config(&[]).unwrap(), BusConfig::default());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            config(&[("EVENT_BUS_ADAPTER", "kafka")]),
            Err(ConfigError::Invalid {
                variable: "EVENT_BUS_ADAPTER",
                ..
            })
        ));
        assert!(matches!(
            config(&[("EVENT_BUS_MEMORY_MAX_HISTORY", "many")]),
            Err(ConfigError::Invalid { .. })
        ));
        assert_eq!(
            config(&[("EVENT_BUS_ADAPTER", "redis")]),
            Err(ConfigError::MissingRedisUrl)
        );
    }

    #[tokio::test]
    async fn the_memory_bus_keeps_the_configured_history() {
        use crate::bus::{BusEvent, EventBus as _};
        let bus = config(&[("EVENT_BUS_MEMORY_MAX_HISTORY", "1")])
            .unwrap()
            .memory_bus();
        for n in 0..3 {
            bus.publish(BusEvent::new("t", n.into())).await.unwrap();
        }
        assert_eq!(bus.history("t").len(), 1);
    }
}
