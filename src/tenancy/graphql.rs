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
        self.0.plan
    }
    /// Whether the tenant may act.
    async fn status(&self) -> TenantStatus {
        self.0.status
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
    /// Current usage against the quotas that are metered so far.
    async fn usage(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<TenantUsage> {
        let a = crate::graphql::app(ctx)?;
        let gpu: i64 = crate::cluster::store::tenant_reservations(&a.db, self.0.id)
            .await?
            .iter()
            .map(|r| r.memory_mb)
            .sum();
        Ok(TenantUsage {
            users: super::store::count_users(&a.db, self.0.id).await?,
            max_users: self.0.max_users,
            running_executions: crate::executions::store::running_count(&a.db, self.0.id).await?,
            max_concurrent_executions: self.0.max_concurrent_executions,
            gpu_memory_reserved_mb: gpu,
            max_gpu_memory_mb: self.0.max_gpu_memory_mb,
        })
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

// ---- users, roles, and the tenancy API ----

use async_graphql::{Context, InputObject};

use super::model::{RoleId, RoleRow, UserId, UserRow, UserStatus};
use crate::auth::{Principal, principal};
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::relay::{Conn, Page, decode_expecting};
use crate::rbac::{BuiltinRole, Permission, PermissionSet, Require, parse_permission_list};

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
        guard = "crate::rbac::Require(crate::rbac::Permission::AuditRead)"
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
    async fn status(&self) -> UserStatus {
        self.0.status
    }
    /// Last successful sign-in.
    async fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_login_at.map(utc)
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

fn perm_names(set: &PermissionSet) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_owned()).collect()
}

impl Role {
    fn builtin(b: BuiltinRole) -> Self {
        Self {
            id: ID(b.as_str().to_owned()),
            name: b.as_str().to_owned(),
            built_in: true,
            permissions: perm_names(&b.permissions()),
        }
    }

    fn custom(r: &RoleRow) -> Self {
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
            Ok(u) => super::store::find_role(&app(ctx)?.db, p.tenant_id, RoleId(u)).await?,
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

/// Resolves a role given by a client (built-in name or custom role ID) to its stored
/// form, refusing escalation: nobody grants a permission they do not hold.
pub async fn resolve_role_input(
    app: &crate::app::App,
    p: &Principal,
    id: &ID,
    field: &str,
) -> AppResult<String> {
    let (stored, perms) = if let Some(b) = BuiltinRole::parse(id.as_str()) {
        if b == BuiltinRole::PlatformAdmin && !p.platform_admin {
            return Err(AppError::forbidden(
                "only platform admins grant PLATFORM_ADMIN",
            ));
        }
        (b.as_str().to_owned(), b.permissions())
    } else {
        let uuid = decode_expecting(id, NodeKind::Role, "role").map_err(|_| {
            AppError::bad_input(field, "not a role: use a built-in role name or a role ID")
        })?;
        let r = super::store::find_role(&app.db, p.tenant_id, RoleId(uuid))
            .await?
            .ok_or_else(|| AppError::not_found("role"))?;
        (r.id.to_string(), parse_permission_list(&r.permissions))
    };
    if !perms.is_subset(&p.permissions) {
        return Err(
            AppError::forbidden("you cannot grant permissions you do not hold")
                .with_detail("field", field),
        );
    }
    Ok(stored)
}

/// Current usage against the quotas.
#[derive(SimpleObject)]
pub struct TenantUsage {
    /// Users now.
    pub users: i64,
    /// The `maxUsers` quota.
    pub max_users: i64,
    /// Executions RUNNING now.
    pub running_executions: i64,
    /// The `maxConcurrentExecutions` quota.
    pub max_concurrent_executions: i64,
    /// GPU memory reserved by this tenant's steps now, MiB.
    pub gpu_memory_reserved_mb: i64,
    /// The `maxGpuMemoryMb` quota.
    pub max_gpu_memory_mb: i64,
}

/// A new user's owner details for `createTenant`.
#[derive(InputObject)]
pub struct OwnerInput {
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub display_name: String,
}

/// Input of `createTenant`.
#[derive(InputObject)]
pub struct CreateTenantInput {
    /// URL-safe handle: 3–40 of a-z, 0-9 and `-`.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Plan; its default quotas apply.
    pub plan: Plan,
    /// The first OWNER.
    pub owner: OwnerInput,
}

/// Result of `createTenant`.
#[derive(SimpleObject)]
pub struct CreateTenantPayload {
    /// The new tenant.
    pub tenant: Tenant,
    /// Its first owner.
    pub owner: User,
    /// One-time token for `setPassword` (valid 7 days).
    pub set_password_token: String,
}

/// Input of `suspendTenant`.
#[derive(InputObject)]
pub struct SuspendTenantInput {
    /// The tenant's ID.
    pub tenant_id: ID,
    /// Why (shown to the tenant's users).
    pub reason: String,
}

/// Input of `reactivateTenant`.
#[derive(InputObject)]
pub struct ReactivateTenantInput {
    /// The tenant's ID.
    pub tenant_id: ID,
}

/// Result of tenant changes.
#[derive(SimpleObject)]
pub struct TenantPayload {
    /// The tenant after the change.
    pub tenant: Tenant,
}

/// Input of `createUser`.
#[derive(InputObject)]
pub struct CreateUserInput {
    /// E-mail address (unique across the platform).
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// A built-in role name or a custom role's ID.
    pub role_id: ID,
}

/// Result of `createUser`.
#[derive(SimpleObject)]
pub struct CreateUserPayload {
    /// The new user.
    pub user: User,
    /// One-time token for `setPassword` (valid 7 days).
    pub set_password_token: String,
}

/// Input of `updateUserRole`.
#[derive(InputObject)]
pub struct UpdateUserRoleInput {
    /// The user's ID.
    pub user_id: ID,
    /// A built-in role name or a custom role's ID.
    pub role_id: ID,
}

/// Input of `restoreTenantOwner`.
#[derive(InputObject)]
pub struct RestoreTenantOwnerInput {
    /// The tenant to repair.
    pub tenant_id: ID,
    /// The user of that tenant who becomes an active OWNER.
    pub user_id: ID,
}

/// Input of `disableUser`.
#[derive(InputObject)]
pub struct DisableUserInput {
    /// The user's ID.
    pub user_id: ID,
}

/// Result of user changes.
#[derive(SimpleObject)]
pub struct UserPayload {
    /// The user after the change.
    pub user: User,
}

/// Input of `createRole`.
#[derive(InputObject)]
pub struct CreateRoleInput {
    /// Unique in the tenant.
    pub name: String,
    /// Free text.
    #[graphql(default)]
    pub description: String,
    /// `resource.action` names.
    pub permissions: Vec<String>,
}

/// Result of `createRole`.
#[derive(SimpleObject)]
pub struct RolePayload {
    /// The role.
    pub role: Role,
}

/// Quota overrides for `updateTenantPlan`; unset fields take the plan's default.
#[derive(InputObject, Default)]
pub struct QuotasInput {
    /// Most users.
    pub max_users: Option<i64>,
    /// Most workflows.
    pub max_workflows: Option<i64>,
    /// Most executions started per calendar month.
    pub max_executions_per_month: Option<i64>,
    /// Most executions running at once.
    pub max_concurrent_executions: Option<i64>,
    /// Most GPU memory reserved at once, MiB.
    pub max_gpu_memory_mb: Option<i64>,
}

/// Input of `updateTenantPlan`.
#[derive(InputObject)]
pub struct UpdateTenantPlanInput {
    /// The tenant's ID.
    pub tenant_id: ID,
    /// The new plan.
    pub plan: Plan,
    /// Quota overrides (plan defaults otherwise).
    pub quotas: Option<QuotasInput>,
    /// Feature flags to enable (replaces the set); unchanged when omitted.
    pub feature_flags: Option<Vec<String>>,
}

/// Input of `updateTenantSettings`.
#[derive(InputObject)]
pub struct UpdateTenantSettingsInput {
    /// Days audit records and finished executions are kept (1–3650).
    pub data_retention_days: Option<i64>,
    /// Whether members must use multi-factor authentication.
    pub require_mfa: Option<bool>,
    /// CIDR ranges allowed to sign in; empty means any.
    pub allowed_ip_ranges: Option<Vec<String>>,
}

/// Input of `updateRole`.
#[derive(InputObject)]
pub struct UpdateRoleInput {
    /// The custom role's ID.
    pub role_id: ID,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New permission set (replaces the old one).
    pub permissions: Option<Vec<String>>,
}

/// Input of `deleteRole`.
#[derive(InputObject)]
pub struct DeleteRoleInput {
    /// The custom role's ID.
    pub role_id: ID,
}

/// Result of `deleteRole`.
#[derive(SimpleObject)]
pub struct DeleteRolePayload {
    /// The deleted role's ID.
    pub deleted_role_id: ID,
}

fn valid_cidr(s: &str) -> bool {
    let (ip, bits) = s.split_once('/').unwrap_or((s, ""));
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits.is_empty() || bits.parse::<u8>().is_ok_and(|b| b <= 32),
        Ok(std::net::IpAddr::V6(_)) => {
            bits.is_empty() || bits.parse::<u8>().is_ok_and(|b| b <= 128)
        }
        Err(_) => false,
    }
}

fn valid_flag(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// Checks a permission list a caller wants to put in a custom role.
fn grantable(p: &Principal, names: &[String]) -> AppResult<PermissionSet> {
    let mut perms = PermissionSet::new();
    for s in names {
        let perm = Permission::parse(s).ok_or_else(|| {
            AppError::bad_input("permissions", format!("unknown permission {s:?}"))
        })?;
        if matches!(
            perm,
            Permission::PlatformTenants | Permission::ClusterManage
        ) || !p.permissions.contains(&perm)
        {
            return Err(AppError::forbidden(format!("you cannot grant {s}")));
        }
        perms.insert(perm);
    }
    Ok(perms)
}

fn role_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || BuiltinRole::parse(&name.to_uppercase()).is_some() {
        return Err(AppError::bad_input(
            "name",
            "1–100 characters, not a built-in role name",
        ));
    }
    Ok(name.to_owned())
}

async fn custom_role(ctx: &Context<'_>, id: &ID) -> AppResult<RoleRow> {
    let p = principal(ctx)?;
    let uuid = decode_expecting(id, NodeKind::Role, "role")?;
    super::store::find_role(&app(ctx)?.db, p.tenant_id, RoleId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("role"))
}

pub use super::model::{new_tenant_row, new_user_row, plan_quotas, tenant_view};

async fn tenant_for_admin(ctx: &Context<'_>, id: &ID) -> AppResult<TenantRow> {
    let uuid = decode_expecting(id, NodeKind::Tenant, "tenant")?;
    let a = app(ctx)?;
    super::store::find(&a.db, super::TenantId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))
}

/// Refuses changes to a user who holds permissions the caller does not (an ADMIN cannot
/// demote, disable or erase an OWNER). Platform admins may change anyone.
pub async fn may_change_user(
    app: &crate::app::App,
    p: &Principal,
    target: &UserRow,
) -> AppResult<()> {
    if p.platform_admin {
        return Ok(());
    }
    let tenant = super::store::find(&app.db, target.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let (held, platform) = crate::auth::role_permissions(app, &tenant, &target.role).await?;
    if platform || !held.is_subset(&p.permissions) {
        return Err(AppError::forbidden(
            "this user holds permissions you do not hold; ask someone with at least their role",
        ));
    }
    Ok(())
}

/// Ids of the unrevoked API keys `user` created (revoked with the user).
pub async fn keys_created_by(
    app: &crate::app::App,
    tenant: crate::tenancy::TenantId,
    user: UserId,
) -> AppResult<Vec<String>> {
    Ok(
        crate::auth::store::active_keys_created_by(&app.db, tenant, &format!("user:{user}"))
            .await?
            .into_iter()
            .map(|k| to_global_id(NodeKind::ApiKey, k.0).0)
            .collect(),
    )
}

async fn user_in_tenant(ctx: &Context<'_>, id: &ID) -> AppResult<UserRow> {
    let p = principal(ctx)?;
    let uuid = decode_expecting(id, NodeKind::User, "user")?;
    super::store::find_user(&app(ctx)?.db, p.tenant_id, UserId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// Tenancy queries.
#[derive(Default)]
pub struct TenancyQuery;

#[Object]
impl TenancyQuery {
    /// The caller's own tenant.
    #[graphql(guard = "Require(Permission::TenantRead)")]
    async fn tenant(&self, ctx: &Context<'_>) -> async_graphql::Result<Tenant> {
        let p = principal(ctx)?;
        Ok(super::store::find(&app(ctx)?.db, p.tenant_id)
            .await?
            .map(Tenant)
            .ok_or_else(|| AppError::not_found("tenant"))?)
    }

    /// Every tenant (platform admins).
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, last, child_complexity)",
        guard = "Require(Permission::PlatformTenants)"
    )]
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<Conn<Tenant>> {
        let page = Page::from_args(after, before, first, last)?;
        let (rows, total) = super::store::list(&app(ctx)?.db, &page).await?;
        Ok(page.finish(rows.into_iter().map(Tenant).collect(), total, |t| t.0.id.0))
    }

    /// The tenant's users.
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, last, child_complexity)",
        guard = "Require(Permission::UsersRead)"
    )]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<Conn<User>> {
        let p = principal(ctx)?;
        let page = Page::from_args(after, before, first, last)?;
        let (rows, total) = super::store::list_users(&app(ctx)?.db, p.tenant_id, &page).await?;
        Ok(page.finish(rows.into_iter().map(User).collect(), total, |u| u.0.id.0))
    }

    /// Built-in and custom roles available in the tenant.
    #[graphql(guard = "Require(Permission::UsersRead)")]
    async fn roles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Role>> {
        let p = principal(ctx)?;
        let mut out: Vec<Role> = BuiltinRole::TENANT_ROLES
            .iter()
            .map(|b| Role::builtin(*b))
            .collect();
        out.extend(
            super::store::list_roles(&app(ctx)?.db, p.tenant_id)
                .await?
                .iter()
                .map(Role::custom),
        );
        Ok(out)
    }
}

