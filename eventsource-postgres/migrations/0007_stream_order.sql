-- Stream order: every stream's versions increase along the global log (ADR 0015).
--
-- The log is ordered by the writing transaction's id, and PostgreSQL assigns that id at a
-- transaction's first write, not when it takes a stream's row lock and not at commit. A
-- transaction that wrote anything before it appends to a stream (an append inside a caller's
-- transaction after other work, a group commit that moved another stream first) can therefore
-- write version n+1 with an older id than the transaction that wrote version n, and the log
-- would show n+1 before n.
--
-- Each streams row now remembers the transaction id of its last writer (`last_xid`), and every
-- guard that moves an existing row also requires `last_xid <= pg_current_xact_id()`: an older
-- transaction is refused as if its expectation had failed (nothing written, nothing raised, the
-- transaction stays usable). The store tells this refusal from a conflict by the stream's
-- version, which still satisfies the expectation, and retries its own statement in a new
-- transaction (younger than every writer it waited for); inside a caller's transaction it
-- reports `StoreError::RetryTransaction`. Equal ids are the same transaction appending twice:
-- its events follow each other by position.
--
-- Existing rows get the snapshot's `xmax` (the next id to be assigned), taken once this
-- migration holds `streams` exclusively, so that no writer is in flight: an upper bound of every
-- writer that committed before it. A transaction older than that bound is refused once more than
-- strictly necessary, never less. The bound is a constant column default, so adding the column
-- rewrites no row (it is stored once, in the catalog); the default is dropped at once.
--
-- Statements that write a streams row set `last_xid` themselves; with no default, an old binary
-- that creates a streams row without it fails on NOT NULL instead of writing a row no guard
-- could order. Upgrade binaries with the schema.

LOCK TABLE streams IN ACCESS EXCLUSIVE MODE;
DO $$
BEGIN
    EXECUTE format('ALTER TABLE streams ADD COLUMN last_xid xid8 NOT NULL DEFAULT %L',
                   pg_snapshot_xmax(pg_current_snapshot()));
END
$$;
ALTER TABLE streams ALTER COLUMN last_xid DROP DEFAULT;

-- As in 0006; the guards refuse a transaction older than the stream's last writer.
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
        INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version, last_xid)
        VALUES (p_tenant, p_aggregate_type, p_aggregate_id, v_count, pg_current_xact_id())
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
        RETURNING streams.version, streams.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'any' THEN
        -- The offered row takes the transaction's id only when it may be inserted: taken for an
        -- existing stream, it would give a transaction without one its id before the row's
        -- lock, and the transaction would come out of the lock's queue older than the writer
        -- it waited for. `DO UPDATE` and its guard take it after the lock.
        INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version, last_xid)
        SELECT p_tenant, p_aggregate_type, p_aggregate_id, v_count,
               CASE WHEN EXISTS (SELECT 1 FROM streams e
                                 WHERE e.tenant_id = p_tenant
                                   AND e.aggregate_type = p_aggregate_type
                                   AND e.aggregate_id = p_aggregate_id)
                    THEN '0'::xid8 ELSE pg_current_xact_id() END
        ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
        DO UPDATE SET version = s.version + EXCLUDED.version, last_xid = pg_current_xact_id()
        WHERE s.last_xid <= pg_current_xact_id()
        RETURNING s.version, s.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'exists' THEN
        -- The row lock first: an UPDATE that waits for it has its transaction id already,
        -- and would come out of the wait older than the writer it waited for. A lock taken by
        -- FOR UPDATE gives the id once granted.
        PERFORM 1 FROM streams
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
        FOR UPDATE;
        UPDATE streams SET version = streams.version + v_count, last_xid = pg_current_xact_id()
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
          AND streams.last_xid <= pg_current_xact_id()
        RETURNING streams.version, streams.stream_key INTO v_version, v_key;
    ELSIF p_expected = 'exact' THEN
        PERFORM 1 FROM streams
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
        FOR UPDATE;
        UPDATE streams SET version = streams.version + v_count, last_xid = pg_current_xact_id()
        WHERE tenant_id = p_tenant
          AND aggregate_type = p_aggregate_type
          AND aggregate_id = p_aggregate_id
          AND streams.version = p_expected_version
          AND streams.last_xid <= pg_current_xact_id()
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

-- As in 0006; the guards refuse a transaction older than the stream's last writer.
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
        -- The rows `updated` moves are locked first, in stream order: an UPDATE that waits for
        -- a row lock has its transaction id already (see `eventsource_append`).
        PERFORM 1
        FROM streams s
        JOIN UNNEST(p_tenants, p_aggregate_types, p_aggregate_ids, p_expected)
            AS a(tenant, aggregate_type, aggregate_id, expected)
          ON s.tenant_id = a.tenant AND s.aggregate_type = a.aggregate_type
         AND s.aggregate_id = a.aggregate_id
        WHERE a.tenant = v_tenant AND s.tenant_id = v_tenant
          AND a.expected IN ('exists', 'exact')
        ORDER BY s.aggregate_type, s.aggregate_id
        FOR UPDATE OF s;
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
            UPDATE streams SET version = streams.version + a.count,
                               last_xid = pg_current_xact_id()
            FROM appends a
            WHERE streams.tenant_id = v_tenant
              AND streams.aggregate_type = a.aggregate_type
              AND streams.aggregate_id = a.aggregate_id
              AND (a.expected = 'exists'
                   OR (a.expected = 'exact' AND streams.version = a.expected_version))
              AND streams.last_xid <= pg_current_xact_id()
            RETURNING a.n, streams.version, streams.stream_key
        ),
        created AS (
            INSERT INTO streams (tenant_id, aggregate_type, aggregate_id, version, last_xid)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count, pg_current_xact_id()
            FROM appends a
            WHERE a.expected = 'none'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO NOTHING
            RETURNING streams.aggregate_type, streams.aggregate_id, streams.version,
                      streams.stream_key
        ),
        upserted AS (
            -- As in `eventsource_append`: the offered row takes the id only when it may be
            -- inserted.
            INSERT INTO streams AS s (tenant_id, aggregate_type, aggregate_id, version, last_xid)
            SELECT v_tenant, a.aggregate_type, a.aggregate_id, a.count,
                   CASE WHEN EXISTS (SELECT 1 FROM streams e
                                     WHERE e.tenant_id = v_tenant
                                       AND e.aggregate_type = a.aggregate_type
                                       AND e.aggregate_id = a.aggregate_id)
                        THEN '0'::xid8 ELSE pg_current_xact_id() END
            FROM appends a
            WHERE a.expected = 'any'
            ORDER BY a.n
            ON CONFLICT (tenant_id, aggregate_type, aggregate_id)
            DO UPDATE SET version = s.version + EXCLUDED.version, last_xid = pg_current_xact_id()
            WHERE s.last_xid <= pg_current_xact_id()
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
