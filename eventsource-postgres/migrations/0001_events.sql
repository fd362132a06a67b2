-- Streams, events and the tenant wall. See the crate README for the reasons behind each choice.

-- The tenant of the current transaction; raises when none is set, so a query that forgot to set
-- it fails loudly instead of returning an empty result.
CREATE FUNCTION eventsource_current_tenant() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    tenant text := current_setting('eventsource.tenant', true);
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RAISE EXCEPTION 'eventsource.tenant is not set for this transaction'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'run SELECT set_config(''eventsource.tenant'', <tenant>, true) first';
    END IF;
    RETURN tenant;
END
$$;

-- One row per stream: the optimistic-concurrency guard. `version` is the number of events.
CREATE TABLE streams (
    tenant_id text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    CONSTRAINT streams_pkey PRIMARY KEY (tenant_id, aggregate_type, aggregate_id)
);

-- The global log. Readers order by (transaction_id, global_position) and only read rows whose
-- transaction is older than every running transaction, which makes the log gap-free.
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    schema_version integer NOT NULL CHECK (schema_version >= 0),
    payload jsonb NOT NULL,
    metadata jsonb NOT NULL,
    correlation_id uuid,
    causation_id uuid,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- Log order; also serves read_all over every tenant (relay, rebuild).
    CONSTRAINT events_pkey PRIMARY KEY (transaction_id, global_position),
    -- Backstops behind the streams guard; mapped to errors by constraint name.
    CONSTRAINT events_stream_version_key UNIQUE (tenant_id, aggregate_type, aggregate_id, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- read_all for one tenant (tenant replay, optionally from a date).
CREATE INDEX events_tenant_log_idx ON events (tenant_id, transaction_id, global_position);
-- read_by_correlation.
CREATE INDEX events_correlation_idx ON events (tenant_id, correlation_id)
    WHERE correlation_id IS NOT NULL;

-- Appends a batch in one statement (see `PgEventStore` in src/store.rs for the contract).
--
-- The streams row is the guard: a guarded update (`exists`, `exact`) or an insert-or-update
-- (`any`, `none`) moves the version, and only a row coming out of it feeds the events insert.
-- Nothing comes out when the expectation fails or an id of the batch is already stored: then
-- the function returns one row of NULLs, writes nothing and raises nothing, so a caller's
-- transaction stays usable. Each event's version derives from the guarded row.
--
-- A function so that a pooled append is one round trip in autocommit: with `p_set_tenant` it
-- first scopes the transaction to the stream's tenant (as `set_config(..., true)` after `BEGIN`
-- would), statements of a function running in order. Inside a caller's transaction the store
-- passes false and the caller's tenant applies.
CREATE FUNCTION eventsource_append(
    p_tenant text,
    p_aggregate_type text,
    p_aggregate_id text,
    p_expected text,
    p_expected_version bigint,
    p_ids uuid[],
    p_types text[],
    p_schema_versions int4[],
    p_payloads jsonb[],
    p_metadata jsonb[],
    p_correlation_ids uuid[],
    p_causation_ids uuid[],
    p_set_tenant boolean
) RETURNS TABLE (version bigint, transaction_id text, first_position bigint, last_position bigint)
LANGUAGE plpgsql VOLATILE
-- Every lookup is by key. Plans are cached per connection for its lifetime: one made while the
-- tables were small would scan them sequentially forever after (append cost growing with the
-- log), and custom plans re-plan on every call. So: index scans, one generic plan.
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    IF p_set_tenant THEN
        PERFORM set_config('eventsource.tenant', p_tenant, true);
    END IF;
    RETURN QUERY
    WITH batch AS (
        SELECT b.event_id, b.event_type, b.schema_version, b.payload, b.metadata,
               b.correlation_id, b.causation_id, b.n
        FROM UNNEST(p_ids, p_types, p_schema_versions, p_payloads, p_metadata,
                    p_correlation_ids, p_causation_ids)
            WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata,
                                 correlation_id, causation_id, n)
    ),
    fresh AS (
        SELECT NOT EXISTS (SELECT 1 FROM events WHERE event_id = ANY(p_ids)) AS ok
    ),
    updated AS (
        UPDATE streams SET version = streams.version + cardinality(p_ids)::int8
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
          AND (p_expected = 'exists'
               OR (p_expected = 'exact' AND streams.version = p_expected_version))
          AND (SELECT ok FROM fresh)
        RETURNING streams.version
    ),
    upserted AS (
        INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
        SELECT p_tenant, p_aggregate_type, p_aggregate_id, cardinality(p_ids)::int8
        FROM fresh
        WHERE fresh.ok AND p_expected IN ('any', 'none')
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
        DO UPDATE SET version = s.version + EXCLUDED.version WHERE p_expected = 'any'
        RETURNING s.version
    ),
    stream AS (
        SELECT version FROM updated UNION ALL SELECT version FROM upserted
    ),
    inserted AS (
        INSERT INTO events (tenant_id, aggregate_type, aggregate_id, version, event_id, event_type,
                            schema_version, payload, metadata, correlation_id, causation_id)
        SELECT p_tenant, p_aggregate_type, p_aggregate_id,
               stream.version - cardinality(p_ids)::int8 + b.n, b.event_id, b.event_type,
               b.schema_version, b.payload, b.metadata, b.correlation_id, b.causation_id
        FROM stream CROSS JOIN batch b
        ORDER BY b.n
        RETURNING global_position
    )
    SELECT (SELECT version FROM stream) AS version,
           pg_current_xact_id_if_assigned()::text AS transaction_id,
           min(global_position) AS first_position,
           max(global_position) AS last_position
    FROM inserted;
