-- Only rows with a value are ever looked up by these two (`idempotency_key = ?`,
-- `finished_at < ?`), and most executions have no key and, until they end, no finish:
-- partial indexes take no entry for them (#15). (PostgreSQL also drops the tenant keys
-- of execution_steps and execution_events, whose checks locked the tenant's row; SQLite
-- checks a key without locking and keeps them.)
DROP INDEX executions_idempotency_idx;
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX executions_tenant_finished_idx;
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at)
    WHERE finished_at IS NOT NULL;
