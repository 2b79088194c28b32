DROP INDEX executions_tenant_finished_idx;
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at);
DROP INDEX executions_idempotency_idx;
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (tenant_id, idempotency_key);
ALTER TABLE execution_events ADD CONSTRAINT execution_events_tenant_id_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenants(id);
ALTER TABLE execution_steps ADD CONSTRAINT execution_steps_tenant_id_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenants(id);
