//! Inputs and payloads of the tenancy mutations.

use super::*;
use crate::graphql::enums::Plan;

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

/// Input of `deleteTenant`.
#[derive(InputObject)]
pub struct DeleteTenantInput {
    /// The tenant's ID.
    pub tenant_id: ID,
    /// The tenant's slug, repeated to confirm.
    pub confirm_slug: String,
}

/// Result of `deleteTenant`.
#[derive(SimpleObject)]
pub struct DeleteTenantPayload {
    /// The deleted tenant's ID.
    pub deleted_tenant_id: ID,
    /// Where its final export was written (on the server).
    pub export_path: String,
    /// SHA-256 of the export file (hex).
    pub export_sha256: String,
    /// Audit records in the export.
    pub export_audit_records: u64,
    /// Rows removed from the database, all tables together.
    pub rows_deleted: u64,
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

/// Input of `updateUser`.
#[derive(InputObject)]
pub struct UpdateUserInput {
    /// The user's ID (your own, or anyone's you may manage).
    pub user_id: ID,
    /// The new display name (1 to 100 characters).
    pub display_name: String,
}

/// Input of `enableUser`.
#[derive(InputObject)]
pub struct EnableUserInput {
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
    /// Most requests a minute across all the tenant's users and API keys (0: no limit).
    pub requests_per_minute: Option<i64>,
    /// Most expensive operations a minute: starting executions, audit exports,
    /// compliance reports (0: no limit).
    pub expensive_operations_per_minute: Option<i64>,
    /// Most GraphQL query cost a minute (0: no limit).
    pub query_cost_per_minute: Option<i64>,
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
    /// The feature flags to enable, replacing the set (`llm_steps`, `gpu_steps`,
    /// `schedules`, `audit_export`; any other name is `BAD_USER_INPUT`). Omitted: the
    /// plan's defaults.
    pub feature_flags: Option<Vec<String>>,
}

/// Input of `updateTenantSettings`.
#[derive(InputObject)]
pub struct UpdateTenantSettingsInput {
    /// Days audit records and finished executions are kept (1–3650).
    pub data_retention_days: Option<i64>,
    /// Whether members must sign in with a second factor (TOTP). Enforced: a member
    /// signed in without one holds no permission (`FORBIDDEN`, reason
    /// `MFA_REQUIRED_BY_TENANT`) until they enrol and sign in again with a code. Turning
    /// it on needs the caller's own factor on (`BAD_USER_INPUT`, reason `ENROL_FIRST`).
    /// API keys are not affected.
    pub require_mfa: Option<bool>,
    /// CIDR ranges (e.g. `10.0.0.0/8`, `203.0.113.7`) members and API keys may connect
    /// from: enforced on sign-in, session refresh, every HTTP request, websocket
    /// `connection_init` and API-key use (`FORBIDDEN`, reason `IP_NOT_ALLOWED`); an
    /// empty list allows any address. At most 100 ranges.
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// Must be `true` to save `allowedIpRanges` that exclude the caller's own address
    /// (which would refuse the caller's next request).
    pub confirm_excluding_own_address: Option<bool>,
    /// Run trusted documents only: the tenant's users and API keys may run only
    /// documents registered with `registerTrustedDocument` (sent by
    /// `extensions.persistedQuery.sha256Hash`, or as text that hashes to one);
    /// anything else is `FORBIDDEN` with reason `TRUSTED_DOCUMENTS_ONLY`. A mutation that
    /// selects only `updateTenantSettings` stays allowed, so the mode can be switched off.
    pub trusted_documents_only: Option<bool>,
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

/// Input of `registerTrustedDocument`.
#[derive(InputObject)]
pub struct RegisterTrustedDocumentInput {
    /// The GraphQL document, exactly as clients will hash it (SHA-256 of its UTF-8
    /// text); it must parse and fit the document limits. At most 64 KiB.
    pub document: String,
    /// A name for people (e.g. the client and operation); at most 200 characters.
    pub name: Option<String>,
}

/// Input of `deleteTrustedDocument`.
#[derive(InputObject)]
pub struct DeleteTrustedDocumentInput {
    /// The document's ID.
    pub trusted_document_id: ID,
}

/// Result of `registerTrustedDocument`.
#[derive(SimpleObject)]
pub struct RegisterTrustedDocumentPayload {
    /// The registered document (the first registration when the same text was
    /// registered before).
    pub trusted_document: TrustedDocument,
    /// Whether this call registered it (`false`: it was registered already).
    pub created: bool,
}

/// Result of `deleteTrustedDocument`.
#[derive(SimpleObject)]
pub struct DeleteTrustedDocumentPayload {
    /// The deleted document's ID.
    pub deleted_trusted_document_id: ID,
}
