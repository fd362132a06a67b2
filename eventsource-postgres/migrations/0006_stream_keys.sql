-- Stream keys: events name their stream by a number, not by its three text columns.
--
-- Every event row was indexed by `events_stream_version_key (tenant_id, aggregate_type,
-- aggregate_id, version)`, the widest key of the table (three texts, the aggregate id often a
-- UUID or longer), compared column by column at every level of the tree on every insert. It is
-- now `events_stream_key_version_key (stream_key, version)`: sixteen bytes, compared as
-- integers, and a new stream's events go to the right edge of the index. Measured on
-- PostgreSQL 15 with the group statement of eight 10-event appends: about 13% less server time
-- per group (ADR 0012).
--
-- `streams.stream_key` is an identity, given once when a stream's row is created; every append
-- reads it back from the streams row it moves (the guard), so the events of a stream and its
-- row always agree. The events keep their tenant, type and id columns: the envelope, the tenant
-- wall and the other indexes read them. Reads of one stream look the key up in `streams` by the
-- primary key first.
--
-- Binaries built before this migration insert events without `stream_key` and fail on its
-- NOT NULL: upgrade the binaries with the schema. The two functions that only such binaries
-- called (`eventsource_append_group`, `eventsource_append_pooled`) are dropped; the ones the
-- store calls are replaced below with the same signatures and contracts.

ALTER TABLE streams ADD COLUMN stream_key bigint GENERATED ALWAYS AS IDENTITY;

ALTER TABLE events ADD COLUMN stream_key bigint;

-- The backfill reads and writes every tenant's rows: row level security is lifted for the
-- owner running the migration, in this transaction only.
ALTER TABLE events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE streams NO FORCE ROW LEVEL SECURITY;
UPDATE events e
SET stream_key = s.stream_key
FROM streams s
WHERE s.tenant_id = e.tenant_id
  AND s.aggregate_type = e.aggregate_type
  AND s.aggregate_id = e.aggregate_id;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
ALTER TABLE streams FORCE ROW LEVEL SECURITY;

ALTER TABLE events ALTER COLUMN stream_key SET NOT NULL;
-- Reads of one stream, and the backstop behind the streams guard (mapped to errors by name).
ALTER TABLE events ADD CONSTRAINT events_stream_key_version_key UNIQUE (stream_key, version);
ALTER TABLE events DROP CONSTRAINT events_stream_version_key;

DROP FUNCTION eventsource_append_group(text[], text[], text[], text[], bigint[], int4[], uuid[],
                                       text[], int4[], jsonb[], jsonb[], uuid[], uuid[]);
DROP FUNCTION eventsource_append_pooled(text, text, text, text, bigint, uuid[], text[], int4[],
                                        jsonb[], jsonb[], uuid[], uuid[]);

-- As in 0004; the streams row gives the key with the version.
CREATE OR REPLACE FUNCTION eventsource_append(
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
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_count int8 := cardinality(p_ids);
    v_version int8;
    v_key int8;
    v_first int8;
    v_last int8;
BEGIN
    IF p_set_tenant THEN
        PERFORM set_config('eventsource.tenant', p_tenant, true);
    END IF;
    IF EXISTS (SELECT 1 FROM events WHERE event_id = ANY(p_ids)) THEN
        RETURN QUERY SELECT NULL::int8, NULL::text, NULL::int8, NULL::int8;
        RETURN;
    END IF;
    IF p_expected = 'none' THEN
        INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_count)
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
        RETURNING streams.version, streams.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'any' THEN
        INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_count)
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
        DO UPDATE SET version = s.version + EXCLUDED.version
        RETURNING s.version, s.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'exists' THEN
        UPDATE streams SET version = streams.version + v_count
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
        RETURNING streams.version, streams.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'exact' THEN
        UPDATE streams SET version = streams.version + v_count
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
          AND streams.version = p_expected_version
        RETURNING streams.version, streams.stream_key INTO v_version, v_key;
    END IF;
    IF v_version IS NULL THEN
        RETURN QUERY SELECT NULL::int8, NULL::text, NULL::int8, NULL::int8;
        RETURN;
    END IF;
    IF v_count = 1 THEN
        INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version, event_id,
                            event_type, schema_version, payload, metadata, correlation_id,
                            causation_id)
        VALUES (v_key, p_tenant, p_aggregate_type, p_aggregate_id, v_version, p_ids[1], p_types[1],
                p_schema_versions[1], p_payloads[1], p_metadata[1], p_correlation_ids[1],
                p_causation_ids[1])
        RETURNING global_position INTO v_first;
        v_last := v_first;
    ELSE
        WITH inserted AS (
            INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version,
                                event_id, event_type, schema_version, payload, metadata,
                                correlation_id, causation_id)
            SELECT v_key, p_tenant, p_aggregate_type, p_aggregate_id, v_version - v_count + b.n,
                   b.event_id, b.event_type, b.schema_version, b.payload, b.metadata,
                   b.correlation_id, b.causation_id
            FROM UNNEST(p_ids, p_types, p_schema_versions, p_payloads, p_metadata,
                        p_correlation_ids, p_causation_ids)
                WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata,
                                     correlation_id, causation_id, n)
            ORDER BY b.n
            RETURNING global_position
        )
        SELECT min(global_position), max(global_position) INTO v_first, v_last
        FROM inserted;
    END IF;
    RETURN QUERY SELECT v_version, pg_current_xact_id()::text, v_first, v_last;
