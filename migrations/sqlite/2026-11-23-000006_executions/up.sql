-- Executions (the durable queue), their per-step records, their event log, and schedules.
CREATE TABLE executions (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants(id),
    workflow_id       TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    version_id        TEXT NOT NULL,
    version           BIGINT NOT NULL,
    status            TEXT NOT NULL,
    input             TEXT NOT NULL,
    output            TEXT,
    error             TEXT,
    idempotency_key   TEXT,
    started_by        TEXT NOT NULL,
    started_by_user   TEXT,
    retry_of          TEXT,
    schedule_id       TEXT,
    timeout_seconds   BIGINT NOT NULL,
    deadline_at       TIMESTAMP,
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMP,
    claims            BIGINT NOT NULL DEFAULT 0,
    seq               BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    created_at        TIMESTAMP NOT NULL,
    started_at        TIMESTAMP,
    finished_at       TIMESTAMP,
    updated_at        TIMESTAMP NOT NULL
);
CREATE INDEX executions_tenant_workflow_idx ON executions (tenant_id, workflow_id, created_at);
CREATE INDEX executions_tenant_created_idx ON executions (tenant_id, created_at);
CREATE INDEX executions_tenant_status_idx ON executions (tenant_id, status);
CREATE INDEX executions_queue_idx ON executions (status, created_at);
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (tenant_id, idempotency_key);

CREATE TABLE execution_steps (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants(id),
    execution_id      TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    step_id           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    position          BIGINT NOT NULL,
    status            TEXT NOT NULL,
    attempt           BIGINT NOT NULL DEFAULT 0,
    started_at        TIMESTAMP,
    finished_at       TIMESTAMP,
    output            TEXT,
    error             TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    UNIQUE (execution_id, step_id)
);
CREATE INDEX execution_steps_tenant_idx ON execution_steps (tenant_id, execution_id);

CREATE TABLE execution_events (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    UNIQUE (execution_id, seq)
);
CREATE INDEX execution_events_tenant_idx ON execution_events (tenant_id, execution_id, seq);

CREATE TABLE schedules (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants(id),
    workflow_id       TEXT NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    cron              TEXT NOT NULL,
    timezone          TEXT NOT NULL,
    status            TEXT NOT NULL,
    input             TEXT NOT NULL,
    next_run_at       TIMESTAMP,
    last_run_at       TIMESTAMP,
    last_execution_id TEXT,
    created_by        TEXT NOT NULL,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL
);
CREATE INDEX schedules_tenant_idx ON schedules (tenant_id, workflow_id);
CREATE INDEX schedules_due_idx ON schedules (status, next_run_at);
