//! Every Redis key this crate touches: the formats are a wire contract, documented on
//! [`Keys`].

use std::fmt::Write as _;

use eventsource_core::TenantId;
use eventsource_core::bus::Priority;

/// Builds key names under a common prefix (`es` unless changed): the crate's wire contract.
///
/// Keys carry a hash tag (`{…}`) so that everything belonging to one tenant lands in one slot of
/// a Redis Cluster: a stream, its dead-letter and requeue streams live together, and the Lua
/// scripts that touch two of them at once stay single-slot.
///
/// | key | holds |
/// |---|---|
/// | `es:{<tenant>}:events` | the tenant's events ([`PerTenant`](crate::PerTenant), the default) |
/// | `es:{<tenant>}:type:<aggregate type>` | one aggregate type's events ([`PerAggregateType`](crate::PerAggregateType)) |
/// | `es:{<tenant>}:event:<event type>` | one event type's events ([`PerEventType`](crate::PerEventType)) |
/// | `<stream key>:dlq:<group>` | a group's dead letters for that stream |
/// | `<stream key>:requeue:<group>` | dead letters sent back to that group |
/// | `es:relay:{<name>}:lease` | the relay lease (one shard, the default) |
/// | `es:relay:{<name>}:shard:<i>-of-<n>:lease` | the lease of shard `i` of `n` ([`RelayOptions::with_shards`](crate::RelayOptions::with_shards)) |
/// | `es:registry:{tenants}` | the set of tenant ids the relay published to (tenant discovery) |
/// | `es:bus:{<name>}:<priority>` | a bus's events of one priority (`critical` … `low`) |
/// | `es:bus:{<name>}:topic:<topic>` | a bus topic's Pub/Sub channel (live subscribers) |
/// | `es:jobs:{<queue>}:…` | a job queue: its sets, job hashes and events ([`crate::jobs`]) |
///
/// Tenant ids and names are escaped (`%`, `{`, `}`, `:` become `%25`, `%7B`, `%7D`, `%3A`) so a
/// tenant can never break out of its hash tag or collide with another key. The keys derived
/// from a stream key come from [`dead_letter_stream`](crate::dead_letter_stream) and
/// [`requeue_stream`](crate::requeue_stream); a relay's checkpoint name from
/// [`relay_checkpoint`](crate::relay_checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("es")
    }
}

impl Keys {
    /// Keys under `prefix` (escaped like tenant ids); tests use a unique prefix each.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: escape(prefix),
        }
    }

    /// The prefix in front of every key.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of all of a tenant's events: `es:{<tenant>}:events`.
    #[must_use]
    pub fn tenant_stream(&self, tenant: &TenantId) -> String {
        format!("{}:{{{}}}:events", self.prefix, escape(tenant.as_str()))
    }

    /// The stream of one aggregate type within a tenant: `es:{<tenant>}:type:<type>`.
    #[must_use]
    pub fn aggregate_type_stream(&self, tenant: &TenantId, aggregate_type: &str) -> String {
        format!(
            "{}:{{{}}}:type:{}",
            self.prefix,
            escape(tenant.as_str()),
            escape(aggregate_type)
        )
    }

    /// The stream of one event type within a tenant: `es:{<tenant>}:event:<type>`.
    #[must_use]
    pub fn event_type_stream(&self, tenant: &TenantId, event_type: &str) -> String {
        format!(
            "{}:{{{}}}:event:{}",
            self.prefix,
            escape(tenant.as_str()),
            escape(event_type)
        )
    }

    /// The stream of a bus's events of one priority: `es:bus:{<name>}:<priority>`.
    ///
    /// A bus's keys share the hash tag `{<name>}`, so one Redis Cluster slot holds them.
    #[must_use]
    pub fn bus_stream(&self, name: &str, priority: Priority) -> String {
        let priority = match priority {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        };
        format!("{}:bus:{{{}}}:{priority}", self.prefix, escape(name))
    }

    /// The Pub/Sub channel of a bus topic: `es:bus:{<name>}:topic:<topic>`.
    #[must_use]
    pub fn bus_channel(&self, name: &str, topic: &str) -> String {
        format!("{}:topic:{topic}", self.bus_channel_base(name))
    }

    /// The `PSUBSCRIBE` glob of every topic of a bus, `es:bus:{<name>}:topic:*`, with the
    /// glob's special characters of prefix and name escaped.
    #[must_use]
    pub fn bus_channel_glob(&self, name: &str) -> String {
        let mut glob = String::new();
        for c in self.bus_channel_base(name).chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(c);
        }
        glob.push_str(":topic:*");
        glob
    }

    /// The mark a bus instance keeps alive while it has broadcast subscriptions:
    /// `es:bus:{<name>}:instance:<instance>`.
    #[must_use]
    pub fn bus_instance(&self, name: &str, instance: &str) -> String {
        format!("{}:instance:{instance}", self.bus_channel_base(name))
    }

    fn bus_channel_base(&self, name: &str) -> String {
        format!("{}:bus:{{{}}}", self.prefix, escape(name))
    }

    /// The lease that lets one relay instance named `name` publish at a time.
    #[must_use]
    pub fn relay_lease(&self, name: &str) -> String {
        format!("{}:relay:{{{}}}:lease", self.prefix, escape(name))
    }

    /// The lease of shard `index` of `count` of the relay named `name`:
    /// `es:relay:{<name>}:shard:<index>-of-<count>:lease`. With one shard the relay uses
    /// [`relay_lease`](Self::relay_lease), as before shards existed.
    #[must_use]
    pub fn relay_shard_lease(&self, name: &str, index: u32, count: u32) -> String {
        if count <= 1 {
            return self.relay_lease(name);
        }
        format!(
            "{}:relay:{{{}}}:shard:{index}-of-{count}:lease",
            self.prefix,
            escape(name)
        )
    }

    /// The tenant registry, `es:registry:{tenants}`: a set of the tenant ids the relay has
    /// published to, written before a tenant's first entry. One key, so one slot on a cluster;
    /// runners read it with `SCARD`/`SMEMBERS`, never `KEYS` or `SCAN`.
    #[must_use]
    pub fn tenant_registry(&self) -> String {
        format!("{}:registry:{{tenants}}", self.prefix)
    }
}

