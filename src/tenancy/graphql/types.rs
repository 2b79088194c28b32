//! GraphQL object types of the tenancy domain: Tenant, User, Role, usage.

use super::*;

/// An organization: the unit of isolation, billing and quotas.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantRow);

/// Tenant-wide settings.
#[derive(SimpleObject, Debug)]
pub struct TenantSettings {
    /// Days audit records and finished executions are kept.
    pub data_retention_days: i64,
    /// Whether members must sign in with a second factor (TOTP): a member signed in
    /// without one may only enrol (`enrollTotp`, `confirmTotp`), read themselves and sign
    /// out; everything else is `FORBIDDEN` with reason `MFA_REQUIRED_BY_TENANT`. API keys
    /// are not affected.
    pub require_mfa: bool,
    /// CIDR ranges members and API keys may connect from; empty means any. Enforced on
    /// sign-in, session refresh, every HTTP request, websocket `connection_init` (and
    /// open sockets when the list changes) and API-key use: others get `FORBIDDEN` with
    /// reason `IP_NOT_ALLOWED`. The client address is the TCP peer's, or the one
    /// `AGENTPLANE_TRUSTED_PROXIES` report.
    pub allowed_ip_ranges: Vec<String>,
    /// Whether the tenant's users and API keys may run registered documents only
    /// (`registerTrustedDocument`); others are `FORBIDDEN` with reason
    /// `TRUSTED_DOCUMENTS_ONLY`.
    pub trusted_documents_only: bool,
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
    /// Most requests a minute across all the tenant's users and API keys, in bursts of a
    /// sixth of it (0: no limit). Each user or key also has its own limit
    /// (`AGENTPLANE_RATE_LIMIT_PER_MINUTE`). Over it: `RATE_LIMITED`, HTTP 429.
    pub requests_per_minute: i64,
    /// Most expensive operations a minute — starting executions, audit exports,
    /// compliance reports — in bursts of a sixth of it (0: no limit).
    pub expensive_operations_per_minute: i64,
    /// GraphQL query cost the tenant may spend a minute (0: no limit): each operation
    /// is charged its requested cost before it runs and given back what it did not
    /// use; every response reports both in `extensions.cost`.
    pub query_cost_per_minute: i64,
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
    async fn plan(&self) -> crate::graphql::enums::Plan {
        self.0.plan.into()
    }
    /// Whether the tenant may act.
    async fn status(&self) -> crate::graphql::enums::TenantStatus {
        self.0.status.into()
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
            trusted_documents_only: self.0.trusted_documents_only,
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
            requests_per_minute: self.0.requests_per_minute,
            expensive_operations_per_minute: self.0.expensive_operations_per_minute,
            query_cost_per_minute: self.0.query_cost_per_minute,
        }
    }
    /// Current usage against the quotas that are metered so far.
    async fn usage(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<TenantUsage> {
        let a = crate::graphql::app(ctx)?;
        let gpu: i64 = crate::cluster::store::tenant_reservations(&a.db, self.0.id)
            .await?
            .iter()
            .map(|r| r.memory_mb)
            .sum();
        Ok(TenantUsage {
            users: a
                .db
                .read(self.0.id, async |c| {
                    crate::tenancy::store::count_users(c, self.0.id).await
                })
                .await?,
            max_users: self.0.max_users,
            running_executions: crate::executions::store::running_count(
                &a.db,
                self.0.id,
                crate::db::ids::db_time(a.clock.now()),
            )
            .await?,
            max_concurrent_executions: self.0.max_concurrent_executions,
            gpu_memory_reserved_mb: gpu,
            max_gpu_memory_mb: self.0.max_gpu_memory_mb,
        })
    }
    /// Enabled feature flags, each gating what it names: `llm_steps` (publishing and
    /// starting workflows with `llm` steps), `gpu_steps` (steps that reserve GPUs),
    /// `schedules` (creating, resuming and firing schedules), `audit_export`
    /// (`GET /audit/export`, `complianceReport`). Without a flag those answer `FORBIDDEN`
    /// with reason `FEATURE_DISABLED` and the flag in `extensions.flag`. Plans turn on:
    /// FREE `llm_steps`, `schedules`; PRO, ENTERPRISE and CUSTOM all four.
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

/// A person who signs in.
#[derive(Debug, Clone)]
pub struct User(pub UserRow);

#[Object]
impl User {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::User, self.0.id.0)
    }
    /// Audit records about this user and of what they did, newest first (audit.read).
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)",
        guard = "crate::graphql::guards::Require(crate::rbac::Permission::AuditRead)"
    )]
    async fn audit_trail(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<crate::graphql::relay::Conn<crate::audit::graphql::AuditRecord>>
    {
        crate::audit::graphql::trail(
            ctx,
            "user",
            self.0.id.to_string(),
            Some(format!("user:{}", self.0.id)),
            first,
            after,
        )
        .await
    }
    /// E-mail address (unique across the platform).
    async fn email(&self) -> &str {
        &self.0.email
    }
    /// Display name.
    async fn display_name(&self) -> &str {
        &self.0.display_name
    }
    /// The user's role.
    async fn role(&self, ctx: &Context<'_>) -> async_graphql::Result<Role> {
        Ok(Role::resolve(ctx, &self.0.role).await?)
    }
    /// Whether the user may sign in.
    async fn status(&self) -> crate::graphql::enums::UserStatus {
        self.0.status.into()
    }
    /// Last successful sign-in.
    async fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_login_at.map(utc)
    }
    /// Last request made with the user's credentials (recorded at most every 5 minutes).
    async fn last_active_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_active_at.map(utc)
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

