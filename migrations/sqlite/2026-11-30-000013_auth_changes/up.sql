-- Authentication changes, announced to every process: each process caches the
-- principals it resolved (auth::cache) and drops a tenant's entries when one of these
-- rows changes. The triggers fire on every path that writes them (API, CLI, another
-- process on the same file), so no writer can forget to announce. SQLite has no NOTIFY:
-- processes follow this log by id (ids follow commit order under the single writer).
CREATE TABLE auth_changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TRIGGER tenants_auth_changed_update AFTER UPDATE ON tenants FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status OR OLD.is_system IS NOT NEW.is_system
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.id); END;
CREATE TRIGGER tenants_auth_changed_delete AFTER DELETE ON tenants FOR EACH ROW
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (OLD.id); END;

CREATE TRIGGER users_auth_changed_update AFTER UPDATE ON users FOR EACH ROW
    WHEN OLD.role IS NOT NEW.role OR OLD.status IS NOT NEW.status
         OR OLD.tenant_id IS NOT NEW.tenant_id
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.tenant_id); END;
CREATE TRIGGER users_auth_changed_delete AFTER DELETE ON users FOR EACH ROW
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (OLD.tenant_id); END;

CREATE TRIGGER roles_auth_changed_update AFTER UPDATE ON roles FOR EACH ROW
    WHEN OLD.permissions IS NOT NEW.permissions
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.tenant_id); END;
CREATE TRIGGER roles_auth_changed_delete AFTER DELETE ON roles FOR EACH ROW
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (OLD.tenant_id); END;

CREATE TRIGGER sessions_auth_changed_update AFTER UPDATE ON sessions FOR EACH ROW
    WHEN OLD.revoked_at IS NOT NEW.revoked_at OR OLD.user_id IS NOT NEW.user_id
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.tenant_id); END;
CREATE TRIGGER sessions_auth_changed_delete AFTER DELETE ON sessions FOR EACH ROW
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (OLD.tenant_id); END;

CREATE TRIGGER api_keys_auth_changed_update AFTER UPDATE ON api_keys FOR EACH ROW
    WHEN OLD.revoked_at IS NOT NEW.revoked_at OR OLD.expires_at IS NOT NEW.expires_at
         OR OLD.role IS NOT NEW.role OR OLD.created_by IS NOT NEW.created_by
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (NEW.tenant_id); END;
CREATE TRIGGER api_keys_auth_changed_delete AFTER DELETE ON api_keys FOR EACH ROW
    BEGIN INSERT INTO auth_changes (tenant_id) VALUES (OLD.tenant_id); END;

-- `revoked_access_tokens` needs no trigger: an access token is revoked only together
-- with its session (sign-out), and the session's trigger announces that.
