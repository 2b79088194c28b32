-- Compliance: erasable client context, time-range indexes for reports and retention.
--
-- A record's source IP and user agent are personal data, so new records no longer hash
-- them directly: the chain covers context_hash = SHA-256(context_salt, ip, user_agent),
-- and erasing a person sets ip, user_agent and context_salt to NULL on their records.
-- The hash still verifies; the salt (random per record) is gone, so the erased values
-- cannot be recovered by guessing addresses against the hash. Records written before
-- this migration (context_hash NULL) hash ip and user_agent directly and keep them.
ALTER TABLE audit_log ADD COLUMN context_hash TEXT;
ALTER TABLE audit_log ADD COLUMN context_salt TEXT;
CREATE INDEX audit_log_tenant_created_idx ON audit_log (tenant_id, created_at);
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at);

-- Append-only for everyone, the table owner included. Two narrow exceptions, each only
-- for a transaction that declared itself:
-- * the retention job (agentplane.audit_retention = on) may DELETE;
-- * an erasure (agentplane.audit_erasure = on) may UPDATE a row only to set ip,
--   user_agent and context_salt to NULL, leaving every other column as it was.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND COALESCE(current_setting('agentplane.audit_retention', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE'
       AND COALESCE(current_setting('agentplane.audit_erasure', true), '') = 'on'
       AND OLD.context_hash IS NOT NULL
       AND NEW.ip IS NULL AND NEW.user_agent IS NULL AND NEW.context_salt IS NULL
       AND (NEW.id, NEW.tenant_id, NEW.seq, NEW.actor_type, NEW.actor_id, NEW.action,
            NEW.resource_type, NEW.resource_id, NEW.changes, NEW.outcome, NEW.reason,
            NEW.severity, NEW.request_id, NEW.created_at, NEW.prev_hash, NEW.hash,
            NEW.context_hash)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.seq, OLD.actor_type, OLD.actor_id, OLD.action,
            OLD.resource_type, OLD.resource_id, OLD.changes, OLD.outcome, OLD.reason,
            OLD.severity, OLD.request_id, OLD.created_at, OLD.prev_hash, OLD.hash,
            OLD.context_hash)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
