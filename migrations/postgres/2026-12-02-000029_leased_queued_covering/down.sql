DROP INDEX executions_leased_queued_idx;
CREATE INDEX executions_leased_queued_idx ON executions (tenant_id)
    WHERE status = 'QUEUED' AND lease_owner IS NOT NULL;
