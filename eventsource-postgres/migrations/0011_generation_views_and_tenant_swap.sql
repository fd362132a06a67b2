-- Projection generations, continued (issue 16, ADR 0018 and ADR 0020).
--
-- The cutover now replaces the readers' views in place (CREATE OR REPLACE VIEW), so that what
-- was granted on them, their owner, their comments and the views built on them survive it.
-- PostgreSQL replaces a view only when the new query keeps its columns (names, types, order;
-- new ones may come last): when a generation changed its columns the view is dropped and
-- created as before, and the privileges it had are granted again on the new one.
CREATE OR REPLACE FUNCTION eventsource_point_generation_views(
    p_reader_schema text, p_schema text, p_tables text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    acl aclitem[];
    g record;
BEGIN
    FOREACH t IN ARRAY p_tables LOOP
        BEGIN
            EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
                p_reader_schema, t, p_schema, t);
        EXCEPTION WHEN invalid_table_definition THEN
            -- The columns changed: keep the grants across a drop and create (regrole's text
            -- is a quoted identifier already).
            SELECT c.relacl INTO acl FROM pg_class c
            WHERE c.oid = to_regclass(format('%I.%I', p_reader_schema, t));
            EXECUTE format('DROP VIEW %I.%I', p_reader_schema, t);
            EXECUTE format('CREATE VIEW %I.%I AS SELECT * FROM %I.%I',
                p_reader_schema, t, p_schema, t);
            FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable
                     FROM aclexplode(acl) a
                     WHERE a.grantee <> a.grantor LOOP
                EXECUTE format('GRANT %s ON %I.%I TO %s%s', g.privilege_type, p_reader_schema, t,
                    CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                    CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END;
    END LOOP;
END
$$;

-- A tenant's rebuild inside a read model of all tenants (ADR 0020): copies every row of the
-- tables `p_tables` in the staging schema `p_from` into the same tables of `p_to`, in the
-- caller's transaction (after it deleted the tenant's rows there).
CREATE FUNCTION eventsource_copy_generation_rows(
    p_from text, p_to text, p_tables text[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    n bigint;
    total bigint := 0;
BEGIN
    FOREACH t IN ARRAY p_tables LOOP
        EXECUTE format('INSERT INTO %I.%I SELECT * FROM %I.%I', p_to, t, p_from, t);
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;