/// Tenancy mutations.
#[derive(Default)]
pub struct TenancyMutation;

#[Object]
impl TenancyMutation {
    /// Creates a tenant with its first OWNER (platform admins).
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        input: CreateTenantInput,
    ) -> async_graphql::Result<CreateTenantPayload> {
        let a = app(ctx)?;
        let created = super::service::create_tenant(
            a,
            &crate::audit::graphql::origin(ctx)?,
            super::service::NewTenant {
                slug: &input.slug,
                name: &input.name,
                plan: input.plan,
                is_system: false,
            },
            super::service::NewUser {
                email: &input.owner.email,
                display_name: &input.owner.display_name,
                credential: super::service::Credential::SetPasswordToken,
            },
        )
        .await?;
        let (Some(tenant), Some(token)) = (created.tenant, created.set_password_token) else {
            return Err(
                AppError::internal(anyhow::anyhow!("tenant creation returned no tenant")).into(),
            );
        };
        let owner = created.user;
        Ok(CreateTenantPayload {
            tenant: Tenant(tenant),
            owner: User(owner),
            set_password_token: token,
        })
    }

    /// Suspends a tenant: every principal of it is refused with `TENANT_SUSPENDED`.
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn suspend_tenant(
        &self,
        ctx: &Context<'_>,
        input: SuspendTenantInput,
    ) -> async_graphql::Result<TenantPayload> {
        let a = app(ctx)?;
        let mut t = tenant_for_admin(ctx, &input.tenant_id).await?;
        if t.is_system {
            return Err(
                AppError::bad_input("tenantId", "the system tenant cannot be suspended").into(),
            );
        }
        let before = tenant_view(&t);
        t.status = TenantStatus::Suspended;
        t.status_reason = Some(input.reason.trim().chars().take(500).collect());
        t.updated_at = db_time(a.clock.now());
        let audit = tenant_audit(ctx, "tenant.suspended", &before, &t)?
            .severity(crate::audit::Severity::Critical);
        super::store::update(&a.db, &t, &audit).await?;
        a.rights_changed();
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Reactivates a suspended tenant.
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn reactivate_tenant(
        &self,
        ctx: &Context<'_>,
        input: ReactivateTenantInput,
    ) -> async_graphql::Result<TenantPayload> {
        let a = app(ctx)?;
        let mut t = tenant_for_admin(ctx, &input.tenant_id).await?;
        let before = tenant_view(&t);
        t.status = TenantStatus::Active;
        t.status_reason = None;
        t.updated_at = db_time(a.clock.now());
        let audit = tenant_audit(ctx, "tenant.reactivated", &before, &t)?
            .severity(crate::audit::Severity::Warning);
        super::store::update(&a.db, &t, &audit).await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Platform repair: makes a user of a tenant an active OWNER again (for a tenant left
    /// without a usable owner). Recorded in that tenant's audit trail.
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn restore_tenant_owner(
        &self,
        ctx: &Context<'_>,
        input: RestoreTenantOwnerInput,
    ) -> async_graphql::Result<UserPayload> {
        let a = app(ctx)?;
        let t = tenant_for_admin(ctx, &input.tenant_id).await?;
        let uuid = decode_expecting(&input.user_id, NodeKind::User, "user")?;
        let mut user = super::store::find_user(&a.db, t.id, UserId(uuid))
            .await?
            .ok_or_else(|| AppError::not_found("user"))?;
        let now = db_time(a.clock.now());
        let mut origin = crate::audit::graphql::origin(ctx)?;
        origin.tenant_id = t.id.to_string();
        let audit = crate::audit::Entry::change(
            &origin,
            "user.owner_restored",
            "user",
            user.id,
            Some(serde_json::json!({
                "role": { "before": user.role, "after": BuiltinRole::Owner.as_str() },
                "status": { "before": user.status, "after": UserStatus::Active.as_str() },
            })),
            now,
        )
        .severity(crate::audit::Severity::Critical);
        super::store::restore_owner(&a.db, t.id, user.id, now, &audit).await?;
        a.rights_changed();
        user.role = BuiltinRole::Owner.as_str().into();
        user.status = UserStatus::Active;
        user.updated_at = now;
        Ok(UserPayload { user: User(user) })
    }

    /// Creates a user in the caller's tenant; returns a one-time set-password token.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
    ) -> async_graphql::Result<CreateUserPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let role = resolve_role_input(a, p, &input.role_id, "roleId").await?;
        let tenant = super::store::find(&a.db, p.tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let created = super::service::create_user(
            a,
            &crate::audit::graphql::origin(ctx)?,
            &tenant,
            super::service::NewUser {
                email: &input.email,
                display_name: &input.display_name,
                credential: super::service::Credential::SetPasswordToken,
            },
            &role,
            true,
        )
        .await?;
        Ok(CreateUserPayload {
            user: User(created.user),
            set_password_token: created.set_password_token.unwrap_or_default(),
        })
    }

    /// Changes a user's role (within what the caller may grant).
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn update_user_role(
        &self,
        ctx: &Context<'_>,
        input: UpdateUserRoleInput,
    ) -> async_graphql::Result<UserPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let mut user = user_in_tenant(ctx, &input.user_id).await?;
        may_change_user(a, p, &user).await?;
        let role = resolve_role_input(a, p, &input.role_id, "roleId").await?;
        let now = db_time(a.clock.now());
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "user.role_changed",
            "user",
            user.id,
            Some(serde_json::json!({ "role": { "before": user.role, "after": role } })),
            now,
        )
        .severity(crate::audit::Severity::Warning);
        super::store::set_user_role(&a.db, p.tenant_id, user.id, &role, now, &audit).await?;
        a.rights_changed();
        user.role = role;
        user.updated_at = now;
        Ok(UserPayload { user: User(user) })
    }

    /// Disables a user: sign-in and every session stop working.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn disable_user(
        &self,
        ctx: &Context<'_>,
        input: DisableUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let mut user = user_in_tenant(ctx, &input.user_id).await?;
        if p.user_id() == Some(user.id) {
            return Err(AppError::bad_input("userId", "you cannot disable yourself").into());
        }
        may_change_user(a, p, &user).await?;
        let now = db_time(a.clock.now());
        let keys = keys_created_by(a, p.tenant_id, user.id).await?;
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "user.disabled",
            "user",
            user.id,
            Some(serde_json::json!({
                "status": { "before": user.status, "after": UserStatus::Disabled.as_str() },
                "apiKeysRevoked": keys,
            })),
            now,
        )
        .severity(crate::audit::Severity::Warning);
        super::store::set_user_status(
            &a.db,
            p.tenant_id,
            user.id,
            UserStatus::Disabled.as_str(),
            now,
            &audit,
        )
        .await?;
        a.rights_changed();
        user.status = UserStatus::Disabled;
        user.updated_at = now;
        Ok(UserPayload { user: User(user) })
    }

    /// Creates a custom role in the caller's tenant.
    #[graphql(guard = "Require(Permission::RolesManage)")]
    async fn create_role(
        &self,
        ctx: &Context<'_>,
        input: CreateRoleInput,
    ) -> async_graphql::Result<RolePayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let name = role_name(&input.name)?;
        let perms = grantable(p, &input.permissions)?;
        let now = db_time(a.clock.now());
        let row = RoleRow {
            id: RoleId::new(),
            tenant_id: p.tenant_id,
            name,
            description: input.description.trim().to_owned(),
            permissions: serde_json::to_string(&perm_names(&perms)).map_err(AppError::internal)?,
            created_at: now,
            updated_at: now,
        };
        let audit = role_audit(ctx, "role.created", &row, None)?;
        super::store::insert_role(&a.db, &row, &audit).await?;
        Ok(RolePayload {
            role: Role::custom(&row),
        })
    }

    /// Changes a custom role. Holders get the new permissions on their next request.
    #[graphql(guard = "Require(Permission::RolesManage)")]
    async fn update_role(
        &self,
        ctx: &Context<'_>,
        input: UpdateRoleInput,
    ) -> async_graphql::Result<RolePayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let mut row = custom_role(ctx, &input.role_id).await?;
        let before = role_view(&row);
        if let Some(n) = &input.name {
            row.name = role_name(n)?;
        }
        if let Some(d) = &input.description {
            row.description = d.trim().to_owned();
        }
        if let Some(ps) = &input.permissions {
            row.permissions = serde_json::to_string(&perm_names(&grantable(p, ps)?))
                .map_err(AppError::internal)?;
        }
        row.updated_at = db_time(a.clock.now());
        let audit = role_audit(ctx, "role.updated", &row, Some(&before))?
            .severity(crate::audit::Severity::Warning);
        super::store::update_role(&a.db, &row, &audit).await?;
        a.rights_changed();
        Ok(RolePayload {
            role: Role::custom(&row),
        })
    }

    /// Deletes a custom role that no user or live API key holds (`CONFLICT` otherwise).
    #[graphql(guard = "Require(Permission::RolesManage)")]
    async fn delete_role(
        &self,
        ctx: &Context<'_>,
        input: DeleteRoleInput,
    ) -> async_graphql::Result<DeleteRolePayload> {
        let a = app(ctx)?;
        let row = custom_role(ctx, &input.role_id).await?;
        let holders = super::store::role_holders(&a.db, row.tenant_id, &row.id.to_string()).await?;
        if holders > 0 {
            return Err(AppError::conflict(format!(
                "{holders} users or API keys still hold this role"
            ))
            .into());
        }
        let mut audit = role_audit(ctx, "role.deleted", &row, None)?;
        audit.at = db_time(a.clock.now());
        super::store::delete_role(&a.db, row.tenant_id, row.id, &audit).await?;
        a.rights_changed();
        Ok(DeleteRolePayload {
            deleted_role_id: input.role_id,
        })
    }

    /// Changes a tenant's plan, quotas and feature flags (platform admins).
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn update_tenant_plan(
        &self,
        ctx: &Context<'_>,
        input: UpdateTenantPlanInput,
    ) -> async_graphql::Result<TenantPayload> {
        let a = app(ctx)?;
        let mut t = tenant_for_admin(ctx, &input.tenant_id).await?;
        let before = tenant_view(&t);
        let (u, w, e, c, g) = plan_quotas(input.plan);
        let q = input.quotas.unwrap_or_default();
        for (field, v) in [
            ("maxUsers", q.max_users),
            ("maxWorkflows", q.max_workflows),
            ("maxExecutionsPerMonth", q.max_executions_per_month),
            ("maxConcurrentExecutions", q.max_concurrent_executions),
            ("maxGpuMemoryMb", q.max_gpu_memory_mb),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(AppError::bad_input(field, "quotas cannot be negative").into());
            }
        }
        t.plan = input.plan;
        t.max_users = q.max_users.unwrap_or(u);
        t.max_workflows = q.max_workflows.unwrap_or(w);
        t.max_executions_per_month = q.max_executions_per_month.unwrap_or(e);
        t.max_concurrent_executions = q.max_concurrent_executions.unwrap_or(c);
        t.max_gpu_memory_mb = q.max_gpu_memory_mb.unwrap_or(g);
        if let Some(mut flags) = input.feature_flags {
            if let Some(bad) = flags.iter().find(|f| !valid_flag(f)) {
                return Err(AppError::bad_input(
                    "featureFlags",
                    format!("{bad:?} is not a flag name (a-z, 0-9, - _ .)"),
                )
                .into());
            }
            flags.sort();
            flags.dedup();
            t.feature_flags = serde_json::to_string(&flags).map_err(AppError::internal)?;
        }
        t.updated_at = db_time(a.clock.now());
        let audit = tenant_audit(ctx, "tenant.plan_changed", &before, &t)?;
        super::store::update(&a.db, &t, &audit).await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Changes the caller's tenant settings.
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn update_tenant_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateTenantSettingsInput,
    ) -> async_graphql::Result<TenantPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let mut t = super::store::find(&a.db, p.tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let before = tenant_view(&t);
        if let Some(d) = input.data_retention_days {
            if !(1..=3650).contains(&d) {
                return Err(
                    AppError::bad_input("dataRetentionDays", "between 1 and 3650 days").into(),
                );
            }
            t.data_retention_days = d;
        }
        if let Some(m) = input.require_mfa {
            t.require_mfa = m;
        }
        if let Some(ranges) = input.allowed_ip_ranges {
            if let Some(bad) = ranges.iter().find(|r| !valid_cidr(r.trim())) {
                return Err(AppError::bad_input(
                    "allowedIpRanges",
                    format!("{bad:?} is not an IP range such as 10.0.0.0/8"),
                )
                .into());
            }
            let ranges: Vec<String> = ranges.iter().map(|r| r.trim().to_owned()).collect();
            t.allowed_ip_ranges = serde_json::to_string(&ranges).map_err(AppError::internal)?;
        }
        t.updated_at = db_time(a.clock.now());
        let audit = tenant_audit(ctx, "tenant.settings_changed", &before, &t)?;
        super::store::update(&a.db, &t, &audit).await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }
}

