//! GraphQL types for tenants.

use async_graphql::{ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::model::{TenantRow, TenantStatus};
use crate::db::ids::utc;
use crate::graphql::relay::{NodeKind, to_global_id};

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

// ---- users, roles, and the tenancy API ----

use async_graphql::{Context, InputObject};

use super::model::{RoleId, RoleRow, UserId, UserRow};
use crate::auth::Principal;
use crate::auth::admin::RoleRef;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::relay::{Conn, Page, decode_expecting};
use crate::rbac::{BuiltinRole, Permission, parse_permission_list};

mod inputs;
mod mutation;
mod query;
mod teams;
mod types;
pub use inputs::*;
pub use mutation::*;
pub use query::*;
pub use teams::*;
pub use types::*;

pub use crate::auth::admin::perm_names;

/// A role argument: a built-in role name or a custom role's ID (`BAD_USER_INPUT` naming
/// `field` otherwise).
pub fn role_ref(id: &ID, field: &str) -> AppResult<RoleRef> {
    if let Some(b) = BuiltinRole::parse(id.as_str()) {
        return Ok(RoleRef::Builtin(b));
    }
    let uuid = decode_expecting(id, NodeKind::Role, "role").map_err(|_| {
        AppError::bad_input(field, "not a role: use a built-in role name or a role ID")
    })?;
    Ok(RoleRef::Custom(RoleId(uuid)))
}

/// Resolves a role argument to its stored form, refusing escalation (see
/// [`crate::auth::admin::resolve_role`]).
pub async fn resolve_role_input(
    app: &crate::app::App,
    p: &Principal,
    id: &ID,
    field: &str,
) -> AppResult<String> {
    crate::auth::admin::resolve_role(app, p, role_ref(id, field)?, field).await
}

fn user_id(id: &ID) -> AppResult<UserId> {
    Ok(UserId(decode_expecting(id, NodeKind::User, "user")?))
}

fn tenant_id(id: &ID) -> AppResult<super::TenantId> {
    Ok(super::TenantId(decode_expecting(
        id,
        NodeKind::Tenant,
        "tenant",
    )?))
}

fn role_id(id: &ID) -> AppResult<RoleId> {
    Ok(RoleId(decode_expecting(id, NodeKind::Role, "role")?))
}

pub use crate::auth::admin::may_change_user;

/// Global IDs of API keys, as the audit trail names them.
fn key_ids(keys: &[crate::auth::ApiKeyId]) -> Vec<String> {
    keys.iter()
        .map(|k| to_global_id(NodeKind::ApiKey, k.0).0)
        .collect()
}

/// Loads a tenant the caller may see: its own, or any for a platform admin. Everything
/// else is `NOT_FOUND`, indistinguishable from a missing tenant.
pub async fn visible_tenant(
    ctx: &Context<'_>,
    app: &crate::app::App,
    id: uuid::Uuid,
) -> AppResult<Tenant> {
    let principal = principal(ctx)?;
    let id = crate::db::ids::TenantId(id);
    if !principal.may_see_tenant(id) {
        return Err(AppError::not_found("tenant"));
    }
    // The same permission the `tenant` field asks for.
    if !principal.platform_admin
        && !principal
            .permissions
            .contains(&crate::rbac::Permission::TenantRead)
    {
        return Err(
            AppError::forbidden("this requires the tenant.read permission")
                .with_detail("permission", "tenant.read"),
        );
    }
    crate::tenancy::store::find(&app.db, id)
        .await?
        .map(Tenant)
        .ok_or_else(|| AppError::not_found("tenant"))
}
