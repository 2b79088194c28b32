-- Multi-factor sign-in (TOTP, RFC 6238). One factor per user: its secret sealed under
-- the master key (when one is configured), confirmed by a first code, and the last
-- time step accepted (a code is good once: replays within its window are refused).
CREATE TABLE mfa_factors (
    user_id      TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    secret       TEXT NOT NULL,
    confirmed_at TIMESTAMP,
    last_step    BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMP NOT NULL
);

-- Ten one-time recovery codes per enrolled user, stored as SHA-256 digests.
CREATE TABLE mfa_recovery_codes (
    code_hash  TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL,
    used_at    TIMESTAMP
);
CREATE INDEX mfa_recovery_codes_user ON mfa_recovery_codes (user_id);

-- The second step of a sign-in: a short-lived challenge (stored as a digest) that
-- `verifyMfa` completes with a code; a few wrong codes burn it.
CREATE TABLE mfa_challenges (
    token_hash TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    used_at    TIMESTAMP
);
CREATE INDEX mfa_challenges_user ON mfa_challenges (user_id);

-- Whether a session was opened with a second factor (its refreshed tokens say so too).
ALTER TABLE sessions ADD COLUMN mfa BOOLEAN NOT NULL DEFAULT 0;
