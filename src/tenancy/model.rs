//! Tenant model types.

use chrono::NaiveDateTime;

use crate::db::schema::tenants;
use crate::error::{AppError, AppResult};

pub use crate::db::ids::{RoleId, TenantId, UserId};

crate::db_enum! {
    /// Subscription plan.
    pub enum Plan {
        /// Free tier.
        Free => "FREE",
        /// Paid team tier.
        Pro => "PRO",
        /// Enterprise tier.
        Enterprise => "ENTERPRISE",
        /// Negotiated quotas.
        Custom => "CUSTOM",
    }
}

crate::db_enum! {
    /// Whether a tenant may act.
    pub enum TenantStatus {
        /// Normal operation.
        Active => "ACTIVE",
        /// Every principal of the tenant is refused.
        Suspended => "SUSPENDED",
    }
}

/// One row of `tenants`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = tenants)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TenantRow {
    /// Primary key.
    pub id: TenantId,
    /// URL-safe unique handle.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Stored [`Plan`].
    pub plan: Plan,
    /// Stored [`TenantStatus`].
    pub status: TenantStatus,
    /// Why the tenant is suspended, if it is.
    pub status_reason: Option<String>,
    /// The reserved tenant that holds platform operators.
    pub is_system: bool,
    /// Days audit records and finished executions are kept.
    pub data_retention_days: i64,
    /// Whether members must sign in with a second factor (enforced per request).
    pub require_mfa: bool,
    /// JSON array of CIDR ranges members and API keys may connect from (enforced).
    pub allowed_ip_ranges: String,
    /// Quota: users.
    pub max_users: i64,
    /// Quota: workflows.
    pub max_workflows: i64,
    /// Quota: executions started per calendar month.
    pub max_executions_per_month: i64,
    /// Quota: executions running at once.
    pub max_concurrent_executions: i64,
    /// Quota: GPU memory reserved at once, MiB.
    pub max_gpu_memory_mb: i64,
    /// JSON array of enabled feature-flag names.
    pub feature_flags: String,
    /// Limit: requests a minute across the tenant's principals (0: none).
    pub requests_per_minute: i64,
    /// Limit: expensive operations a minute (0: none).
    pub expensive_operations_per_minute: i64,
    /// Limit: GraphQL query cost a minute (0: none).
    pub query_cost_per_minute: i64,
    /// Whether the tenant's principals may run registered documents only.
    pub trusted_documents_only: bool,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

crate::db_enum! {
    /// Whether a user may sign in.
    pub enum UserStatus {
        /// May sign in.
        Active => "ACTIVE",
        /// May not sign in; existing sessions stop working.
        Disabled => "DISABLED",
        /// Personal data erased (`eraseUser`); may never sign in again.
        Erased => "ERASED",
    }
}

/// One row of `users`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = crate::db::schema::users)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct UserRow {
    /// Primary key.
    pub id: UserId,
    /// The user's tenant.
    pub tenant_id: TenantId,
    /// Unique across the platform, lower-case.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Built-in role name or custom role id.
    pub role: String,
    /// Stored [`UserStatus`].
    pub status: UserStatus,
    /// argon2id PHC string; `None` until a password is set.
    pub password_hash: Option<String>,
    /// Last successful sign-in.
    pub last_login_at: Option<NaiveDateTime>,
    /// Last request with the user's credentials (written at most every 5 minutes).
    pub last_active_at: Option<NaiveDateTime>,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// One row of `roles` (a tenant's custom role).
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = crate::db::schema::roles)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RoleRow {
    /// Primary key.
    pub id: RoleId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Unique within the tenant.
    pub name: String,
    /// Free text.
    pub description: String,
    /// JSON array of permission names.
    pub permissions: String,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// Default quotas per plan: (users, workflows, executions/month, concurrent, GPU MiB).
pub fn plan_quotas(plan: Plan) -> (i64, i64, i64, i64, i64) {
    match plan {
        Plan::Free => (5, 10, 1_000, 2, 0),
        Plan::Pro => (50, 200, 100_000, 20, 16_384),
        Plan::Enterprise | Plan::Custom => (1_000, 5_000, 10_000_000, 200, 262_144),
    }
}

/// Default rate limits per plan, a minute: (requests, expensive operations, query cost).
pub fn plan_limits(plan: Plan) -> (i64, i64, i64) {
    match plan {
        Plan::Free => (3_000, 60, 200_000),
        Plan::Pro => (30_000, 3_000, 2_000_000),
        Plan::Enterprise | Plan::Custom => (300_000, 60_000, 20_000_000),
    }
}

/// What a tenant's rate limits are, as carried by each of its principals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Requests a minute across all the tenant's principals (0: none).
    pub requests_per_minute: u64,
    /// Expensive operations a minute (0: none).
    pub expensive_operations_per_minute: u64,
    /// GraphQL query cost a minute (0: none).
    pub query_cost_per_minute: u64,
    /// Only registered documents may run.
    pub trusted_documents_only: bool,
}

