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
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}
