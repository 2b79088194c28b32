-- The claim counts a tenant's leased QUEUED executions whose lease is still live
-- (lease_expires_at >= now). With the lease end in the index the count is a range scan
-- of the index alone; keyed on the tenant only, it read every leased row from the table
-- to compare its lease end (up to two per worker, for every claim).
DROP INDEX executions_leased_queued_idx;
CREATE INDEX executions_leased_queued_idx ON executions (tenant_id, lease_expires_at)
    WHERE status = 'QUEUED' AND lease_owner IS NOT NULL;