/// A tenant change, recorded in that tenant's own chain (a platform admin acting on a
/// tenant shows up in the tenant's trail).
fn tenant_audit(
    ctx: &Context<'_>,
    action: &str,
    before: &serde_json::Value,
    t: &TenantRow,
) -> AppResult<crate::audit::Entry> {
    let mut origin = crate::audit::graphql::origin(ctx)?;
    origin.tenant_id = t.id.to_string();
    Ok(crate::audit::Entry::change(
        &origin,
        action,
        "tenant",
        t.id,
        Some(crate::audit::diff(before, &tenant_view(t))),
        t.updated_at,
    ))
}

fn role_view(r: &RoleRow) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "description": r.description,
        "permissions": serde_json::from_str::<serde_json::Value>(&r.permissions).unwrap_or_default(),
    })
}

/// A custom-role change: the full role when created or deleted, the diff when updated.
fn role_audit(
    ctx: &Context<'_>,
    action: &str,
    r: &RoleRow,
    before: Option<&serde_json::Value>,
) -> AppResult<crate::audit::Entry> {
    let changes = match before {
        Some(b) => crate::audit::diff(b, &role_view(r)),
        None => role_view(r),
    };
    Ok(crate::audit::Entry::change(
        &crate::audit::graphql::origin(ctx)?,
        action,
        "role",
        r.id,
        Some(changes),
        r.updated_at,
    ))
}
