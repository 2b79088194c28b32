-- Cluster: nodes (every serve/worker process), their recent telemetry, GPU memory
-- reservations, and where GPU executions are placed.
CREATE TABLE nodes (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    version           TEXT NOT NULL,
    address           TEXT,
    labels            TEXT NOT NULL,
    worker_slots      BIGINT NOT NULL,
    started_at        TIMESTAMP NOT NULL,
    last_heartbeat_at TIMESTAMP NOT NULL,
    status            TEXT NOT NULL,
    draining          BOOLEAN NOT NULL DEFAULT FALSE,
    health_score      DOUBLE PRECISION NOT NULL,
    cpu_percent       DOUBLE PRECISION NOT NULL,
    memory_used_mb    BIGINT NOT NULL,
    memory_total_mb   BIGINT NOT NULL,
    load1             DOUBLE PRECISION NOT NULL,
    in_flight         BIGINT NOT NULL,
    step_error_rate   DOUBLE PRECISION NOT NULL,
    gpus              TEXT NOT NULL,
    offline_at        TIMESTAMP,
    updated_at        TIMESTAMP NOT NULL
);
CREATE INDEX nodes_status_idx ON nodes (status, last_heartbeat_at);

CREATE TABLE node_telemetry (
    id                  TEXT PRIMARY KEY,
    node_id             TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    at                  TIMESTAMP NOT NULL,
    health_score        DOUBLE PRECISION NOT NULL,
    cpu_percent         DOUBLE PRECISION NOT NULL,
    memory_used_mb      BIGINT NOT NULL,
    load1               DOUBLE PRECISION NOT NULL,
    in_flight           BIGINT NOT NULL,
    gpu_utilization     DOUBLE PRECISION NOT NULL,
    gpu_memory_used_mb  BIGINT NOT NULL,
    gpu_temperature_c   DOUBLE PRECISION NOT NULL
);
CREATE INDEX node_telemetry_node_idx ON node_telemetry (node_id, at);

CREATE TABLE gpu_reservations (
    id            TEXT PRIMARY KEY,
    node_id       TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    gpu_index     BIGINT NOT NULL,
    tenant_id     TEXT REFERENCES tenants(id),
    execution_id  TEXT REFERENCES executions(id) ON DELETE CASCADE,
    step_id       TEXT,
    memory_mb     BIGINT NOT NULL,
    reason        TEXT,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL
);
CREATE INDEX gpu_reservations_node_idx ON gpu_reservations (node_id, gpu_index);
CREATE INDEX gpu_reservations_tenant_idx ON gpu_reservations (tenant_id);
CREATE INDEX gpu_reservations_execution_idx ON gpu_reservations (execution_id);

CREATE TABLE execution_placements (
    execution_id   TEXT PRIMARY KEY REFERENCES executions(id) ON DELETE CASCADE,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    gpu_memory_mb  BIGINT NOT NULL,
    gpu_count      BIGINT NOT NULL,
    node_id        TEXT,
    waiting_reason TEXT,
    placed_at      TIMESTAMP,
    updated_at     TIMESTAMP NOT NULL
);
CREATE INDEX execution_placements_node_idx ON execution_placements (node_id);

-- Tenants see their own reservations and placements; maintenance reservations (no
-- tenant) and nodes are platform-level.
ALTER TABLE gpu_reservations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON gpu_reservations
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
ALTER TABLE execution_placements ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON execution_placements
    USING (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id))
    WITH CHECK (COALESCE(current_setting('agentplane.tenant_id', true), '') IN ('', tenant_id));