/// A role: built-in (ID is its name, e.g. `DEVELOPER`) or custom to the tenant.
#[derive(SimpleObject, Debug, Clone)]
pub struct Role {
    /// Built-in role name, or the custom role's global ID.
    pub id: ID,
    /// Display name.
    pub name: String,
    /// Whether this is a built-in role.
    pub built_in: bool,
    /// Permissions granted, as `resource.action` names.
    pub permissions: Vec<String>,
}

impl Role {
    pub(super) fn builtin(b: BuiltinRole) -> Self {
        Self {
            id: ID(b.as_str().to_owned()),
            name: b.as_str().to_owned(),
            built_in: true,
            permissions: perm_names(&b.permissions()),
        }
    }

    pub(super) fn custom(r: &RoleRow) -> Self {
        Self {
            id: to_global_id(NodeKind::Role, r.id.0),
            name: r.name.clone(),
            built_in: false,
            permissions: perm_names(&parse_permission_list(&r.permissions)),
        }
    }

    /// Resolves a stored role reference within the caller's tenant.
    pub async fn resolve(ctx: &Context<'_>, stored: &str) -> AppResult<Self> {
        if let Some(b) = BuiltinRole::parse(stored) {
            return Ok(Self::builtin(b));
        }
        let p = principal(ctx)?;
        let found = match uuid::Uuid::parse_str(stored) {
            Ok(u) => {
                crate::tenancy::store::find_role(&app(ctx)?.db, p.tenant_id, RoleId(u)).await?
            }
            Err(_) => None,
        };
        Ok(found.map_or_else(
            || Self {
                id: ID(stored.to_owned()),
                name: "(deleted role)".into(),
                built_in: false,
                permissions: Vec::new(),
            },
            |r| Self::custom(&r),
        ))
    }
}

/// Current usage against the quotas.
#[derive(SimpleObject)]
pub struct TenantUsage {
    /// Users now.
    pub users: i64,
    /// The `maxUsers` quota.
    pub max_users: i64,
    /// Executions holding a concurrency slot now: RUNNING, or claimed by a worker that has
    /// not yet written RUNNING.
    pub running_executions: i64,
    /// The `maxConcurrentExecutions` quota.
    pub max_concurrent_executions: i64,
    /// GPU memory reserved by this tenant's steps now, MiB.
    pub gpu_memory_reserved_mb: i64,
    /// The `maxGpuMemoryMb` quota.
    pub max_gpu_memory_mb: i64,
}

/// A GraphQL document registered by a tenant (a persisted query): clients send its
/// SHA-256 in `extensions.persistedQuery.sha256Hash` instead of the text.
#[derive(Debug, Clone)]
pub struct TrustedDocument(pub crate::tenancy::documents::TrustedDocumentRow);

#[Object]
impl TrustedDocument {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        to_global_id(NodeKind::TrustedDocument, self.0.id.0)
    }
    /// Lower-case hex SHA-256 of the document: what clients send.
    async fn sha256_hash(&self) -> &str {
        &self.0.sha256
    }
    /// A name for people.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The document's text.
    async fn document(&self) -> &str {
        &self.0.document
    }
    /// When it was registered.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
}
