-- The retention checkpoint (where a pruned chain starts) is signed with the audit chain
-- key when a master key is configured, so moving it needs the key.
ALTER TABLE audit_heads ADD COLUMN checkpoint_sig TEXT;

-- Retention and erasure no longer rest on a session setting any role may set. The
-- trigger lets a DELETE, or the UPDATE that clears a record's client context, through
-- only while one of the two functions below runs: they execute as the table's owner
-- (SECURITY DEFINER) and do only what their names say. The application role calls them;
-- it cannot delete or edit audit records itself. (The owner can always disable the
-- trigger: run the server as a role that does not own the tables.)
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
DECLARE
    guard TEXT := COALESCE(current_setting('agentplane.audit_guard', true), '');
    owner NAME := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID);
BEGIN
    IF current_user = owner AND TG_OP = 'DELETE' AND guard = 'prune' THEN
        RETURN OLD;
    END IF;
    IF current_user = owner AND TG_OP = 'UPDATE' AND guard = 'erase'
       AND OLD.context_hash IS NOT NULL
       AND NEW.ip IS NULL AND NEW.user_agent IS NULL AND NEW.context_salt IS NULL
       AND (NEW.id, NEW.tenant_id, NEW.seq, NEW.actor_type, NEW.actor_id, NEW.action,
            NEW.resource_type, NEW.resource_id, NEW.changes, NEW.outcome, NEW.reason,
            NEW.severity, NEW.request_id, NEW.created_at, NEW.prev_hash, NEW.hash,
            NEW.context_hash)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.seq, OLD.actor_type, OLD.actor_id, OLD.action,
            OLD.resource_type, OLD.resource_id, OLD.changes, OLD.outcome, OLD.reason,
            OLD.severity, OLD.request_id, OLD.created_at, OLD.prev_hash, OLD.hash,
            OLD.context_hash)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;

-- Retention: deletes records (checkpoint, p_upto] of one chain, a contiguous prefix, and
-- moves the checkpoint there with the caller's signature. Returns the records deleted.
CREATE FUNCTION agentplane_audit_prune(p_tenant TEXT, p_upto BIGINT, p_sig TEXT)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    cp BIGINT;
    last_hash TEXT;
    n BIGINT;
BEGIN
    SELECT checkpoint_seq INTO cp FROM audit_heads WHERE tenant_id = p_tenant FOR UPDATE;
    IF cp IS NULL OR p_upto <= cp THEN
        RETURN 0;
    END IF;
    SELECT hash INTO last_hash FROM audit_log WHERE tenant_id = p_tenant AND seq = p_upto;
    IF last_hash IS NULL THEN
        RAISE EXCEPTION 'record % of the chain does not exist', p_upto;
    END IF;
    PERFORM set_config('agentplane.audit_guard', 'prune', true);
    DELETE FROM audit_log WHERE tenant_id = p_tenant AND seq > cp AND seq <= p_upto;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('agentplane.audit_guard', '', true);
    UPDATE audit_heads
       SET checkpoint_seq = p_upto, checkpoint_hash = last_hash, checkpoint_sig = p_sig
     WHERE tenant_id = p_tenant;
    RETURN n;
END;
$$;

-- Erasure: for a user of p_tenant whose account is already erased, forgets which
-- pseudonym was theirs and clears the client context (IP, user agent, salt) of their
-- records and of anonymous records about their account. Returns the records cleared.
CREATE FUNCTION agentplane_audit_erase(p_tenant TEXT, p_user TEXT, p_now TIMESTAMP)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    ps TEXT;
    n BIGINT := 0;
    m BIGINT := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM users
                    WHERE tenant_id = p_tenant AND id = p_user AND status = 'ERASED') THEN
        RAISE EXCEPTION 'user % is not erased', p_user;
    END IF;
    PERFORM set_config('agentplane.audit_guard', 'erase', true);
    SELECT pseudonym INTO ps FROM audit_actors
     WHERE tenant_id = p_tenant AND actor_ref = 'user:' || p_user;
    IF ps IS NOT NULL THEN
        UPDATE audit_actors SET actor_ref = NULL, erased_at = p_now WHERE pseudonym = ps;
        UPDATE audit_log SET ip = NULL, user_agent = NULL, context_salt = NULL
         WHERE tenant_id = p_tenant AND actor_id = ps
           AND context_hash IS NOT NULL AND context_salt IS NOT NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    UPDATE audit_log SET ip = NULL, user_agent = NULL, context_salt = NULL
     WHERE tenant_id = p_tenant AND actor_type = 'ANONYMOUS'
       AND resource_type = 'user' AND resource_id = p_user
       AND context_hash IS NOT NULL AND context_salt IS NOT NULL;
    GET DIAGNOSTICS m = ROW_COUNT;
    PERFORM set_config('agentplane.audit_guard', '', true);
    RETURN n + m;
END;
$$;
