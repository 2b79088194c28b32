-- Foundation: tenants (organizations). Every tenant-owned table added later carries
-- tenant_id and an index that starts with it.
CREATE TABLE tenants (
    id                        TEXT PRIMARY KEY,
    slug                      TEXT NOT NULL UNIQUE,
    name                      TEXT NOT NULL,
    plan                      TEXT NOT NULL,
    status                    TEXT NOT NULL,
    status_reason             TEXT,
    is_system                 BOOLEAN NOT NULL DEFAULT FALSE,
    data_retention_days       BIGINT NOT NULL,
    require_mfa               BOOLEAN NOT NULL DEFAULT FALSE,
    allowed_ip_ranges         TEXT NOT NULL DEFAULT '[]',
    max_users                 BIGINT NOT NULL,
    max_workflows             BIGINT NOT NULL,
    max_executions_per_month  BIGINT NOT NULL,
    max_concurrent_executions BIGINT NOT NULL,
    max_gpu_memory_mb         BIGINT NOT NULL,
    feature_flags             TEXT NOT NULL DEFAULT '[]',
    created_at                TIMESTAMP NOT NULL,
    updated_at                TIMESTAMP NOT NULL
);
