-- Reliability: schedules remember why their last tick could not start, and readiness
-- proves the database still accepts writes (a full disk fails writes while reads work).
ALTER TABLE schedules ADD COLUMN last_error TEXT;

CREATE TABLE health_probe (
    id         INTEGER PRIMARY KEY,
    checked_at TIMESTAMP NOT NULL
);
INSERT INTO health_probe (id, checked_at) VALUES (1, CURRENT_TIMESTAMP);
