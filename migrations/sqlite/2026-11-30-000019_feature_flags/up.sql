-- Feature flags gate from now on (tenancy::features). Until now they gated nothing, so
-- every tenant had everything its plan allowed: start each tenant at its plan's
-- defaults (names it held before were free-form and named no catalogue flag).
UPDATE tenants SET feature_flags = CASE plan
    WHEN 'FREE' THEN '["llm_steps","schedules"]'
    ELSE '["audit_export","gpu_steps","llm_steps","schedules"]'
END;