END
$$;

-- As in 0005; the streams rows give the keys with the versions.
CREATE OR REPLACE FUNCTION eventsource_append_many(
    p_tenants text[],
    p_aggregate_types text[],
    p_aggregate_ids text[],
    p_expected text[],
    p_expected_versions bigint[],
    p_counts int8[],
    p_append_of int4[],
    p_offsets int8[],
    p_ids uuid[],
    p_types text[],
    p_schema_versions int4[],
    p_payloads jsonb[],
    p_metadata jsonb[],
    p_correlation_ids uuid[],
    p_causation_ids uuid[]
) RETURNS TABLE (n int4, version bigint, transaction_id text, first_position bigint,
                 last_position bigint)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_tenants text[];
    v_tenant text;
    v_previous text;
BEGIN
    -- Plain expressions, not queries, in the usual case of one tenant.
    IF p_tenants[1] = ALL(p_tenants) THEN
        v_tenants := p_tenants[1:1];
    ELSE
        v_tenants := ARRAY(SELECT DISTINCT t FROM UNNEST(p_tenants) AS t);
    END IF;
    FOREACH v_tenant IN ARRAY v_tenants LOOP
        v_previous := set_config('eventsource.tenant', v_tenant, true);
        RETURN QUERY
        WITH appends AS MATERIALIZED (
            SELECT a.n::int4 AS n, a.aggregate_type, a.aggregate_id, a.expected,
                   a.expected_version, a.count
            FROM UNNEST(p_tenants, p_aggregate_types, p_aggregate_ids, p_expected,
                        p_expected_versions, p_counts)
                WITH ORDINALITY AS a(tenant, aggregate_type, aggregate_id, expected,
                                     expected_version, count, n)
            WHERE a.tenant = v_tenant
        ),
        updated AS (
            UPDATE streams SET version = streams.version + a.count
            FROM appends a
            WHERE streams.tenant_id = v_tenant
              AND streams.aggregate_type = a.aggregate_type
              AND streams.aggregate_id = a.aggregate_id
              AND (a.expected = 'exists'
                   OR (a.expected = 'exact' AND streams.version = a.expected_version))
            RETURNING a.n, streams.version, streams.stream_key
        ),
        created AS (
            INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count
            FROM appends a
            WHERE a.expected = 'none'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
            RETURNING streams.aggregate_type, streams.aggregate_id, streams.version,
                      streams.stream_key
        ),
        upserted AS (
            INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count
            FROM appends a
            WHERE a.expected = 'any'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
            DO UPDATE SET version = s.version + EXCLUDED.version
            RETURNING s.aggregate_type, s.aggregate_id, s.version, s.stream_key
        ),
        moved AS MATERIALIZED (
            SELECT u.n, u.version, u.stream_key, a.count, a.aggregate_type, a.aggregate_id
            FROM updated u JOIN appends a ON a.n = u.n
            UNION ALL
            SELECT a.n, c.version, c.stream_key, a.count, a.aggregate_type, a.aggregate_id
            FROM (SELECT * FROM created UNION ALL SELECT * FROM upserted) c
            JOIN appends a
              ON a.aggregate_type = c.aggregate_type AND a.aggregate_id = c.aggregate_id
        ),
        inserted AS (
            INSERT INTO events (stream_key, tenant_id, aggregate_type, aggregate_id, version,
                                event_id, event_type, schema_version, payload, metadata,
                                correlation_id, causation_id)
            SELECT mv.stream_key, v_tenant, mv.aggregate_type, mv.aggregate_id,
                   mv.version - mv.count + e.offset_in, e.event_id, e.event_type,
                   e.schema_version, e.payload, e.metadata, e.correlation_id, e.causation_id
            FROM UNNEST(p_append_of, p_offsets, p_ids, p_types, p_schema_versions, p_payloads,
                        p_metadata, p_correlation_ids, p_causation_ids)
                WITH ORDINALITY AS e(append_of, offset_in, event_id, event_type, schema_version,
                                     payload, metadata, correlation_id, causation_id, k)
            JOIN moved mv ON mv.n = e.append_of
            ORDER BY e.k
            RETURNING events.aggregate_type, events.aggregate_id, events.global_position
        ),
        written AS (
            SELECT mv.n, min(i.global_position) AS first_position,
                   max(i.global_position) AS last_position
            FROM inserted i
            JOIN moved mv
              ON mv.aggregate_type = i.aggregate_type AND mv.aggregate_id = i.aggregate_id
            GROUP BY mv.n
        )
        SELECT a.n, mv.version,
               CASE WHEN w.n IS NOT NULL THEN pg_current_xact_id()::text END,
               w.first_position, w.last_position
        FROM appends a
        LEFT JOIN moved mv ON mv.n = a.n
        LEFT JOIN written w ON w.n = a.n
        ORDER BY a.n;
    END LOOP;
END
$$;

-- As in 0001; the stream is found by its key.
CREATE OR REPLACE FUNCTION eventsource_read_stream(
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
    WHERE e.stream_key = (SELECT s.stream_key FROM streams s
                          WHERE s.tenant_id = p_tenant
                            AND s.aggregate_type = p_aggregate_type
                            AND s.aggregate_id = p_aggregate_id)
      AND e.version BETWEEN p_from AND p_to
    ORDER BY e.version;
END
$$;
