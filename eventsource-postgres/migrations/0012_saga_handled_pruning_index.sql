-- The pruning index, made partial so that the deduplication lookup can never use it.
--
-- `saga_handled_log_idx` shares its leading columns (tenant_id, saga) with the primary key. On a
-- table without statistics (new, or not yet analysed) the planner can choose it for the
-- lookup `(tenant_id, saga, instance, event_id) = (...)`, which then reads every record of the
-- saga instead of one (docs/adr/0028). A partial index is only usable by a query that implies
-- its predicate: the lookup never mentions `global_position`, pruning always does. Every
-- recorded event has a log position of at least 1, so the index still covers every row.
DROP INDEX saga_handled_log_idx;
CREATE INDEX saga_handled_log_idx ON saga_handled (tenant_id, saga, transaction_id, global_position)
    WHERE global_position > 0;