END
$$;

-- Reads of one stream, each a single autocommit round trip scoped to the stream's tenant (the
-- tenant is set inside, before the query runs, as for eventsource_append).
CREATE FUNCTION eventsource_read_stream(
    p_tenant text,
    p_aggregate_type text,
    p_aggregate_id text,
    p_from bigint,
    p_to bigint
) RETURNS TABLE (event_id uuid, version bigint, transaction_id xid8, global_position bigint,
                 event_type text, schema_version int4, recorded_at timestamptz, metadata jsonb,
                 payload jsonb)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('eventsource.tenant', p_tenant, true);
    RETURN QUERY
    SELECT e.event_id, e.version, e.transaction_id, e.global_position, e.event_type,
           e.schema_version, e.recorded_at, e.metadata, e.payload
    FROM events e
    WHERE e.tenant_id = p_tenant
      AND e.aggregate_type = p_aggregate_type
      AND e.aggregate_id = p_aggregate_id
      AND e.version BETWEEN p_from AND p_to
    ORDER BY e.version;
END
$$;

CREATE FUNCTION eventsource_stream_version(
    p_tenant text,
    p_aggregate_type text,
    p_aggregate_id text
) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM set_config('eventsource.tenant', p_tenant, true);
    RETURN (SELECT s.version FROM streams s
            WHERE s.tenant_id = p_tenant
              AND s.aggregate_type = p_aggregate_type
              AND s.aggregate_id = p_aggregate_id);
END
$$;

-- Group commit: several appends, to any streams and tenants, in one transaction and one round
-- trip. Each runs exactly as eventsource_append (scoped to its own tenant) and returns its row,
-- numbered by its place in the arguments; a rejected one writes nothing and does not disturb the
-- others. The events of all appends are passed flattened, `p_counts` events per append.
CREATE FUNCTION eventsource_append_group(
    p_tenants text[],
    p_aggregate_types text[],
    p_aggregate_ids text[],
    p_expected text[],
    p_expected_versions bigint[],
    p_counts int4[],
    p_ids uuid[],
    p_types text[],
    p_schema_versions int4[],
    p_payloads jsonb[],
    p_metadata jsonb[],
    p_correlation_ids uuid[],
    p_causation_ids uuid[]
) RETURNS TABLE (n int4, version bigint, transaction_id text, first_position bigint,
                 last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    first int4 := 1;
    last int4;
BEGIN
    FOR i IN 1 .. cardinality(p_tenants) LOOP
        last := first + p_counts[i] - 1;
        RETURN QUERY
        SELECT i, a.version, a.transaction_id, a.first_position, a.last_position
        FROM eventsource_append(
            p_tenants[i], p_aggregate_types[i], p_aggregate_ids[i], p_expected[i],
            p_expected_versions[i], p_ids[first:last], p_types[first:last],
            p_schema_versions[first:last], p_payloads[first:last], p_metadata[first:last],
            p_correlation_ids[first:last], p_causation_ids[first:last], true) AS a;
        first := last + 1;
    END LOOP;
END
$$;

-- Row level security: the second wall behind every query's tenant predicate. FORCE makes it
-- apply to the table owner too; only superusers and BYPASSRLS roles (relay, rebuild) skip it.
ALTER TABLE streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE streams FORCE ROW LEVEL SECURITY;
CREATE POLICY streams_tenant_isolation ON streams
    USING (tenant_id = (SELECT eventsource_current_tenant()))
    WITH CHECK (tenant_id = (SELECT eventsource_current_tenant()));

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY events_tenant_isolation ON events
    USING (tenant_id = (SELECT eventsource_current_tenant()))
    WITH CHECK (tenant_id = (SELECT eventsource_current_tenant()));
