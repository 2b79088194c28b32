-- Per-tenant limits (their plan's defaults, overridable by platform admins; 0: no
-- limit): requests a minute across all of a tenant's principals, expensive operations
-- a minute (starting executions, audit exports, compliance reports), and the GraphQL
-- query cost a minute. And "trusted documents only": the tenant's principals may run
-- only documents registered with `registerTrustedDocument`.
ALTER TABLE tenants ADD COLUMN requests_per_minute BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN expensive_operations_per_minute BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN query_cost_per_minute BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN trusted_documents_only BOOLEAN NOT NULL DEFAULT 0;
UPDATE tenants SET
    requests_per_minute = CASE plan WHEN 'FREE' THEN 3000 WHEN 'PRO' THEN 30000 ELSE 300000 END,
    expensive_operations_per_minute = CASE plan WHEN 'FREE' THEN 60 WHEN 'PRO' THEN 3000 ELSE 60000 END,
    query_cost_per_minute = CASE plan WHEN 'FREE' THEN 200000 WHEN 'PRO' THEN 2000000 ELSE 20000000 END;

-- Cached principals carry these too: a change is announced like a suspension.
DROP TRIGGER tenants_auth_changed_update;
CREATE TRIGGER tenants_auth_changed_update AFTER UPDATE ON tenants FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status OR OLD.is_system IS NOT NEW.is_system
         OR OLD.allowed_ip_ranges IS NOT NEW.allowed_ip_ranges
         OR OLD.require_mfa IS NOT NEW.require_mfa
         OR OLD.feature_flags IS NOT NEW.feature_flags
         OR OLD.requests_per_minute IS NOT NEW.requests_per_minute
         OR OLD.expensive_operations_per_minute IS NOT NEW.expensive_operations_per_minute
         OR OLD.query_cost_per_minute IS NOT NEW.query_cost_per_minute
         OR OLD.trusted_documents_only IS NOT NEW.trusted_documents_only
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.id); END;

-- GraphQL documents a tenant registered (persisted queries): clients send the SHA-256
-- of the document instead of its text; a tenant in "trusted documents only" mode runs
-- nothing else.
CREATE TABLE trusted_documents (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    sha256     TEXT NOT NULL,
    name       TEXT NOT NULL,
    document   TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (tenant_id, sha256)
);
