-- Cached principals also carry what a tenant's settings enforce on every request
-- (allowedIpRanges, requireMfa, feature flags): a change to one of them is an
-- authentication change too, announced like a suspension.
DROP TRIGGER tenants_auth_changed_update;
CREATE TRIGGER tenants_auth_changed_update AFTER UPDATE ON tenants FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status OR OLD.is_system IS NOT NEW.is_system
         OR OLD.allowed_ip_ranges IS NOT NEW.allowed_ip_ranges
         OR OLD.require_mfa IS NOT NEW.require_mfa
         OR OLD.feature_flags IS NOT NEW.feature_flags
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.id); END;
