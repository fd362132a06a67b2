//! The relay: publishes the event store's global log to Redis streams, each event exactly once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use eventsource_core::{CheckpointStore, EventStore, LogPosition, RecordedEvent};
use redis::Script;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::codec::{self, FIELDS};
use crate::error::RedisStoreError;
use crate::keys::{self, Keys, PerTenant, Router};
use crate::options::PublisherOptions;
use crate::order::StreamOrder;

/// XADDs a batch of entries with explicit ids to `KEYS[1]`, skipping those Redis rejects as
/// "equal or smaller than the target stream top item" (already published) and stopping at any
/// other error.
///
/// A rejected id is a re-send only if the stream holds that very event at that id, or held it
/// and lost it to trimming (the id is below the first entry) or deletion (at or below the
/// stream's `max-deleted-entry-id`). An entry at that id with another `event_id`, or a missing id
/// inside the stream that was never deleted, means the event store and the stream disagree — a
/// store restored or reset behind Redis's back — and the script refuses rather than drop the
/// event silently. (A reset whose new ids all fall below a trimmed stream's first entry cannot be
/// told from a re-send; `check_transaction_ids` in eventsource-postgres guards that case.)
///
/// `ARGV = [n, field_1 .. field_n, id_1, value_1_1 .. value_1_n, id_2, …]`; replies
/// `{added, skipped}`.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(ARGV[1])
local added, skipped = 0, 0
local args = {}
local i = n + 2
local total = #ARGV
local event_field = nil
for j = 1, n do
  if ARGV[1 + j] == 'event_id' then event_field = j end
end
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
while i <= total do
  local id = ARGV[i]
  for j = 1, n do
    args[2 * j - 1] = ARGV[1 + j]
    args[2 * j] = ARGV[i + j]
  end
  local r = redis.pcall('XADD', KEYS[1], id, unpack(args, 1, 2 * n))
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then
      return redis.error_reply('PUBLISHREFUSED ' .. id .. ' ' .. r.err)
    end
    local found = redis.call('XRANGE', KEYS[1], id, id)
    if #found == 1 then
      if event_field then
        local stored = nil
        local fields = found[1][2]
        for k = 1, #fields, 2 do
          if fields[k] == 'event_id' then stored = fields[k + 1] end
        end
        if stored ~= ARGV[i + event_field] then
          return redis.error_reply('PUBLISHREFUSED ' .. id ..
            ' the stream holds event ' .. tostring(stored) .. ' at this id, not ' ..
            ARGV[i + event_field] .. ': the event store and the stream disagree')
        end
      end
    else
      -- Missing: trimmed (below the first entry) or deleted (at or below the stream's
      -- max-deleted-entry-id, which XDEL moves); otherwise never published here, so the store
      -- and the stream disagree.
      local info = redis.call('XINFO', 'STREAM', KEYS[1])
      local max_deleted, first_entry = '0-0', nil
      for k = 1, #info, 2 do
        if info[k] == 'max-deleted-entry-id' then max_deleted = info[k + 1] end
        if info[k] == 'first-entry' and type(info[k + 1]) == 'table' then
          first_entry = info[k + 1][1]
        end
      end
      local trimmed = first_entry ~= nil and id_less(id, first_entry)
      if not trimmed and id_less(max_deleted, id) then
        return redis.error_reply('PUBLISHREFUSED ' .. id ..
          ' was never in the stream: the event store and the stream disagree')
      end
    end
    skipped = skipped + 1
  else
    added = added + 1
  end
  i = i + n + 1
end
return {added, skipped}
",
    )
});

/// Takes or renews the lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` ms; 1 if held.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// Releases the lease `KEYS[1]` if holder `ARGV[1]` still has it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// What one published batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Events read from the log.
    pub events: usize,
    /// Entries added to streams.
    pub added: u64,
    /// Entries Redis already had (re-sent after a crash) and rejected.
    pub skipped: u64,
    /// The checkpoint after the batch.
    pub checkpoint: Option<LogPosition>,
}

