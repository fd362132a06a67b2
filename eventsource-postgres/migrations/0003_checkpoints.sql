-- Named reader positions in the global log, moved by compare-and-set. Readers of the global log
-- (relay, projections over every tenant) own them, so they are not tenant-scoped.
CREATE TABLE checkpoints (
    name text NOT NULL,
    transaction_id xid8 NOT NULL,
    global_position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_pkey PRIMARY KEY (name)
);
