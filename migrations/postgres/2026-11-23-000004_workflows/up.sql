-- Workflows: editable drafts and immutable numbered versions.
CREATE TABLE workflows (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    name             TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    tags             TEXT NOT NULL DEFAULT '[]',
    environment      TEXT NOT NULL,
    visibility       TEXT NOT NULL,
    owner_id         TEXT REFERENCES users(id),
    created_by       TEXT NOT NULL,
    team_id          TEXT REFERENCES teams(id),
    definition       TEXT NOT NULL,
    latest_version   BIGINT NOT NULL DEFAULT 0,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL
);
CREATE INDEX workflows_tenant_idx ON workflows (tenant_id, id);
CREATE INDEX workflows_tenant_name_idx ON workflows (tenant_id, name);

CREATE TABLE workflow_versions (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    workflow_id  TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    definition   TEXT NOT NULL,
    published_by TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    UNIQUE (workflow_id, version)
);
CREATE INDEX workflow_versions_tenant_idx ON workflow_versions (tenant_id, workflow_id);

ALTER TABLE workflows ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON workflows
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
ALTER TABLE workflow_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON workflow_versions
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