/// Relays the global log of an [`EventStore`] to Redis streams.
///
/// Each event is added to the stream keys its [`Router`] picks (by default its tenant's
/// `es:{<tenant>}:events`) with the entry id `<transaction>-<position>` of its
/// [`LogPosition`]. Those ids sort like the log, so a batch re-sent after a crash is rejected
/// by Redis entry by entry: **each event appears exactly once per key, in log order**, whatever
/// point the publisher dies at. The checkpoint (in the [`CheckpointStore`], under
/// [`keys::relay_checkpoint`]) is saved only after Redis answered.
///
/// Never `DEL` a published stream (that resets its last id, and a replay would duplicate) and
/// run Redis with `maxmemory-policy noeviction`.
///
/// ```no_run
/// # use eventsource_core::{InMemoryCheckpointStore, InMemoryEventStore};
/// # use eventsource_redis::{PublisherOptions, RedisPublisher};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let store = InMemoryEventStore::new();
/// let publisher = RedisPublisher::new(
///     store.clone(),
///     InMemoryCheckpointStore::new(),
///     conn,
///     "main",
///     PublisherOptions::default(),
/// );
/// let shutdown = CancellationToken::new();
/// let relay = tokio::spawn(publisher.run(shutdown.clone()));
/// // ... on SIGTERM:
/// shutdown.cancel();
/// relay.await??;
/// # Ok(()) }
/// ```
pub struct RedisPublisher<S, C> {
    store: S,
    checkpoints: C,
    conn: ConnectionManager,
    name: String,
    router: Arc<dyn Router>,
    custom_router: bool,
    options: PublisherOptions,
    lease_key: String,
    checkpoint: Option<LogPosition>,
    loaded: bool,
    order: StreamOrder,
}

impl<S, C> std::fmt::Debug for RedisPublisher<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> RedisPublisher<S, C> {
    /// A publisher called `name` (its checkpoint and lease are named after it), routing per
    /// tenant under the `es` prefix.
    pub fn new(
        store: S,
        checkpoints: C,
        conn: ConnectionManager,
        name: impl Into<String>,
        options: PublisherOptions,
    ) -> Self {
        let name = name.into();
        let keys = Keys::default();
        let order = StreamOrder::new(options.filter.since.is_none());
        Self {
            store,
            checkpoints,
            conn,
            lease_key: keys.relay_lease(&name),
            router: Arc::new(PerTenant::new(keys)),
            custom_router: false,
            name,
            options,
            checkpoint: None,
            loaded: false,
            order,
        }
    }

    /// Routes events with `router` instead of one stream per tenant.
    #[must_use]
    pub fn with_router(mut self, router: impl Router + 'static) -> Self {
        self.router = Arc::new(router);
        self.custom_router = true;
        self
    }

    /// Puts the lease key, and the per-tenant streams unless a custom router is set, under
    /// `keys`' prefix.
    #[must_use]
    pub fn with_keys(mut self, keys: &Keys) -> Self {
        self.lease_key = keys.relay_lease(&self.name);
        if !self.custom_router {
            self.router = Arc::new(PerTenant::new(keys.clone()));
        }
        self
    }