impl Keys {
    /// The front of every key of the job queue `queue`: `es:jobs:{<queue>}:`. The queue name is
    /// the hash tag, so all of a queue's keys (and the job hashes its Lua scripts build from this
    /// front) live in one Redis Cluster slot.
    #[must_use]
    pub fn job_queue(&self, queue: &str) -> String {
        format!("{}:jobs:{{{}}}:", self.prefix, escape(queue))
    }
}

/// The dead-letter stream of `group` for `stream_key`: `<stream key>:dlq:<group>`.
///
/// Derived from the stream key so that it shares the stream's hash tag.
#[must_use]
pub fn dead_letter_stream(stream_key: &str, group: &str) -> String {
    format!("{stream_key}:dlq:{}", escape(group))
}

/// The stream into which dead letters of `group` are requeued: `<stream key>:requeue:<group>`.
///
/// Requeued entries never go back into the event stream itself: an entry added there with a
/// fresh id would sort after every future log position and make Redis reject the relay's
/// next publications.
#[must_use]
pub fn requeue_stream(stream_key: &str, group: &str) -> String {
    format!("{stream_key}:requeue:{}", escape(group))
}

/// The checkpoint name under which a relay called `name` stores its log position.
#[must_use]
pub fn relay_checkpoint(name: &str) -> String {
    format!("redis-relay:{name}")
}

/// The checkpoint name of shard `index` of `count` of the relay called `name`:
/// `redis-relay:<name>:shard:<index>-of-<count>`; with one shard, [`relay_checkpoint`] (the
/// name relays used before shards existed, so their checkpoints keep working).
#[must_use]
pub fn relay_shard_checkpoint(name: &str, index: u32, count: u32) -> String {
    if count <= 1 {
        return relay_checkpoint(name);
    }
    format!("redis-relay:{name}:shard:{index}-of-{count}")
}

/// Escapes the characters that would break a key's structure or its hash tag.
pub(crate) fn escape(raw: &str) -> String {
    if !raw.contains(['%', '{', '}', ':']) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match c {
            '%' | '{' | '}' | ':' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_tenant_as_hash_tag() {
        let keys = Keys::default();
        let t = TenantId::new("acme");
        assert_eq!(keys.tenant_stream(&t), "es:{acme}:events");
        assert_eq!(
            keys.aggregate_type_stream(&t, "order"),
            "es:{acme}:type:order"
        );
        assert_eq!(
            dead_letter_stream(&keys.tenant_stream(&t), "billing"),
            "es:{acme}:events:dlq:billing"
        );
    }

    #[test]
    fn bus_keys_share_the_bus_hash_tag() {
        let keys = Keys::new("p*");
        assert_eq!(
            keys.bus_stream("main", Priority::High),
            "p*:bus:{main}:high"
        );
        assert_eq!(keys.bus_channel("main", "a.b"), "p*:bus:{main}:topic:a.b");
        assert_eq!(keys.bus_channel_glob("m:n"), "p\\*:bus:{m%3An}:topic:*");
    }

    #[test]
    fn job_queues_have_the_queue_as_hash_tag() {
        let keys = Keys::default();
        assert_eq!(keys.job_queue("mail"), "es:jobs:{mail}:");
        assert_eq!(keys.job_queue("a}b"), "es:jobs:{a%7Db}:");
    }

    #[test]
    fn one_shard_keeps_the_names_of_an_unsharded_relay() {
        let keys = Keys::default();
        assert_eq!(
            keys.relay_shard_lease("main", 0, 1),
            keys.relay_lease("main")
        );
        assert_eq!(
            relay_shard_checkpoint("main", 0, 1),
            relay_checkpoint("main")
        );
        assert_eq!(
            keys.relay_shard_lease("main", 2, 3),
            "es:relay:{main}:shard:2-of-3:lease"
        );
        assert_eq!(
            relay_shard_checkpoint("main", 2, 3),
            "redis-relay:main:shard:2-of-3"
        );
        assert_eq!(keys.tenant_registry(), "es:registry:{tenants}");
    }

    #[test]
    fn tenants_cannot_escape_their_hash_tag() {
        let keys = Keys::default();
        let evil = TenantId::new("a}:{b%");
        assert_eq!(keys.tenant_stream(&evil), "es:{a%7D%3A%7Bb%25}:events");
    }
}
