//! GraphQL types for tenants.

use async_graphql::{ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::model::{Plan, TenantRow, TenantStatus};
use crate::db::ids::utc;
use crate::graphql::relay::{NodeKind, to_global_id};

/// An organization: the unit of isolation, billing and quotas.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantRow);

/// Tenant-wide settings.
#[derive(SimpleObject, Debug)]
pub struct TenantSettings {
    /// Days audit records and finished executions are kept.
    pub data_retention_days: i64,
    /// Whether members must use multi-factor authentication.
    pub require_mfa: bool,
    /// CIDR ranges allowed to sign in; empty means any.
    pub allowed_ip_ranges: Vec<String>,
}

/// Plan limits.
#[derive(SimpleObject, Debug)]
pub struct TenantQuotas {
    /// Most users.
    pub max_users: i64,
    /// Most workflows.
    pub max_workflows: i64,
    /// Most executions started per calendar month.
    pub max_executions_per_month: i64,
    /// Most executions running at once.
    pub max_concurrent_executions: i64,
    /// Most GPU memory reserved at once, MiB.
    pub max_gpu_memory_mb: i64,
}

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

#[Object]
impl Tenant {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::Tenant, self.0.id.0)
    }
    /// URL-safe unique handle.
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Subscription plan.
    async fn plan(&self) -> Plan {
        Plan::parse(&self.0.plan)
    }
    /// Whether the tenant may act.
    async fn status(&self) -> TenantStatus {
        TenantStatus::parse(&self.0.status)
    }
    /// Why the tenant is suspended, if it is.
    async fn status_reason(&self) -> Option<&str> {
        self.0.status_reason.as_deref()
    }
    /// Tenant-wide settings.
    async fn settings(&self) -> TenantSettings {
        TenantSettings {
            data_retention_days: self.0.data_retention_days,
            require_mfa: self.0.require_mfa,
            allowed_ip_ranges: json_list(&self.0.allowed_ip_ranges),
        }
    }
    /// Plan limits.
    async fn quotas(&self) -> TenantQuotas {
        TenantQuotas {
            max_users: self.0.max_users,
            max_workflows: self.0.max_workflows,
            max_executions_per_month: self.0.max_executions_per_month,
            max_concurrent_executions: self.0.max_concurrent_executions,
            max_gpu_memory_mb: self.0.max_gpu_memory_mb,
        }
    }
    /// Enabled feature flags.
    async fn feature_flags(&self) -> Vec<String> {
        json_list(&self.0.feature_flags)
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        utc(self.0.updated_at)
    }
}
