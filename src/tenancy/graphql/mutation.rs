//! Tenancy mutations: tenants, users, roles.

use super::*;

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
                plan: input.plan,
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
        crate::tenancy::store::update(&a.db, &t, &audit).await?;
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
        crate::tenancy::store::update(&a.db, &t, &audit).await?;
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
        let mut user = crate::tenancy::store::find_user(&a.db, t.id, UserId(uuid))
            .await?
            .ok_or_else(|| AppError::not_found("user"))?;
        let now = db_time(a.clock.now());
        let mut origin = crate::graphql::origin(ctx)?;
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
        crate::tenancy::store::restore_owner(&a.db, t.id, user.id, now, &audit).await?;
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
        let tenant = crate::tenancy::store::find(&a.db, p.tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let created = crate::tenancy::service::create_user(
            a,
            &crate::graphql::origin(ctx)?,
            &tenant,
            crate::tenancy::service::NewUser {
                email: &input.email,
                display_name: &input.display_name,
                credential: crate::tenancy::service::Credential::SetPasswordToken,
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
            &crate::graphql::origin(ctx)?,
            "user.role_changed",
            "user",
            user.id,
            Some(serde_json::json!({ "role": { "before": user.role, "after": role } })),
            now,
        )
        .severity(crate::audit::Severity::Warning);
        crate::tenancy::store::set_user_role(&a.db, p.tenant_id, user.id, &role, now, &audit)
            .await?;
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
            &crate::graphql::origin(ctx)?,
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
        crate::tenancy::store::set_user_status(
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
        crate::tenancy::store::insert_role(&a.db, &row, &audit).await?;
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
        crate::tenancy::store::update_role(&a.db, &row, &audit).await?;
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
        let holders =
            crate::tenancy::store::role_holders(&a.db, row.tenant_id, &row.id.to_string()).await?;
        if holders > 0 {
            return Err(AppError::conflict(format!(
                "{holders} users or API keys still hold this role"
            ))
            .into());
        }
        let mut audit = role_audit(ctx, "role.deleted", &row, None)?;
        audit.at = db_time(a.clock.now());
        crate::tenancy::store::delete_role(&a.db, row.tenant_id, row.id, &audit).await?;
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
        crate::tenancy::store::update(&a.db, &t, &audit).await?;
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
        let mut t = crate::tenancy::store::find(&a.db, p.tenant_id)
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
        crate::tenancy::store::update(&a.db, &t, &audit).await?;
        Ok(TenantPayload { tenant: Tenant(t) })
    }
}
