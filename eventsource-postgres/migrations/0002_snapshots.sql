-- Aggregate snapshots: one per stream and snapshot schema version, only ever moved forward.
CREATE TABLE snapshots (
    tenant_id text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    schema_version integer NOT NULL CHECK (schema_version >= 0),
    version bigint NOT NULL CHECK (version > 0),
    state jsonb NOT NULL,
    taken_at timestamptz NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (tenant_id, aggregate_type, aggregate_id, schema_version)
);

ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE snapshots FORCE ROW LEVEL SECURITY;
CREATE POLICY snapshots_tenant_isolation ON snapshots
    USING (tenant_id = (SELECT eventsource_current_tenant()))
    WITH CHECK (tenant_id = (SELECT eventsource_current_tenant()));

-- The snapshot of a stream at one schema version, in one autocommit round trip scoped to the
-- stream's tenant.
CREATE FUNCTION eventsource_load_snapshot(
    p_tenant text,
    p_aggregate_type text,
    p_aggregate_id text,
    p_schema_version int4
) RETURNS TABLE (version bigint, state jsonb, taken_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM set_config('eventsource.tenant', p_tenant, true);
    RETURN QUERY
    SELECT s.version, s.state, s.taken_at
    FROM snapshots s
    WHERE s.tenant_id = p_tenant
      AND s.aggregate_type = p_aggregate_type
      AND s.aggregate_id = p_aggregate_id
      AND s.schema_version = p_schema_version;
END
$$;
