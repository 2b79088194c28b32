-- NOTIFY channels belong to the database, not to a schema: servers that share one
-- database in different schemas (deployments side by side, the test suite) heard each
-- other's execution events, queue wake-ups and credential changes. A channel's name now
-- carries the schema the connection works in, unless that is `public`, whose names stay
-- as they were. Every sender and listener goes through this function.
CREATE FUNCTION agentplane_channel(base TEXT) RETURNS TEXT LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN current_schema() IS NULL OR current_schema() = 'public' THEN base
                ELSE left(base || '.' || current_schema(), 63) END
$$;

CREATE OR REPLACE FUNCTION agentplane_auth_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify(agentplane_channel('agentplane_auth'),
        COALESCE(to_jsonb(NEW), to_jsonb(OLD)) ->> TG_ARGV[0]);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
