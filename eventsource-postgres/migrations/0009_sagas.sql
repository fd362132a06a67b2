-- Durable sagas (issue 15, ADR 0017): each instance's state with an optimistic version, its
-- pending deadline, and the record of the events it handled. Tenant first in every key;
-- row level security forced, as on `events`.

CREATE TABLE saga_instances (
    tenant_id text NOT NULL,
    saga text NOT NULL,
    instance text NOT NULL,
    -- The saga's state as JSON, and the schema version it was written with.
    state jsonb NOT NULL,
    state_version integer NOT NULL CHECK (state_version >= 0),
    -- Optimistic version: how many events the instance handled.
    version bigint NOT NULL CHECK (version > 0),
    -- The last event handled (informational; deduplication goes by saga_handled).
    last_transaction_id xid8 NOT NULL,
    last_position bigint NOT NULL,
    -- Every event at or below this log position counts as handled: the record was pruned to it.
    floor_transaction_id xid8,
    floor_position bigint,
    -- The pending deadline, and whether a deadline runner fired it already.
    deadline_at timestamptz,
    deadline_fired boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_instances_pkey PRIMARY KEY (tenant_id, saga, instance),
    CONSTRAINT saga_instances_floor_check
        CHECK ((floor_transaction_id IS NULL) = (floor_position IS NULL))
);

-- Due deadlines, earliest first, for the deadline runners (FOR UPDATE SKIP LOCKED).
CREATE INDEX saga_instances_due_idx ON saga_instances (deadline_at)
    WHERE deadline_at IS NOT NULL AND NOT deadline_fired;

-- The record of handled events: a delivery is a duplicate exactly when its event is here.
CREATE TABLE saga_handled (
    tenant_id text NOT NULL,
    saga text NOT NULL,
    instance text NOT NULL,
    event_id uuid NOT NULL,
    transaction_id xid8 NOT NULL,
    global_position bigint NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_handled_pkey PRIMARY KEY (tenant_id, saga, instance, event_id)
);

-- Pruning a saga's records up to a log position.
CREATE INDEX saga_handled_log_idx ON saga_handled (tenant_id, saga, transaction_id, global_position);

ALTER TABLE saga_instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE saga_instances FORCE ROW LEVEL SECURITY;
CREATE POLICY saga_instances_tenant_isolation ON saga_instances
    USING (tenant_id = (SELECT eventsource_current_tenant()))
    WITH CHECK (tenant_id = (SELECT eventsource_current_tenant()));

ALTER TABLE saga_handled ENABLE ROW LEVEL SECURITY;
ALTER TABLE saga_handled FORCE ROW LEVEL SECURITY;
CREATE POLICY saga_handled_tenant_isolation ON saga_handled
    USING (tenant_id = (SELECT eventsource_current_tenant()))
    WITH CHECK (tenant_id = (SELECT eventsource_current_tenant()));
