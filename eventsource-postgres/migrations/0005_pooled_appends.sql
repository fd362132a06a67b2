-- Appends on a pooled connection in autocommit (the store's own transactions), without the
-- stored-id pre-check. 0001-0004 stay as shipped: `eventsource_append` keeps serving appends in
-- a caller's transaction, and `eventsource_append_group` keeps serving binaries built before
-- this migration.
--
-- Why no pre-check here: it exists so that a batch whose ids are stored comes back as "nothing
-- written" instead of a unique violation, which keeps a caller's transaction usable. An
-- autocommit statement has no caller's transaction to keep: when an id is stored, the unique
-- index `events_event_id_key` fails the statement, its transaction rolls back (nothing of it
-- is written, the streams row included), and the store resolves the outcome in a new
-- transaction (the original outcome for an idempotent retry, `DuplicateEventId` otherwise).
-- Stored ids are rare (a retry after a lost acknowledgement); the probe cost every append one
-- index lookup per event.
--
-- The stream's version guard is unchanged: a failed expectation writes nothing, raises nothing
-- and returns one row of NULLs.

-- One append in its own transaction, scoped to the stream's tenant.
CREATE FUNCTION eventsource_append_pooled(
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
    p_causation_ids uuid[]
) RETURNS TABLE (version bigint, transaction_id text, first_position bigint, last_position bigint)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_count int8 := cardinality(p_ids);
    v_version int8;
    v_first int8;
    v_last int8;
BEGIN
    -- Assignments and RETURN NEXT, not PERFORM and RETURN QUERY: plain expressions skip the
    -- executor, a few microseconds each on every append.
    transaction_id := set_config('eventsource.tenant', p_tenant, true);
    IF p_expected = 'none' THEN
        INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_count)
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
        RETURNING streams.version INTO v_version;
    ELSIF p_expected = 'any' THEN
        INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_count)
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
        DO UPDATE SET version = s.version + EXCLUDED.version
        RETURNING s.version INTO v_version;
    ELSIF p_expected = 'exists' THEN
        UPDATE streams SET version = streams.version + v_count
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
        RETURNING streams.version INTO v_version;
    ELSIF p_expected = 'exact' THEN
        UPDATE streams SET version = streams.version + v_count
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
          AND streams.version = p_expected_version
        RETURNING streams.version INTO v_version;
    END IF;
    IF v_version IS NULL THEN
        transaction_id := NULL;
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_count = 1 THEN
        INSERT INTO events (tenant_id, aggregate_type, aggregate_id, version, event_id, event_type,
                            schema_version, payload, metadata, correlation_id, causation_id)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_version, p_ids[1], p_types[1],
                p_schema_versions[1], p_payloads[1], p_metadata[1], p_correlation_ids[1],
                p_causation_ids[1])
        RETURNING global_position INTO v_first;
        v_last := v_first;
    ELSE
        WITH inserted AS (
            INSERT INTO events (tenant_id, aggregate_type, aggregate_id, version, event_id,
                                event_type, schema_version, payload, metadata, correlation_id,
                                causation_id)
            SELECT p_tenant, p_aggregate_type, p_aggregate_id, v_version - v_count + b.n,
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
    version := v_version;
    transaction_id := pg_current_xact_id()::text;
    first_position := v_first;
    last_position := v_last;
    RETURN NEXT;
END
$$;

-- Group commit: several appends to distinct streams, of any tenants, in one transaction.
--
-- Same contract as eventsource_append_group (0004): every append keeps its own outcome, a
-- failed expectation writes nothing for that append and disturbs no other, rows come back
-- numbered by the append's place in the arguments, each append's events are inserted
-- contiguously and in order. Differences, each cheaper per event:
-- - no stored-id pre-check (as above): a stored id fails the whole call, and the store then
--   runs each append of the group alone, where the usual resolution applies;
-- - the events come as one set of parallel arrays with, per event, its append's number
--   (`p_append_of`) and its place in that append (`p_offsets`, from 1), read by one UNNEST
--   instead of subscripting the arrays per event;
-- - the streams of one call must be distinct, and this is the caller's duty (the store's groups
--   take one append per stream; a second one waits for the next group): one statement cannot
--   move a row twice, and the second append must see the first. Not checked here, which saves
--   a query per call.
CREATE FUNCTION eventsource_append_many(
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
            RETURNING a.n, streams.version
        ),
        created AS (
            INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count
            FROM appends a
            WHERE a.expected = 'none'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
            RETURNING streams.aggregate_type, streams.aggregate_id, streams.version
        ),
        upserted AS (
            INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count
            FROM appends a
            WHERE a.expected = 'any'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
            DO UPDATE SET version = s.version + EXCLUDED.version
            RETURNING s.aggregate_type, s.aggregate_id, s.version
        ),
        moved AS MATERIALIZED (
            SELECT u.n, u.version, a.count, a.aggregate_type, a.aggregate_id
            FROM updated u JOIN appends a ON a.n = u.n
            UNION ALL
            SELECT a.n, c.version, a.count, a.aggregate_type, a.aggregate_id
            FROM (SELECT * FROM created UNION ALL SELECT * FROM upserted) c
            JOIN appends a
              ON a.aggregate_type = c.aggregate_type AND a.aggregate_id = c.aggregate_id
        ),
        inserted AS (
            INSERT INTO events (tenant_id, aggregate_type, aggregate_id, version, event_id,
                                event_type, schema_version, payload, metadata, correlation_id,
                                causation_id)
            SELECT v_tenant, mv.aggregate_type, mv.aggregate_id,
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
