//! The one diesel schema shared by both backends. Hand-maintained: it must match
//! `migrations/postgres` and `migrations/sqlite`, which the test suite applies on both.

diesel::table! {
    tenants (id) {
        id -> Text,
        slug -> Text,
        name -> Text,
        plan -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        is_system -> Bool,
        data_retention_days -> BigInt,
        require_mfa -> Bool,
        allowed_ip_ranges -> Text,
        max_users -> BigInt,
        max_workflows -> BigInt,
        max_executions_per_month -> BigInt,
        max_concurrent_executions -> BigInt,
        max_gpu_memory_mb -> BigInt,
        feature_flags -> Text,
        requests_per_minute -> BigInt,
        expensive_operations_per_minute -> BigInt,
        query_cost_per_minute -> BigInt,
        trusted_documents_only -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    roles (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        description -> Text,
        permissions -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        tenant_id -> Text,
        email -> Text,
        display_name -> Text,
        role -> Text,
        status -> Text,
        password_hash -> Nullable<Text>,
        last_login_at -> Nullable<Timestamp>,
        last_active_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    teams (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        description -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    team_members (team_id, user_id) {
        team_id -> Text,
        user_id -> Text,
        tenant_id -> Text,
        role -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        last_used_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        revoked_reason -> Nullable<Text>,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        mfa -> Bool,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        session_id -> Text,
        created_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    revoked_access_tokens (jti) {
        jti -> Text,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        alg -> Text,
        private_pem -> Text,
        public_x -> Text,
        active -> Bool,
        created_at -> Timestamp,
        retired_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        prefix -> Text,
        secret_hash -> Text,
        role -> Text,
        created_by -> Text,
        created_at -> Timestamp,
        expires_at -> Nullable<Timestamp>,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    login_attempts (key) {
        key -> Text,
        failures -> BigInt,
        locked_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    mfa_factors (user_id) {
        user_id -> Text,
        tenant_id -> Text,
        secret -> Text,
        confirmed_at -> Nullable<Timestamp>,
        last_step -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    mfa_recovery_codes (code_hash) {
        code_hash -> Text,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    mfa_challenges (token_hash) {
        token_hash -> Text,
        tenant_id -> Text,
        user_id -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        attempts -> Integer,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    password_tokens (token_hash) {
        token_hash -> Text,
        user_id -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        purpose -> Text,
        created_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    email_changes (token_hash) {
        token_hash -> Text,
        tenant_id -> Text,
        user_id -> Text,
        new_email -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    workflows (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        description -> Text,
        tags -> Text,
        environment -> Text,
        visibility -> Text,
        owner_id -> Nullable<Text>,
        created_by -> Text,
        team_id -> Nullable<Text>,
        definition -> Text,
        latest_version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    workflow_versions (id) {
        id -> Text,
        tenant_id -> Text,
        workflow_id -> Text,
        version -> BigInt,
        definition -> Text,
        published_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    secrets (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        key_id -> Text,
        nonce -> Text,
        ciphertext -> Text,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        allowed_hosts -> Nullable<Text>,
    }
}

diesel::table! {
    executions (id) {
        id -> Text,
        tenant_id -> Text,
        workflow_id -> Text,
        version_id -> Text,
        version -> BigInt,
        status -> Text,
        input -> Text,
        output -> Nullable<Text>,
        error -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        started_by -> Text,
        started_by_user -> Nullable<Text>,
        retry_of -> Nullable<Text>,
        schedule_id -> Nullable<Text>,
        timeout_seconds -> BigInt,
        deadline_at -> Nullable<Timestamp>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamp>,
        claims -> BigInt,
        seq -> BigInt,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
        cost_usd -> Double,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        unpriced_calls -> BigInt,
        trace_context -> Nullable<Text>,
    }
}

diesel::table! {
    execution_steps (id) {
        id -> Text,
        tenant_id -> Text,
        execution_id -> Text,
        step_id -> Text,
        kind -> Text,
        position -> BigInt,
        status -> Text,
        attempt -> BigInt,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        output -> Nullable<Text>,
        error -> Nullable<Text>,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
        cost_usd -> Double,
        unpriced_calls -> BigInt,
    }
}

diesel::table! {
    execution_events (id) {
        id -> Text,
        tenant_id -> Text,
        execution_id -> Text,
        seq -> BigInt,
        payload -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    schedules (id) {
        id -> Text,
        tenant_id -> Text,
        workflow_id -> Text,
        cron -> Text,
        timezone -> Text,
        status -> Text,
        input -> Text,
        next_run_at -> Nullable<Timestamp>,
        last_run_at -> Nullable<Timestamp>,
        last_execution_id -> Nullable<Text>,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    health_probe (id) {
        id -> Integer,
        checked_at -> Timestamp,
    }
}

diesel::table! {
    nodes (id) {
        id -> Text,
        name -> Text,
        kind -> Text,
        version -> Text,
        address -> Nullable<Text>,
        labels -> Text,
        worker_slots -> BigInt,
        started_at -> Timestamp,
        last_heartbeat_at -> Timestamp,
        status -> Text,
        draining -> Bool,
        health_score -> Double,
        cpu_percent -> Double,
        memory_used_mb -> BigInt,
        memory_total_mb -> BigInt,
        load1 -> Double,
        in_flight -> BigInt,
        step_error_rate -> Double,
        gpus -> Text,
        offline_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    node_telemetry (id) {
        id -> Text,
        node_id -> Text,
        at -> Timestamp,
        health_score -> Double,
        cpu_percent -> Double,
        memory_used_mb -> BigInt,
        load1 -> Double,
        in_flight -> BigInt,
        gpu_utilization -> Double,
        gpu_memory_used_mb -> BigInt,
        gpu_temperature_c -> Double,
    }
}

diesel::table! {
    gpu_reservations (id) {
        id -> Text,
        node_id -> Text,
        gpu_index -> BigInt,
        tenant_id -> Nullable<Text>,
        execution_id -> Nullable<Text>,
        step_id -> Nullable<Text>,
        memory_mb -> BigInt,
        reason -> Nullable<Text>,
        created_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    execution_placements (execution_id) {
        execution_id -> Text,
        tenant_id -> Text,
        gpu_memory_mb -> BigInt,
        gpu_count -> BigInt,
        node_id -> Nullable<Text>,
        waiting_reason -> Nullable<Text>,
        placed_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        tenant_id -> Text,
        seq -> BigInt,
        actor_type -> Text,
        actor_id -> Nullable<Text>,
        action -> Text,
        resource_type -> Nullable<Text>,
        resource_id -> Nullable<Text>,
        changes -> Nullable<Text>,
        outcome -> Text,
        reason -> Nullable<Text>,
        severity -> Text,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        request_id -> Nullable<Text>,
        created_at -> Timestamp,
        prev_hash -> Text,
        hash -> Text,
        context_hash -> Nullable<Text>,
        context_salt -> Nullable<Text>,
    }
}

diesel::table! {
    audit_heads (tenant_id) {
        tenant_id -> Text,
        seq -> BigInt,
        hash -> Text,
        checkpoint_seq -> BigInt,
        checkpoint_hash -> Text,
        checkpoint_sig -> Nullable<Text>,
    }
}

diesel::table! {
    audit_actors (pseudonym) {
        pseudonym -> Text,
        tenant_id -> Text,
        actor_ref -> Nullable<Text>,
        created_at -> Timestamp,
        erased_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    trusted_documents (id) {
        id -> Text,
        tenant_id -> Text,
        sha256 -> Text,
        name -> Text,
        document -> Text,
        created_by -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    oidc_providers (tenant_id) {
        tenant_id -> Text,
        issuer -> Text,
        client_id -> Text,
        client_secret_name -> Nullable<Text>,
        allowed_domains -> Text,
        role_claim -> Nullable<Text>,
        role_mapping -> Text,
        default_role -> Text,
        jit_provisioning -> Bool,
        enabled -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    oidc_logins (state_hash) {
        state_hash -> Text,
        tenant_id -> Text,
        nonce -> Text,
                code_verifier -> Text,
        browser_hash -> Text,
        return_to -> Nullable<Text>,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(users -> tenants (tenant_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    roles,
    users,
    teams,
    team_members,
    sessions,
    refresh_tokens,
    revoked_access_tokens,
    signing_keys,
    api_keys,
    login_attempts,
    password_tokens,
    email_changes,
    mfa_factors,
    mfa_recovery_codes,
    mfa_challenges,
    trusted_documents,
    oidc_providers,
    oidc_logins,
    workflows,
    workflow_versions,
    secrets,
    executions,
    execution_steps,
    execution_events,
    schedules,
    nodes,
    node_telemetry,
    gpu_reservations,
    execution_placements,
    audit_log,
    audit_heads,
    audit_actors,
);
