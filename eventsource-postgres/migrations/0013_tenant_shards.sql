-- The tenant hash of relay shards, so that a shard reads only its tenants' events (ADR 0035).
--
-- FNV-1a, 32 bits, of the tenant id's UTF-8 bytes: exactly `shard_of` in eventsource-core
-- (a shard is the hash modulo the shard count), pinned against it by a test over many ids.
-- The arithmetic runs in int8 (a 32-bit hash times the 25-bit prime fits) and is masked back
-- to 32 bits after each byte, as the Rust `wrapping_mul` does. `convert_to` gives the UTF-8
-- bytes Rust hashes whatever the database encoding (SQL_ASCII, which converts nothing, aside).
--
-- A function call per row costs about 2 µs; the log reads that filter on it put it behind a
-- LATERAL subquery keyed on `tenant_id`, which the planner memoizes (one call per tenant of
-- the page, not per row). COST makes the planner see that the call is worth memoizing.
CREATE FUNCTION eventsource_tenant_hash(p_tenant text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
DECLARE
    bytes bytea := convert_to(p_tenant, 'UTF8');
    hash bigint := 2166136261;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        hash := ((hash # get_byte(bytes, i)) * 16777619) & 4294967295;
    END LOOP;
    RETURN hash;
END
$$;