    /// Publishes one batch: reads up to `batch_size` events after the checkpoint, adds them to
    /// their streams and then saves the checkpoint. Does not take the lease.
    ///
    /// Before it publishes anything, it checks that the batch continues every stream it
    /// touches at the next version (for each stream read since the checkpoint was loaded, up
    /// to a hundred thousand streams); otherwise it refuses the batch with
    /// [`RedisStoreError::OutOfOrder`], which is not retryable, and publishes none of it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point loses nothing and duplicates nothing: the checkpoint
    /// has not moved, and the next call re-sends, which Redis rejects per entry.
    pub async fn publish_batch(&mut self) -> Result<Published, RedisStoreError> {
        if !self.loaded {
            self.order.forget();
            self.checkpoint = self
                .checkpoints
                .load(&keys::relay_checkpoint(&self.name))
                .await?;
            self.loaded = true;
        }
        let after = self.checkpoint.unwrap_or(LogPosition::START);
        let events = self
            .store
            .read_all(after, self.options.batch_size, &self.options.filter)
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(Published {
                checkpoint: self.checkpoint,
                ..Published::default()
            });
        };
        if self.options.refuse_out_of_order {
            self.order.check(&events)?;
        } else {
            self.order.warn(&events);
        }
        let span = tracing::debug_span!(
            "eventsource.redis.publish",
            relay = %self.name,
            events = events.len(),
            from = %after,
            to = %last,
        );
        let (added, skipped) = self.publish(&events).instrument(span).await?;
        self.checkpoints
            .save(&keys::relay_checkpoint(&self.name), self.checkpoint, last)
            .await
            .inspect_err(|_| self.loaded = false)?;
        self.checkpoint = Some(last);
        self.order.record(&events);
        Ok(Published {
            events: events.len(),
            added,
            skipped,
            checkpoint: self.checkpoint,
        })
    }

    /// Publishes until the log is exhausted; returns the number of events read.
    pub async fn catch_up(&mut self) -> Result<u64, RedisStoreError> {
        let mut total = 0u64;
        loop {
            let published = self.publish_batch().await?;
            if published.events == 0 {
                return Ok(total);
            }
            total += published.events as u64;
        }
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(u64, u64), RedisStoreError> {
        let mut by_key: HashMap<String, Vec<&RecordedEvent>> = HashMap::new();
        let mut routed = Vec::with_capacity(2);
        for event in events {
            routed.clear();
            self.router.route(event, &mut routed);
            for key in routed.drain(..) {
                by_key.entry(key).or_default().push(event);
            }
        }
        let calls = by_key.into_iter().map(|(key, events)| {
            let mut invocation = PUBLISH.prepare_invoke();
            invocation.key(&key).arg(FIELDS.len()).arg(&FIELDS[..]);
            for event in &events {
                invocation
                    .arg(codec::entry_id(event.position))
                    .arg(&codec::encode(event)[..]);
            }
            let mut conn = self.conn.clone();
            async move {
                let reply: Result<(u64, u64), redis::RedisError> =
                    invocation.invoke_async(&mut conn).await;
                reply.map_err(|e| refused(&key, e))
            }
        });
        let replies = futures::future::try_join_all(calls).await?;
        Ok(replies
            .into_iter()
            .fold((0, 0), |(a, s), (added, skipped)| (a + added, s + skipped)))
    }

    /// Runs until `shutdown` is cancelled: waits for the lease, then tails the log, publishing
    /// batches and renewing the lease. Transient failures (Redis down, store unavailable) are
    /// retried with backoff; the lease is released on shutdown.
    ///
    /// # Errors
    ///
    /// Non-transient failures: Redis refusing an entry for another reason than a re-send, a
    /// corrupt store.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RedisStoreError> {
        let notify = self.store.append_notify();
        let ttl = self.options.lease_ttl;
        let mut renewed: Option<Instant> = None;
        let mut idle = Duration::ZERO;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            // Lease: held, renewed every third of its life.
            if renewed.is_none_or(|at| at.elapsed() >= ttl / 3) {
                match self.take_lease().await {
                    Ok(true) => renewed = Some(Instant::now()),
                    Ok(false) => {
                        if renewed.is_some() {
                            tracing::warn!(relay = %self.name, "relay lease lost to another instance");
                        }
                        renewed = None;
                        self.loaded = false;
                        sleep_or_cancel(&shutdown, ttl / 3).await;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        self.back_off(&shutdown, e, failures).await?;
                        continue;
                    }
                }
            }
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            match self.publish_batch().await {
                Ok(published) if published.events >= self.options.batch_size => {
                    failures = 0;
                    idle = Duration::ZERO;
                }
                Ok(published) => {
                    failures = 0;
                    if published.events > 0 {
                        idle = Duration::ZERO;
                        continue;
                    }
                    idle = (idle * 2)
                        .max(Duration::from_millis(1))
                        .min(self.options.max_idle_poll);
                    let wait = idle.min(ttl / 3);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                        () = async {
                            match notified.as_mut().as_pin_mut() {
                                Some(n) => n.await,
                                None => std::future::pending().await,
                            }
                        } => { idle = Duration::ZERO; }
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.back_off(&shutdown, e, failures).await?;
                }
            }
        }
        if renewed.is_some() {
            let released: Result<i64, _> = RELEASE
                .key(&self.lease_key)
                .arg(&self.options.instance_id)
                .invoke_async(&mut self.conn)
                .await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "relay lease not released; it will expire");
            }
        }
        Ok(())
    }

    async fn take_lease(&mut self) -> Result<bool, RedisStoreError> {
        let ms = u64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let held: i64 = LEASE
            .key(&self.lease_key)
            .arg(&self.options.instance_id)
            .arg(ms)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(held == 1)
    }

    async fn back_off(
        &mut self,
        shutdown: &CancellationToken,
        error: RedisStoreError,
        failures: u32,
    ) -> Result<(), RedisStoreError> {
        if !error.is_retryable() {
            tracing::error!(relay = %self.name, error = %error, "relay stopped");
            return Err(error);
        }
        // Whatever happened, re-read the checkpoint before the next batch.
        self.loaded = false;
        let delay = self.options.error_backoff.delay(failures);
        tracing::warn!(relay = %self.name, error = %error, ?delay, "relay batch failed; retrying");
        sleep_or_cancel(shutdown, delay).await;
        Ok(())
    }
}

/// Maps the publish script's own refusal to [`RedisStoreError::PublishRefused`].
fn refused(key: &str, e: redis::RedisError) -> RedisStoreError {
    if e.code() == Some("PUBLISHREFUSED") {
        let detail = e.detail().unwrap_or_default();
        let (id, reason) = detail.split_once(' ').unwrap_or((detail, ""));
        return RedisStoreError::PublishRefused {
            key: key.to_owned(),
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
    }
    RedisStoreError::Redis(e)
}

pub(crate) async fn sleep_or_cancel(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
