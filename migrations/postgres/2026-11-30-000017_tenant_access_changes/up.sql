-- Cached principals also carry what a tenant's settings enforce on every request
-- (allowedIpRanges, requireMfa, feature flags): a change to one of them is an
-- authentication change too, announced like a suspension.
DROP TRIGGER auth_changed_update ON tenants;
CREATE TRIGGER auth_changed_update AFTER UPDATE ON tenants FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.is_system IS DISTINCT FROM NEW.is_system
          OR OLD.allowed_ip_ranges IS DISTINCT FROM NEW.allowed_ip_ranges
          OR OLD.require_mfa IS DISTINCT FROM NEW.require_mfa
          OR OLD.feature_flags IS DISTINCT FROM NEW.feature_flags)
    EXECUTE FUNCTION agentplane_auth_changed('id');
