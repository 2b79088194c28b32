-- Single sign-on through OpenID Connect: one identity provider per tenant, and the
-- sign-ins in flight (state, nonce and PKCE verifier of each, single use, short-lived).
CREATE TABLE oidc_providers (
    tenant_id          TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    issuer             TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    client_secret_name TEXT,
    allowed_domains    TEXT NOT NULL,
    role_claim         TEXT,
    role_mapping       TEXT NOT NULL,
    default_role       TEXT NOT NULL,
    jit_provisioning   BOOLEAN NOT NULL,
    enabled            BOOLEAN NOT NULL,
    created_at         TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL
);

CREATE TABLE oidc_logins (
    state_hash    TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    nonce         TEXT NOT NULL,
        code_verifier TEXT NOT NULL,
    browser_hash  TEXT NOT NULL,
    return_to     TEXT,
    created_at    TIMESTAMP NOT NULL,
    expires_at    TIMESTAMP NOT NULL,
    used_at       TIMESTAMP
);
CREATE INDEX oidc_logins_expiry ON oidc_logins (expires_at);

-- A new feature flag, `sso`, in every paid plan's defaults: tenants on exactly their
-- plan's previous defaults get it.
UPDATE tenants SET feature_flags = '["audit_export","gpu_steps","llm_steps","schedules","sso"]'
 WHERE feature_flags = '["audit_export","gpu_steps","llm_steps","schedules"]';
