-- Authentication changes, announced to every process: each process caches the
-- principals it resolved (auth::cache) and drops a tenant's entries when one of these
-- rows changes. The triggers fire on every path that writes them (API, CLI, another
-- replica), so no writer can forget to announce; NOTIFY is delivered at commit.
CREATE FUNCTION agentplane_auth_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('agentplane_auth',
        COALESCE(to_jsonb(NEW), to_jsonb(OLD)) ->> TG_ARGV[0]);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER auth_changed_update AFTER UPDATE ON tenants FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.is_system IS DISTINCT FROM NEW.is_system)
    EXECUTE FUNCTION agentplane_auth_changed('id');
CREATE TRIGGER auth_changed_delete AFTER DELETE ON tenants FOR EACH ROW
    EXECUTE FUNCTION agentplane_auth_changed('id');

CREATE TRIGGER auth_changed_update AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.status IS DISTINCT FROM NEW.status
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');
CREATE TRIGGER auth_changed_delete AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');

CREATE TRIGGER auth_changed_update AFTER UPDATE ON roles FOR EACH ROW
    WHEN (OLD.permissions IS DISTINCT FROM NEW.permissions)
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');
CREATE TRIGGER auth_changed_delete AFTER DELETE ON roles FOR EACH ROW
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');

CREATE TRIGGER auth_changed_update AFTER UPDATE ON sessions FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');
CREATE TRIGGER auth_changed_delete AFTER DELETE ON sessions FOR EACH ROW
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');

CREATE TRIGGER auth_changed_update AFTER UPDATE ON api_keys FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.role IS DISTINCT FROM NEW.role OR OLD.created_by IS DISTINCT FROM NEW.created_by)
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');
CREATE TRIGGER auth_changed_delete AFTER DELETE ON api_keys FOR EACH ROW
    EXECUTE FUNCTION agentplane_auth_changed('tenant_id');

-- `revoked_access_tokens` needs no trigger: an access token is revoked only together
-- with its session (sign-out), and the session's trigger announces that.
