//! Tenants (organizations): model, storage and GraphQL types.

pub mod model;
pub mod service;
pub mod store;
pub mod teams;

pub mod graphql;

pub use graphql::Tenant;
pub use model::{RoleId, RoleRow, TenantId, TenantRow, UserId, UserRow};

use async_graphql::Context;
use uuid::Uuid;

use crate::app::App;
use crate::error::{AppError, AppResult};

/// Loads a tenant the caller may see: its own, or any for a platform admin. Everything
/// else is `NOT_FOUND`, indistinguishable from a missing tenant.
pub async fn visible_tenant(ctx: &Context<'_>, app: &App, id: Uuid) -> AppResult<Tenant> {
    let principal = crate::auth::principal(ctx)?;
    let id = TenantId(id);
    if !principal.may_see_tenant(id) {
        return Err(AppError::not_found("tenant"));
    }
    store::find(&app.db, id)
        .await?
        .map(Tenant)
        .ok_or_else(|| AppError::not_found("tenant"))
}
