CREATE OR REPLACE FUNCTION agentplane_auth_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('agentplane_auth',
        COALESCE(to_jsonb(NEW), to_jsonb(OLD)) ->> TG_ARGV[0]);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
DROP FUNCTION agentplane_channel(TEXT);
