-- Account lifecycle: when a user was last active (written at most every few minutes),
-- what a one-time password token is for (SET: an invitation; RESET: a self-service
-- reset, short-lived) and when it was issued, and e-mail changes waiting for the new
-- address to confirm them.
ALTER TABLE users ADD COLUMN last_active_at TIMESTAMP;
ALTER TABLE password_tokens ADD COLUMN purpose TEXT NOT NULL DEFAULT 'SET';
ALTER TABLE password_tokens ADD COLUMN created_at TIMESTAMP;
CREATE INDEX password_tokens_user ON password_tokens (user_id);

CREATE TABLE email_changes (
    token_hash TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    new_email  TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at    TIMESTAMP
);
CREATE INDEX email_changes_user ON email_changes (user_id);

ALTER TABLE email_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON email_changes
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
