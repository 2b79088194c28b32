//! Tenant model types.

use chrono::NaiveDateTime;

use crate::db::schema::tenants;

crate::id_type!(
    /// Identifies a tenant (organization).
    TenantId
);

/// Subscription plan.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Plan {
    /// Free tier.
    Free,
    /// Paid team tier.
    Pro,
    /// Enterprise tier.
    Enterprise,
    /// Negotiated quotas.
    Custom,
}

impl Plan {
    /// Stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "FREE",
            Self::Pro => "PRO",
            Self::Enterprise => "ENTERPRISE",
            Self::Custom => "CUSTOM",
        }
    }

    /// Parses the stored form; unknown values read as `Custom`.
    pub fn parse(s: &str) -> Self {
        match s {
            "FREE" => Self::Free,
            "PRO" => Self::Pro,
            "ENTERPRISE" => Self::Enterprise,
            _ => Self::Custom,
        }
    }
}

/// Whether a tenant may act.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TenantStatus {
    /// Normal operation.
    Active,
    /// Every principal of the tenant is refused.
    Suspended,
}

impl TenantStatus {
    /// Stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
        }
    }

    /// Parses the stored form; anything unknown is treated as suspended (fail closed).
    pub fn parse(s: &str) -> Self {
        if s == "ACTIVE" {
            Self::Active
        } else {
            Self::Suspended
        }
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
    pub plan: String,
    /// Stored [`TenantStatus`].
    pub status: String,
    /// Why the tenant is suspended, if it is.
    pub status_reason: Option<String>,
    /// The reserved tenant that holds platform operators.
    pub is_system: bool,
    /// Days audit records and finished executions are kept.
    pub data_retention_days: i64,
    /// Whether members must use MFA (stored now; enforced by later work).
    pub require_mfa: bool,
    /// JSON array of CIDR ranges allowed to sign in (stored now; enforced later).
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
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}
