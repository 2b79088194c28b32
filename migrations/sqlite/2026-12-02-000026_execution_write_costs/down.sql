DROP INDEX executions_tenant_finished_idx;
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at);
DROP INDEX executions_idempotency_idx;
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (tenant_id, idempotency_key);
