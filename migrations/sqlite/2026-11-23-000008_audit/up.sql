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
CREATE INDEX audit_log_tenant_action_idx ON audit_log (tenant_id, action, id);
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

-- Append-only: SQLite has no session settings, so UPDATE is refused by a trigger and
-- DELETE is left to the application's retention path; verification detects any edit or
-- deletion made behind its back.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
