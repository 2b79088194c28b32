-- Fewer index entries and row locks per execution written (#15).
--
-- A step's or an event's tenant is its execution's, and the execution's own foreign key
-- already keeps that tenant. The tenant keys on execution_steps and execution_events
-- made every inserted step and event lock the tenant's row (FOR KEY SHARE): with many
-- drivers of one tenant writing at once, each lock on that one row joined the others in
-- a new multixact. Row-level security still checks each row's tenant_id.
ALTER TABLE execution_steps DROP CONSTRAINT execution_steps_tenant_id_fkey;
ALTER TABLE execution_events DROP CONSTRAINT execution_events_tenant_id_fkey;

-- Only rows with a value are ever looked up by these two (`idempotency_key = $1`,
-- `finished_at < $1`), and most executions have no key and, until they end, no finish:
-- partial indexes take no entry for them at enqueue or claim.
DROP INDEX executions_idempotency_idx;
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX executions_tenant_finished_idx;
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at)
    WHERE finished_at IS NOT NULL;
