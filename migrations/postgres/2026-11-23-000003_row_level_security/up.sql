-- Row-level security: a second wall behind the application's own tenant filter.
-- Request-scoped queries run in a transaction that sets agentplane.tenant_id to the
-- caller's tenant; rows of other tenants are then invisible and cannot be written.
-- Platform-level paths (sign-in lookup by e-mail, token checks, platform admin) leave
-- the setting empty. Table owners bypass RLS: run `serve` as a role that does not own
-- the tables (see README) for the wall to apply.

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roles
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON teams
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE team_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON team_members
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', id));