impl TenantLimits {
    /// The limits `t` sets.
    pub fn of(t: &TenantRow) -> Self {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Self {
            requests_per_minute: n(t.requests_per_minute),
            expensive_operations_per_minute: n(t.expensive_operations_per_minute),
            query_cost_per_minute: n(t.query_cost_per_minute),
            trusted_documents_only: t.trusted_documents_only,
        }
    }
}

/// Builds a new tenant row with plan defaults.
pub fn new_tenant_row(
    slug: &str,
    name: &str,
    plan: Plan,
    is_system: bool,
    now: chrono::NaiveDateTime,
) -> TenantRow {
    let (u, w, e, c, g) = plan_quotas(plan);
    let (requests, expensive, cost) = plan_limits(plan);
    TenantRow {
        id: TenantId::new(),
        slug: slug.to_owned(),
        name: name.to_owned(),
        plan,
        status: TenantStatus::Active,
        status_reason: None,
        is_system,
        data_retention_days: 365,
        require_mfa: false,
        allowed_ip_ranges: "[]".into(),
        max_users: u,
        max_workflows: w,
        max_executions_per_month: e,
        max_concurrent_executions: c,
        max_gpu_memory_mb: g,
        feature_flags: serde_json::to_string(&super::features::plan_defaults(plan))
            .unwrap_or_else(|_| "[]".into()),
        requests_per_minute: requests,
        expensive_operations_per_minute: expensive,
        query_cost_per_minute: cost,
        trusted_documents_only: false,
        created_at: now,
        updated_at: now,
    }
}

/// Builds a new user row (no password yet).
pub fn new_user_row(
    tenant: TenantId,
    email: &str,
    display_name: &str,
    role: &str,
    now: chrono::NaiveDateTime,
) -> AppResult<UserRow> {
    let email =
        crate::policy::normalize_email(email).map_err(|m| AppError::bad_input("email", m))?;
    let display_name = display_name.trim();
    if display_name.is_empty() || display_name.len() > 200 {
        return Err(AppError::bad_input(
            "displayName",
            "the display name must be 1 to 200 characters",
        ));
    }
    Ok(UserRow {
        id: UserId::new(),
        tenant_id: tenant,
        email,
        display_name: display_name.to_owned(),
        role: role.to_owned(),
        status: UserStatus::Active,
        password_hash: None,
        last_login_at: None,
        last_active_at: None,
        created_at: now,
        updated_at: now,
    })
}

/// What the audit trail keeps of a tenant.
pub fn tenant_view(t: &TenantRow) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "plan": t.plan,
        "status": t.status,
        "statusReason": t.status_reason,
        "dataRetentionDays": t.data_retention_days,
        "requireMfa": t.require_mfa,
        "allowedIpRanges": t.allowed_ip_ranges,
        "maxUsers": t.max_users,
        "maxWorkflows": t.max_workflows,
        "maxExecutionsPerMonth": t.max_executions_per_month,
        "maxConcurrentExecutions": t.max_concurrent_executions,
        "maxGpuMemoryMb": t.max_gpu_memory_mb,
        "featureFlags": t.feature_flags,
        "requestsPerMinute": t.requests_per_minute,
        "expensiveOperationsPerMinute": t.expensive_operations_per_minute,
        "queryCostPerMinute": t.query_cost_per_minute,
        "trustedDocumentsOnly": t.trusted_documents_only,
    })
}
