-- Deleting a tenant (`deleteTenant`): after its final export, its audit chain goes with
-- it. Like retention and erasure, only a SECURITY DEFINER function may delete audit
-- records, and this one only those of a suspended, non-system tenant, a batch at a time.
CREATE FUNCTION agentplane_audit_purge_tenant(p_tenant TEXT, p_limit BIGINT)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    n BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenants
                    WHERE id = p_tenant AND status = 'SUSPENDED' AND NOT is_system) THEN
        RAISE EXCEPTION 'only a suspended tenant''s audit chain can be purged';
    END IF;
    PERFORM set_config('agentplane.audit_guard', 'prune', true);
    DELETE FROM audit_log WHERE ctid IN
        (SELECT ctid FROM audit_log WHERE tenant_id = p_tenant LIMIT p_limit);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('agentplane.audit_guard', '', true);
    RETURN n;
END;
$$;
