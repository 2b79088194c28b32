//! Tenancy queries.

use super::*;

/// Tenancy queries.
#[derive(Default)]
pub struct TenancyQuery;

#[Object]
impl TenancyQuery {
    /// The caller's own tenant.
    #[graphql(guard = "Require(Permission::TenantRead)")]
    async fn tenant(&self, ctx: &Context<'_>) -> async_graphql::Result<Tenant> {
        let p = principal(ctx)?;
        Ok(crate::tenancy::store::find(&app(ctx)?.db, p.tenant_id)
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
        let (rows, total) = crate::tenancy::store::list(&app(ctx)?.db, &page).await?;
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
        let (rows, total) =
            crate::tenancy::store::list_users(&app(ctx)?.db, p.tenant_id, &page).await?;
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
            crate::tenancy::store::list_roles(&app(ctx)?.db, p.tenant_id)
                .await?
                .iter()
                .map(Role::custom),
        );
        Ok(out)
    }

    /// The tenant's trusted documents (persisted queries), oldest first.
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, last, child_complexity)",
        guard = "Require(Permission::TenantRead)"
    )]
    async fn trusted_documents(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<Conn<TrustedDocument>> {
        let p = principal(ctx)?;
        let page = Page::from_args(after, before, first, last)?;
        let (rows, total) =
            crate::tenancy::documents::list(&app(ctx)?.db, p.tenant_id, &page).await?;
        Ok(page.finish(
            rows.into_iter().map(TrustedDocument).collect(),
            total,
            |d| d.0.id.0,
        ))
    }
}
