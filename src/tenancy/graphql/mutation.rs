//! Tenancy mutations: tenants, users, roles.

use super::*;
use crate::auth::admin;
use crate::graphql::guards::SignedIn;
use crate::graphql::origin;
use crate::tenancy::service::tenants;

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
        let created = crate::tenancy::service::create_tenant(
            a,
            &crate::graphql::origin(ctx)?,
            crate::tenancy::service::NewTenant {
                slug: &input.slug,
                name: &input.name,
                plan: input.plan.into(),
                is_system: false,
            },
            crate::tenancy::service::NewUser {
                email: &input.owner.email,
                display_name: &input.owner.display_name,
                credential: crate::tenancy::service::Credential::SetPasswordToken,
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
        let t = tenants::set_status(
            app(ctx)?,
            &origin(ctx)?,
            tenant_id(&input.tenant_id)?,
            TenantStatus::Suspended,
            &input.reason,
        )
        .await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Deletes a suspended tenant for good (platform admins): refused unless it is
    /// suspended (`CONFLICT`, reason `TENANT_NOT_SUSPENDED`) and runs no execution; its
    /// audit chain is exported first (NDJSON, on the server, in `AGENTPLANE_EXPORT_DIR`),
    /// then its data is removed in batches and the deletion recorded in the system chain
    /// (`tenant.deleted`). An interrupted deletion resumes when called again.
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn delete_tenant(
        &self,
        ctx: &Context<'_>,
        input: DeleteTenantInput,
    ) -> async_graphql::Result<DeleteTenantPayload> {
        let d = crate::tenancy::service::deletion::delete_tenant(
            app(ctx)?,
            &origin(ctx)?,
            tenant_id(&input.tenant_id)?,
            &input.confirm_slug,
        )
        .await?;
        Ok(DeleteTenantPayload {
            deleted_tenant_id: input.tenant_id,
            export_path: d.export_path,
            export_sha256: d.export_sha256,
            export_audit_records: d.export_records,
            rows_deleted: d.rows_deleted,
        })
    }

    /// Reactivates a suspended tenant.
    #[graphql(guard = "Require(Permission::PlatformTenants)")]
    async fn reactivate_tenant(
        &self,
        ctx: &Context<'_>,
        input: ReactivateTenantInput,
    ) -> async_graphql::Result<TenantPayload> {
        let t = tenants::set_status(
            app(ctx)?,
            &origin(ctx)?,
            tenant_id(&input.tenant_id)?,
            TenantStatus::Active,
            "",
        )
        .await?;
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
        let tenant = tenant_id(&input.tenant_id)?;
        let user = user_id(&input.user_id)?;
        let user = tenants::restore_owner(app(ctx)?, &origin(ctx)?, tenant, user).await?;
        Ok(UserPayload { user: User(user) })
    }

    /// Creates a user in the caller's tenant; returns a one-time set-password token.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        input: CreateUserInput,
    ) -> async_graphql::Result<CreateUserPayload> {
        let created = admin::create_user(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            &input.email,
            &input.display_name,
            role_ref(&input.role_id, "roleId")?,
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
        let user = admin::set_role(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            user_id(&input.user_id)?,
            role_ref(&input.role_id, "roleId")?,
        )
        .await?;
        Ok(UserPayload { user: User(user) })
    }

    /// Disables a user: sign-in and every session stop working.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn disable_user(
        &self,
        ctx: &Context<'_>,
        input: DisableUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let user = admin::disable(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            user_id(&input.user_id)?,
            key_ids,
        )
        .await?;
        Ok(UserPayload { user: User(user) })
    }

    /// Changes a user's display name: your own, or (with `users.manage`) anyone's you
    /// may manage.
    #[graphql(guard = "SignedIn")]
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        input: UpdateUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let user = admin::update_user(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            user_id(&input.user_id)?,
            &input.display_name,
        )
        .await?;
        Ok(UserPayload { user: User(user) })
    }

    /// Enables a disabled user again: they can sign in; sessions and API keys that ended
    /// when they were disabled stay ended. An erased user cannot come back (`CONFLICT`).
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn enable_user(
        &self,
        ctx: &Context<'_>,
        input: EnableUserInput,
    ) -> async_graphql::Result<UserPayload> {
        let user = admin::enable(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            user_id(&input.user_id)?,
        )
        .await?;
        Ok(UserPayload { user: User(user) })
    }

    /// Creates a custom role in the caller's tenant.
    #[graphql(guard = "Require(Permission::RolesManage)")]
    async fn create_role(
        &self,
        ctx: &Context<'_>,
        input: CreateRoleInput,
    ) -> async_graphql::Result<RolePayload> {
        let row = admin::create_role(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            &input.name,
            &input.description,
            &input.permissions,
        )
        .await?;
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
        let row = admin::update_role(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            role_id(&input.role_id)?,
            input.name.as_deref(),
            input.description.as_deref(),
            input.permissions.as_deref(),
        )
        .await?;
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
        let id = role_id(&input.role_id)?;
        admin::delete_role(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
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
        let q = input.quotas.unwrap_or_default();
        let t = tenants::change_plan(
            app(ctx)?,
            &origin(ctx)?,
            tenant_id(&input.tenant_id)?,
            input.plan.into(),
            tenants::Quotas {
                max_users: q.max_users,
                max_workflows: q.max_workflows,
                max_executions_per_month: q.max_executions_per_month,
                max_concurrent_executions: q.max_concurrent_executions,
                max_gpu_memory_mb: q.max_gpu_memory_mb,
                requests_per_minute: q.requests_per_minute,
                expensive_operations_per_minute: q.expensive_operations_per_minute,
                query_cost_per_minute: q.query_cost_per_minute,
            },
            input.feature_flags,
        )
        .await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Changes the caller's tenant settings.
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn update_tenant_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateTenantSettingsInput,
    ) -> async_graphql::Result<TenantPayload> {
        let t = tenants::change_settings(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            tenants::Settings {
                data_retention_days: input.data_retention_days,
                require_mfa: input.require_mfa,
                allowed_ip_ranges: input.allowed_ip_ranges,
                confirm_excluding_own_address: input.confirm_excluding_own_address.unwrap_or(false),
                trusted_documents_only: input.trusted_documents_only,
                // Read only when it decides something: turning requireMfa on.
                caller_has_second_factor: match principal(ctx)?.user_id() {
                    Some(u) if input.require_mfa == Some(true) => {
                        crate::auth::service::mfa::enrolled(app(ctx)?, u).await?
                    }
                    _ => false,
                },
            },
        )
        .await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }

    /// Registers a GraphQL document for the caller's tenant (a trusted document /
    /// persisted query): clients may then send its SHA-256 in
    /// `extensions.persistedQuery.sha256Hash` instead of the text, and a tenant with
    /// `trustedDocumentsOnly` runs nothing else. The document must parse and fit the
    /// document limits. Registering the same text again returns the first registration.
    /// At most 1000 a tenant (`QUOTA_EXCEEDED`).
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn register_trusted_document(
        &self,
        ctx: &Context<'_>,
        input: RegisterTrustedDocumentInput,
    ) -> async_graphql::Result<RegisterTrustedDocumentPayload> {
        let a = app(ctx)?;
        let doc = async_graphql::parser::parse_query(&input.document).map_err(|e| {
            AppError::bad_input("document", format!("the document does not parse: {e}"))
        })?;
        crate::graphql::limits::DocumentLimits::from_config(&a.config.graphql)
            .check(&doc)
            .map_err(|(message, limit)| {
                AppError::bad_input("document", message).with_detail("limit", limit)
            })?;
        let (row, created) = crate::tenancy::documents::register(
            a,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            input.name.as_deref().unwrap_or(""),
            &input.document,
        )
        .await?;
        Ok(RegisterTrustedDocumentPayload {
            trusted_document: TrustedDocument(row),
            created,
        })
    }

    /// Deletes one of the tenant's trusted documents: clients sending its hash get
    /// `NOT_FOUND` (reason `PERSISTED_QUERY_NOT_FOUND`) from then on.
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn delete_trusted_document(
        &self,
        ctx: &Context<'_>,
        input: DeleteTrustedDocumentInput,
    ) -> async_graphql::Result<DeleteTrustedDocumentPayload> {
        let id = decode_expecting(
            &input.trusted_document_id,
            NodeKind::TrustedDocument,
            "trustedDocumentId",
        )?;
        crate::tenancy::documents::delete(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            crate::tenancy::documents::TrustedDocumentId(id),
        )
        .await?;
        Ok(DeleteTrustedDocumentPayload {
            deleted_trusted_document_id: input.trusted_document_id,
        })
    }
}
