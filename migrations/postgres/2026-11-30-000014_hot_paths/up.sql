-- Indexes that serve list and queue reads in their own order, so their cost follows the
-- page, not the history (#15).

-- The claim walks QUEUED (and lapsed RUNNING) executions in (created_at, id) order.
DROP INDEX executions_queue_idx;
CREATE INDEX executions_claim_idx ON executions (status, created_at, id);

-- The newest executions of a workflow (`recentExecutions`): newest first by id.
CREATE INDEX executions_tenant_workflow_id_idx ON executions (tenant_id, workflow_id, id);

-- `executions` pages: a tenant's newest first by id (keyset on id).
CREATE INDEX executions_tenant_id_idx ON executions (tenant_id, id);

-- Executions started per tenant and month, counted as they start: the monthly quota
-- check reads one row instead of counting the month's executions. A month's row is
-- seeded from `executions` the first time it is needed.
CREATE TABLE tenant_usage (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    month      TEXT NOT NULL,
    executions BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, month)
);
ALTER TABLE tenant_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_usage
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
