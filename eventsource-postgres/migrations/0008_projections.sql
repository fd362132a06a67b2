-- Projections on PostgreSQL (ADR 0016).
--
-- `leases`: one live worker per name. A projection runner takes the lease named after its
-- projection before it applies anything, renews it in the transaction of every batch (which
-- also checks that its `token` is still the current one) and releases it when it stops. A
-- holder that stops renewing loses it after `expires_at`; whoever takes it next gets a new
-- `token`, so the old holder's next batch finds the lease moved on, rolls back and stops. A
-- rebuild takes the same lease, so it never races a live worker in another process. Times are
-- the server's (`clock_timestamp()`): the holders' clocks never meet.
CREATE TABLE leases (
    name text NOT NULL,
    holder text NOT NULL,
    token bigint NOT NULL CHECK (token > 0),
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT leases_pkey PRIMARY KEY (name)
);

-- Positions applied by projections fed through at-least-once delivery (a Redis consumer group,
-- where a reclaimed entry can arrive after later ones, so no "last position" would do): each is
-- inserted in the transaction of the read-model change, and a delivery whose position is here
-- is skipped. Until this migration eventsource-redis created `eventsource_redis_applied` at run
-- time for the same purpose; its rows are carried over, so an upgraded projection still skips
-- what it applied before.
CREATE TABLE applied_positions (
    projection text NOT NULL,
    transaction_id xid8 NOT NULL,
    global_position bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT applied_positions_pkey PRIMARY KEY (projection, transaction_id, global_position)
);

DO $$
BEGIN
    IF to_regclass('eventsource_redis_applied') IS NOT NULL THEN
        INSERT INTO applied_positions (projection, transaction_id, global_position, applied_at)
        SELECT projection, transaction_id::text::xid8, position, applied_at
        FROM eventsource_redis_applied;
    END IF;
END
$$;
