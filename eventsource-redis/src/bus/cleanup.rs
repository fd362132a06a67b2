//! Removing the broadcast groups that processes which crashed left behind.
//!
//! A bus with broadcast subscriptions keeps a mark (`Keys::bus_instance`) alive: set for three
//! heartbeats, renewed every heartbeat. Consumer idle times alone cannot tell a crashed process
//! from a quiet bus: before Redis 7.2 a blocking read that returns nothing does not reset them.

use std::collections::BTreeSet;
use std::time::Duration;

use eventsource_core::bus::BusError;
use redis::AsyncCommands as _;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};

use tokio_util::sync::CancellationToken;

use super::{BROADCAST_GROUP, RedisBus, backend};
use crate::keys;

impl RedisBus {
    /// How often this bus marks itself alive while it has broadcast subscriptions (default
    /// 10 s; the mark lasts three heartbeats), so that
    /// [`remove_idle_broadcast_groups`](Self::remove_idle_broadcast_groups) run elsewhere
    /// spares its groups. Call before subscribing.
    #[must_use]
    pub fn with_heartbeat(self, every: Duration) -> Self {
        self.rebuild(|s| s.heartbeat = every.max(Duration::from_millis(10)))
    }

    /// Destroys the broadcast groups (`broadcast-<subscription id>`) of bus instances that are
    /// gone (their mark expired, three heartbeats after their last) and none of whose
    /// consumers has read for at least `idle`, with their pending entries; returns how many
    /// were removed.
    ///
    /// [`unsubscribe`](eventsource_core::bus::EventBus::unsubscribe) destroys a broadcast
    /// subscription's group, but a process that crashed (or dropped the bus without
    /// unsubscribing) leaves it behind, its pending entries kept forever. Call this now and
    /// then from one process. This bus's own subscriptions are never removed. A group without consumers
    /// (its process died before its first read) holds no entries and is left alone; groups
    /// of [`Delivery::Group`](eventsource_core::bus::Delivery::Group) subscriptions are
    /// shared and never touched.
    ///
    /// # Errors
    ///
    /// A Redis failure; the groups removed before it stay removed.
    pub async fn remove_idle_broadcast_groups(&self, idle: Duration) -> Result<usize, BusError> {
        let own: BTreeSet<String> = self
            .inner
            .lock()
            .values()
            .filter_map(|running| running.own_group.as_ref().map(|(group, _)| group.clone()))
            .collect();
        let idle_ms = usize::try_from(idle.as_millis()).unwrap_or(usize::MAX);
        let mut conn = self.inner.outlet.conn.clone();
        let streams = self.streams();
        // Idle on every bus stream: a runner's read names all of them at once.
        let mut candidates: Option<BTreeSet<String>> = None;
        for stream in &streams {
            let exists: bool = conn.exists(stream).await.map_err(backend)?;
            let mut idle_here = BTreeSet::new();
            if exists {
                let info: StreamInfoGroupsReply =
                    conn.xinfo_groups(stream).await.map_err(backend)?;
                for group in info.groups {
                    if !group.name.starts_with(BROADCAST_GROUP)
                        || own.contains(&group.name)
                        || group.consumers == 0
                    {
                        continue;
                    }
                    let consumers: StreamInfoConsumersReply = conn
                        .xinfo_consumers(stream, &group.name)
                        .await
                        .map_err(backend)?;
                    let mut gone = true;
                    for consumer in &consumers.consumers {
                        // Consumers are named `<instance>-<subscription id>`.
                        let instance = consumer.name.split('-').next().unwrap_or_default();
                        let mark = self
                            .inner
                            .outlet
                            .keys
                            .bus_instance(&self.inner.outlet.name, instance);
                        let alive: bool = conn.exists(&mark).await.map_err(backend)?;
                        if alive || consumer.idle < idle_ms {
                            gone = false;
                            break;
                        }
                    }
                    if gone {
                        idle_here.insert(group.name);
                    }
                }
            }
            candidates = Some(match candidates {
                None => idle_here,
                Some(before) => before.intersection(&idle_here).cloned().collect(),
            });
        }
        let groups = candidates.unwrap_or_default();
        let mut all_streams = streams;
        all_streams.extend(self.inner.relay_streams.iter().cloned());
        for group in &groups {
            let mut keys = all_streams.clone();
            keys.extend(all_streams.iter().map(|s| keys::requeue_stream(s, group)));
            super::destroy_group(&mut conn, group, &keys).await?;
            tracing::info!(bus = %self.inner.outlet.name, group, "removed an idle broadcast group");
        }
        Ok(groups.len())
    }

    /// Sets this instance's mark and starts renewing it, once.
    pub(super) async fn keep_alive(&self) -> Result<(), BusError> {
        let outlet = &self.inner.outlet;
        let mark = outlet.keys.bus_instance(&outlet.name, &self.inner.instance);
        let every = self.inner.heartbeat;
        let ttl = u64::try_from(every.as_millis() * 3).unwrap_or(u64::MAX);
        let mut conn = outlet.conn.clone();
        let _: () = conn.pset_ex(&mark, 1, ttl).await.map_err(backend)?;
        let stop = {
            let mut task = self
                .inner
                .heartbeat_task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if task.is_some() {
                return Ok(());
            }
            let stop = CancellationToken::new();
            *task = Some(stop.clone());
            stop
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                let renewed: Result<(), _> = conn.pset_ex(&mark, 1, ttl).await;
                if let Err(e) = renewed {
                    tracing::warn!(error = %e, "renewing the bus instance mark failed");
                }
            }
        });
        Ok(())
    }
}
