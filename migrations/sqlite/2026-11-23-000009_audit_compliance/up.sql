-- Compliance: erasable client context, time-range indexes for reports and retention.
--
-- A record's source IP and user agent are personal data, so new records no longer hash
-- them directly: the chain covers context_hash = SHA-256(context_salt, ip, user_agent),
-- and erasing a person sets ip, user_agent and context_salt to NULL on their records.
-- Records written before this migration (context_hash NULL) keep hashing them directly.
ALTER TABLE audit_log ADD COLUMN context_hash TEXT;
ALTER TABLE audit_log ADD COLUMN context_salt TEXT;
CREATE INDEX audit_log_tenant_created_idx ON audit_log (tenant_id, created_at);
CREATE INDEX executions_tenant_finished_idx ON executions (tenant_id, finished_at);

-- UPDATE stays refused except the erasure shape: ip, user_agent and context_salt set to
-- NULL with every other column unchanged. (SQLite has no session settings to reserve
-- it further; verification catches any other edit.)
DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (
    OLD.context_hash IS NOT NULL
    AND NEW.ip IS NULL AND NEW.user_agent IS NULL AND NEW.context_salt IS NULL
    AND NEW.id IS OLD.id AND NEW.tenant_id IS OLD.tenant_id AND NEW.seq IS OLD.seq
    AND NEW.actor_type IS OLD.actor_type AND NEW.actor_id IS OLD.actor_id
    AND NEW.action IS OLD.action AND NEW.resource_type IS OLD.resource_type
    AND NEW.resource_id IS OLD.resource_id AND NEW.changes IS OLD.changes
    AND NEW.outcome IS OLD.outcome AND NEW.reason IS OLD.reason
    AND NEW.severity IS OLD.severity AND NEW.request_id IS OLD.request_id
    AND NEW.created_at IS OLD.created_at AND NEW.prev_hash IS OLD.prev_hash
    AND NEW.hash IS OLD.hash AND NEW.context_hash IS OLD.context_hash
)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
