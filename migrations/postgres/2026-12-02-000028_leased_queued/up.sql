-- The claim's concurrency quota counts, besides RUNNING executions, the QUEUED ones a
-- driver holds a lease on (it writes RUNNING only with its first write). Only those rows
-- are in this index, a few per worker, so counting them costs the same whatever the
-- queue holds. The claim names the status as the literal 'QUEUED' to match it.
CREATE INDEX executions_leased_queued_idx ON executions (tenant_id)
    WHERE status = 'QUEUED' AND lease_owner IS NOT NULL;
