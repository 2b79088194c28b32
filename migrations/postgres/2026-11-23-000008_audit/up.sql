-- The audit trail: one hash chain per tenant. Each record stores the previous record's
-- hash and the hash of its own canonical form; audit_heads holds each chain's end (and,
-- after retention deletes old records, the checkpoint the remaining chain starts from).
-- Actors are recorded by pseudonym; audit_actors maps pseudonyms to people and is the
-- only place a person's identity appears, so erasing it leaves the chain intact.
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    action        TEXT NOT NULL,
    resource_type TEXT,
    resource_id   TEXT,
    changes       TEXT,
    outcome       TEXT NOT NULL,
    reason        TEXT,
    severity      TEXT NOT NULL,
    ip            TEXT,
    user_agent    TEXT,
    request_id    TEXT,
    created_at    TIMESTAMP NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL,
    UNIQUE (tenant_id, seq)
);
CREATE INDEX audit_log_tenant_time_idx ON audit_log (tenant_id, id);
CREATE INDEX audit_log_tenant_actor_idx ON audit_log (tenant_id, actor_id, id);
CREATE INDEX audit_log_tenant_action_idx ON audit_log (tenant_id, action text_pattern_ops, id);
CREATE INDEX audit_log_tenant_resource_idx ON audit_log (tenant_id, resource_type, resource_id, id);

CREATE TABLE audit_heads (
    tenant_id        TEXT PRIMARY KEY,
    seq              BIGINT NOT NULL,
    hash             TEXT NOT NULL,
    checkpoint_seq   BIGINT NOT NULL DEFAULT 0,
    checkpoint_hash  TEXT NOT NULL
);

CREATE TABLE audit_actors (
    pseudonym   TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    actor_ref   TEXT,
    created_at  TIMESTAMP NOT NULL,
    erased_at   TIMESTAMP
);
CREATE UNIQUE INDEX audit_actors_ref_idx ON audit_actors (tenant_id, actor_ref);

-- Append-only for everyone, the table owner included: UPDATE and DELETE are refused
-- unless the transaction declared itself the retention job.
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND COALESCE(current_setting('agentplane.audit_retention', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
ALTER TABLE audit_actors ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_actors
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
