-- A tenant's QUEUED or RUNNING executions, newest first by id: what every new
-- `executionEvents` subscription reads for its snapshot. `(tenant_id, status)` alone
-- made that read sort every such execution of the tenant (all their rows read, at
-- every subscription); with `id` in the index it stops after the page (#15).
DROP INDEX executions_tenant_status_idx;
CREATE INDEX executions_tenant_status_id_idx ON executions (tenant_id, status, id);
