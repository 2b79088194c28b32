//! GraphQL types for tenants.

use async_graphql::{ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::model::{Plan, TenantRow, TenantStatus};
use crate::db::ids::utc;
use crate::graphql::relay::{NodeKind, to_global_id};

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
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

fn perm_names(set: &PermissionSet) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_owned()).collect()
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

use super::model::{plan_quotas, tenant_view};

async fn tenant_for_admin(ctx: &Context<'_>, id: &ID) -> AppResult<TenantRow> {
    let uuid = decode_expecting(id, NodeKind::Tenant, "tenant")?;
    let a = app(ctx)?;
    super::store::find(&a.db, super::TenantId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))
}

pub use crate::auth::users::may_change_user;

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

/// A tenant change, recorded in that tenant's own chain (a platform admin acting on a
/// tenant shows up in the tenant's trail).
fn tenant_audit(
    ctx: &Context<'_>,
    action: &str,
    before: &serde_json::Value,
    t: &TenantRow,
) -> AppResult<crate::audit::Entry> {
    let mut origin = crate::graphql::origin(ctx)?;
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
        &crate::graphql::origin(ctx)?,
        action,
        "role",
        r.id,
        Some(changes),
        r.updated_at,
    ))
}
