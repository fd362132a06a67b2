-- Blue/green rebuilds of PostgreSQL projections (issue 16 item 3, ADR 0018).
--
-- Each generation of a projection's read model lives in a schema of its own. Readers query
-- views named after the projection's tables in a reader schema (`public` by default); the
-- views select from the serving generation's schema. A rebuild creates a `building`
-- generation, fills it from the log, and cuts over in one transaction: it locks the
-- projection's rows here (the live runner reads the serving row FOR SHARE in every batch, so
-- the two serialize), catches up past the live checkpoint, moves that checkpoint, marks the
-- new generation `serving` and the old one `retired`, and points the views at the new schema.
-- A retired generation's schema is dropped after `drop_after`.
CREATE TABLE projection_generations (
    projection text NOT NULL,
    generation bigint NOT NULL CHECK (generation > 0),
    schema_name text NOT NULL,
    state text NOT NULL CHECK (state IN ('building', 'serving', 'retired', 'dropped')),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set by the cutover: when, and the log position the generation was complete up to.
    served_at timestamptz,
    cutover_transaction_id xid8,
    cutover_position bigint,
    -- Set when a later generation took over, and when its schema may be dropped.
    retired_at timestamptz,
    drop_after timestamptz,
    CONSTRAINT projection_generations_pkey PRIMARY KEY (projection, generation),
    CONSTRAINT projection_generations_schema_key UNIQUE (schema_name)
);

-- At most one generation serves and at most one is being built, per projection.
CREATE UNIQUE INDEX projection_generations_serving_key
    ON projection_generations (projection) WHERE state = 'serving';
CREATE UNIQUE INDEX projection_generations_building_key
    ON projection_generations (projection) WHERE state = 'building';

-- The dynamic DDL of generations, quoted here (format's %I) so that the library never builds
-- SQL from identifiers.

-- Creates a generation's schema (nothing if it exists: a resumed rebuild).
CREATE FUNCTION eventsource_create_generation_schema(p_schema text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', p_schema);
END
$$;

-- Points the reader views `p_reader_schema.t` at `p_schema.t` for each table `t`. Dropped and
-- created rather than replaced, so that a generation may change its tables' columns.
CREATE FUNCTION eventsource_point_generation_views(
    p_reader_schema text, p_schema text, p_tables text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY p_tables LOOP
        EXECUTE format('DROP VIEW IF EXISTS %I.%I', p_reader_schema, t);
        EXECUTE format('CREATE VIEW %I.%I AS SELECT * FROM %I.%I', p_reader_schema, t, p_schema, t);
    END LOOP;
END
$$;

-- Drops a generation's schema and everything in it.
CREATE FUNCTION eventsource_drop_generation_schema(p_schema text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', p_schema);
END
$$;
