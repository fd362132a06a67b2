-- Cheaper appends, same contract (0001 stays as shipped; these replace its two append functions).
--
-- eventsource_append: one statement per step instead of one CTE that always ran every branch
-- (the guarded update probed `streams` even for a new stream, and the upsert ran for an
-- existing one). Only the statement for the given expectation runs, and a single event is
-- inserted from the array elements directly. Measured on PostgreSQL 15: about 20% less server
-- time per single-event append (the CTE's executor start-up and the extra probe).
--
-- The id pre-check stays: it is what lets a batch whose ids are stored come back as "nothing
-- written" instead of a unique violation, which keeps a caller's transaction usable
-- (append_in_tx). Order of the steps, and so the contract, is unchanged: stored ids or a failed
-- expectation return one row of NULLs, write nothing and raise nothing.
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
        RETURN QUERY SELECT NULL::int8, NULL::text, NULL::int8, NULL::int8;
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
    RETURN QUERY SELECT v_version, pg_current_xact_id()::text, v_first, v_last;
END
$$;

-- eventsource_append_group: set-based. 0001 called eventsource_append once per append (a
-- function call, its settings and a statement per step, per append); here each tenant of the
-- group costs one id check, one guarded update, two inserts into `streams` and one into
-- `events`, whatever the number of appends. Same contract: every append keeps its own outcome,
-- a rejected one (stored ids, failed expectation) writes nothing and disturbs no other, rows
-- come back numbered by the append's place in the arguments. Each append's events are inserted
-- contiguously, in order.
--
-- A group naming one stream twice runs its appends one by one as before (a set-based upsert
-- cannot move one row twice, and the second append must see the first); the store never sends
-- such a group.
CREATE OR REPLACE FUNCTION eventsource_append_group(
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
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    first int4 := 1;
    last int4;
    v_tenant text;
BEGIN
    IF (SELECT count(DISTINCT (t, a, i))
        FROM UNNEST(p_tenants, p_aggregate_types, p_aggregate_ids) AS s(t, a, i))
       < cardinality(p_tenants) THEN
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
        RETURN;
    END IF;
    FOR v_tenant IN SELECT DISTINCT t FROM UNNEST(p_tenants) AS t LOOP
        PERFORM set_config('eventsource.tenant', v_tenant, true);
        RETURN QUERY
        WITH appends AS (
            -- `skip`: the events of the appends before this one, of every tenant.
            SELECT a.n, a.aggregate_type, a.aggregate_id, a.expected, a.expected_version,
                   a.count, a.skip
            FROM (SELECT a.n::int4 AS n, a.tenant, a.aggregate_type, a.aggregate_id,
                         a.expected, a.expected_version, a.count::int8 AS count,
                         (sum(a.count) OVER (ORDER BY a.n) - a.count)::int4 AS skip
                  FROM UNNEST(p_tenants, p_aggregate_types, p_aggregate_ids, p_expected,
                              p_expected_versions, p_counts)
                      WITH ORDINALITY AS a(tenant, aggregate_type, aggregate_id, expected,
                                           expected_version, count, n)) AS a
            WHERE a.tenant = v_tenant
        ),
        -- Each event of these appends: its append and its index in the flattened arrays.
        members AS (
            SELECT a.n, k::int4 AS k
            FROM appends a, generate_series(a.skip + 1, a.skip + a.count::int4) AS k
        ),
        stored AS (
            SELECT DISTINCT m.n
            FROM members m
            JOIN events e ON e.event_id = p_ids[m.k]
        ),
        ok AS (
            SELECT a.* FROM appends a WHERE a.n NOT IN (SELECT s.n FROM stored s)
        ),
        updated AS (
            UPDATE streams SET version = streams.version + ok.count
            FROM ok
            WHERE streams.tenant_id = v_tenant
              AND streams.aggregate_type = ok.aggregate_type
              AND streams.aggregate_id = ok.aggregate_id
              AND (ok.expected = 'exists'
                   OR (ok.expected = 'exact' AND streams.version = ok.expected_version))
            RETURNING ok.n, streams.version
        ),
        created AS (
            INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, ok.aggregate_type, ok.aggregate_id, ok.count
            FROM ok
            WHERE ok.expected = 'none'
            ORDER BY ok.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
            RETURNING streams.aggregate_type, streams.aggregate_id, streams.version
        ),
        upserted AS (
            INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version)
            SELECT v_tenant, ok.aggregate_type, ok.aggregate_id, ok.count
            FROM ok
            WHERE ok.expected = 'any'
            ORDER BY ok.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
            DO UPDATE SET version = s.version + EXCLUDED.version
            RETURNING s.aggregate_type, s.aggregate_id, s.version
        ),
        moved AS (
            SELECT u.n, u.version FROM updated u
            UNION ALL
            SELECT ok.n, c.version
            FROM (SELECT * FROM created UNION ALL SELECT * FROM upserted) c
            JOIN ok ON ok.aggregate_type = c.aggregate_type AND ok.aggregate_id = c.aggregate_id
        ),
        inserted AS (
            INSERT INTO events (tenant_id, aggregate_type, aggregate_id, version, event_id,
                                event_type, schema_version, payload, metadata, correlation_id,
                                causation_id)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id,
                   mv.version - a.count + (m.k - a.skip), p_ids[m.k], p_types[m.k],
                   p_schema_versions[m.k], p_payloads[m.k], p_metadata[m.k],
                   p_correlation_ids[m.k], p_causation_ids[m.k]
            FROM moved mv
            JOIN appends a ON a.n = mv.n
            JOIN members m ON m.n = mv.n
            ORDER BY m.k
            RETURNING events.aggregate_type, events.aggregate_id, events.global_position
        ),
        written AS (
            SELECT a.n, min(i.global_position) AS first_position,
                   max(i.global_position) AS last_position
            FROM inserted i
            JOIN appends a
              ON a.aggregate_type = i.aggregate_type AND a.aggregate_id = i.aggregate_id
            GROUP BY a.n
        )
        SELECT a.n, mv.version,
               CASE WHEN w.n IS NOT NULL THEN pg_current_xact_id_if_assigned()::text END,
               w.first_position, w.last_position
        FROM appends a
        LEFT JOIN moved mv ON mv.n = a.n
        LEFT JOIN written w ON w.n = a.n
        ORDER BY a.n;
    END LOOP;
END
$$;
