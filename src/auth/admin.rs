//! Tenant administration by a signed-in principal: who may change whom, which roles and
//! permissions one may grant (nobody grants what they do not hold), users' roles and
//! status, and custom roles. Each change and its audit record commit together; the
//! record comes first, so it holds the tenant's chain lock while the rules are checked.

use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::rbac::{BuiltinRole, Permission, PermissionSet, parse_permission_list};
use crate::tenancy::UserRow;
use crate::tenancy::model::{RoleId, RoleRow, UserId, UserStatus};
use crate::tenancy::service::{Created, Credential, NewUser};
use crate::tenancy::store::{self as tenancy_store, UserChange};

use super::Principal;

/// A role as a client names it: a built-in role or a custom role of the caller's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleRef {
    /// A built-in role.
    Builtin(BuiltinRole),
    /// A custom role.
    Custom(RoleId),
}

/// Resolves a role to its stored form, refusing escalation: nobody grants a permission
/// they do not hold, and only platform admins grant PLATFORM_ADMIN. `field` names the
/// input in errors.
pub async fn resolve_role(
    app: &App,
    p: &Principal,
    role: RoleRef,
    field: &str,
) -> AppResult<String> {
    let (stored, perms) = match role {
        RoleRef::Builtin(b) => {
            if b == BuiltinRole::PlatformAdmin && !p.platform_admin {
                return Err(AppError::forbidden(
                    "only platform admins grant PLATFORM_ADMIN",
                ));
            }
            (b.as_str().to_owned(), b.permissions())
        }
        RoleRef::Custom(id) => {
            let r = tenancy_store::find_role(&app.db, p.tenant_id, id)
                .await?
                .ok_or_else(|| AppError::not_found("role"))?;
            (r.id.to_string(), parse_permission_list(&r.permissions))
        }
    };
    if !perms.is_subset(&p.permissions) {
        return Err(
            AppError::forbidden("you cannot grant permissions you do not hold")
                .with_detail("field", field),
        );
    }
    Ok(stored)
}

/// A user of the caller's tenant, or `NOT_FOUND`.
pub async fn user(app: &App, p: &Principal, id: UserId) -> AppResult<UserRow> {
    tenancy_store::find_user(&app.db, p.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// Creates a user in the caller's tenant with a role the caller may grant; the user
/// sets a password with the returned one-time token.
pub async fn create_user(
    app: &App,
    origin: &Origin,
    p: &Principal,
    email: &str,
    display_name: &str,
    role: RoleRef,
) -> AppResult<Created> {
    let role = resolve_role(app, p, role, "roleId").await?;
    let tenant = crate::tenancy::service::tenants::get(app, p.tenant_id).await?;
    crate::tenancy::service::create_user(
        app,
        origin,
        &tenant,
        NewUser {
            email,
            display_name,
            credential: Credential::SetPasswordToken,
        },
        &role,
        true,
    )
    .await
}

/// Changes a user's role, within what the caller may grant and only for a user who
/// holds no permission the caller lacks. The last active OWNER keeps the role.
pub async fn set_role(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: UserId,
    role: RoleRef,
) -> AppResult<UserRow> {
    let mut user = user(app, p, id).await?;
    may_change_user(app, p, &user).await?;
    let role = resolve_role(app, p, role, "roleId").await?;
    let now = db_time(app.clock.now());
    let audit = Entry::change(
        origin,
        "user.role_changed",
        "user",
        user.id,
        Some(serde_json::json!({ "role": { "before": user.role, "after": role } })),
        now,
    )
    .severity(Severity::Warning);
    app.db
        .tx(p.tenant_id, async |conn| {
            crate::audit::append(conn, &audit).await?;
            // After the chain lock: a custom role deleted meanwhile is not granted.
            tenancy_store::role_still_exists(conn, p.tenant_id, &role).await?;
            tenancy_store::change_user(conn, p.tenant_id, user.id, UserChange::Role(&role), now)
                .await
        })
        .await?;
    app.rights_changed(p.tenant_id);
    user.role = role;
    user.updated_at = now;
    Ok(user)
}

/// Disables a user (not oneself, not someone holding permissions the caller lacks, not
/// the last active OWNER): sign-in, their sessions and the API keys they created stop
/// working, in one transaction. `key_ids` lists those keys for the audit record.
pub async fn disable(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: UserId,
    key_ids: impl FnOnce(&[super::ApiKeyId]) -> Vec<String>,
) -> AppResult<UserRow> {
    let mut user = user(app, p, id).await?;
    if p.user_id() == Some(user.id) {
        return Err(AppError::bad_input("userId", "you cannot disable yourself"));
    }
    may_change_user(app, p, &user).await?;
    let now = db_time(app.clock.now());
    let keys =
        super::store::active_keys_created_by(&app.db, p.tenant_id, &format!("user:{}", user.id))
            .await?;
    let audit = Entry::change(
        origin,
        "user.disabled",
        "user",
        user.id,
        Some(serde_json::json!({
            "status": { "before": user.status, "after": UserStatus::Disabled.as_str() },
            "apiKeysRevoked": key_ids(&keys),
        })),
        now,
    )
    .severity(Severity::Warning);
    set_status(app, p, user.id, UserStatus::Disabled, &audit).await?;
    user.status = UserStatus::Disabled;
    user.updated_at = now;
    Ok(user)
}

/// Sets a user's status with its record in one transaction, and announces the rights
/// change (disabling also ends the user's sessions and keys: `change_user`).
async fn set_status(
    app: &App,
    p: &Principal,
    user: UserId,
    status: UserStatus,
    audit: &Entry,
) -> AppResult<()> {
    app.db
        .tx(p.tenant_id, async |conn| {
            crate::audit::append(conn, audit).await?;
            tenancy_store::change_user(
                conn,
                p.tenant_id,
                user,
                UserChange::Status(status),
                audit.at,
            )
            .await
        })
        .await?;
    app.rights_changed(p.tenant_id);
    Ok(())
}

/// Enables a disabled user again (by someone who may change them): they sign in anew;
/// the sessions and API keys that ended with the disabling stay ended. An active user is
/// returned as is; an erased one cannot come back (`CONFLICT`).
pub async fn enable(app: &App, origin: &Origin, p: &Principal, id: UserId) -> AppResult<UserRow> {
    let mut user = user(app, p, id).await?;
    match user.status {
        UserStatus::Active => return Ok(user),
        UserStatus::Erased => {
            return Err(AppError::conflict(
                "an erased user cannot be enabled: create a new user instead",
            ));
        }
        UserStatus::Disabled => {}
    }
    may_change_user(app, p, &user).await?;
    let now = db_time(app.clock.now());
    let audit = Entry::change(
        origin,
        "user.enabled",
        "user",
        user.id,
        Some(serde_json::json!({
            "status": { "before": user.status, "after": UserStatus::Active.as_str() },
        })),
        now,
    )
    .severity(Severity::Warning);
    set_status(app, p, user.id, UserStatus::Active, &audit).await?;
    user.status = UserStatus::Active;
    user.updated_at = now;
    Ok(user)
}

/// Changes a user's display name: one's own, or anyone's one may change
/// (`users.manage`, within the role rules). 1 to 100 characters.
pub async fn update_user(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: UserId,
    display_name: &str,
) -> AppResult<UserRow> {
    let mut user = user(app, p, id).await?;
    if p.user_id() != Some(user.id) {
        if !p
            .permissions
            .contains(&crate::rbac::Permission::UsersManage)
        {
            return Err(AppError::forbidden(
                "changing another user requires the users.manage permission",
            )
            .with_detail("permission", "users.manage"));
        }
        may_change_user(app, p, &user).await?;
    }
    let name = display_name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::bad_input("displayName", "1 to 100 characters"));
    }
    if name == user.display_name {
        return Ok(user);
    }
    let now = db_time(app.clock.now());
    let audit = Entry::change(
        origin,
        "user.updated",
        "user",
        user.id,
        Some(serde_json::json!({
            "displayName": { "before": user.display_name, "after": name },
        })),
        now,
    );
    app.db
        .tx(p.tenant_id, async |conn| {
            crate::audit::append(conn, &audit).await?;
            tenancy_store::change_user(
                conn,
                p.tenant_id,
                user.id,
                UserChange::DisplayName(name),
                now,
            )
            .await
        })
        .await?;
    name.clone_into(&mut user.display_name);
    user.updated_at = now;
    Ok(user)
}

/// A custom role of the caller's tenant, or `NOT_FOUND`.
pub async fn role(app: &App, p: &Principal, id: RoleId) -> AppResult<RoleRow> {
    tenancy_store::find_role(&app.db, p.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("role"))
}

/// Creates a custom role in the caller's tenant with permissions the caller holds.
pub async fn create_role(
    app: &App,
    origin: &Origin,
    p: &Principal,
    name: &str,
    description: &str,
    permissions: &[String],
) -> AppResult<RoleRow> {
    let name = role_name(name)?;
    let perms = grantable(p, permissions)?;
    let now = db_time(app.clock.now());
    let row = RoleRow {
        id: RoleId::new(),
        tenant_id: p.tenant_id,
        name,
        description: description.trim().to_owned(),
        permissions: serde_json::to_string(&perm_names(&perms)).map_err(AppError::internal)?,
        created_at: now,
        updated_at: now,
    };
    let audit = role_audit(origin, "role.created", &row, None);
    app.db
        .tx(p.tenant_id, async |conn| {
            tenancy_store::insert_role(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Changes a custom role; `None` keeps a value. Holders get the new permissions on their
/// next request.
pub async fn update_role(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: RoleId,
    name: Option<&str>,
    description: Option<&str>,
    permissions: Option<&[String]>,
) -> AppResult<RoleRow> {
    let mut row = role(app, p, id).await?;
    let before = role_view(&row);
    if let Some(n) = name {
        row.name = role_name(n)?;
    }
    if let Some(d) = description {
        row.description = d.trim().to_owned();
    }
    if let Some(ps) = permissions {
        row.permissions =
            serde_json::to_string(&perm_names(&grantable(p, ps)?)).map_err(AppError::internal)?;
    }
    row.updated_at = db_time(app.clock.now());
    let audit = role_audit(origin, "role.updated", &row, Some(&before)).severity(Severity::Warning);
    app.db
        .tx(p.tenant_id, async |conn| {
            tenancy_store::update_role(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    app.rights_changed(p.tenant_id);
    Ok(row)
}

/// Deletes a custom role that no user or live API key holds (`CONFLICT` otherwise). The
/// holders are counted in the delete's transaction, after the tenant's chain lock, so a
/// concurrent grant of the role (which takes the same lock) cannot slip in between.
pub async fn delete_role(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: RoleId,
) -> AppResult<RoleRow> {
    let row = role(app, p, id).await?;
    let mut audit = role_audit(origin, "role.deleted", &row, None);
    audit.at = db_time(app.clock.now());
    app.db
        .tx(p.tenant_id, async |conn| {
            crate::audit::append(conn, &audit).await?;
            let holders =
                tenancy_store::role_holders(conn, row.tenant_id, &row.id.to_string()).await?;
            if holders > 0 {
                return Err(AppError::conflict(format!(
                    "{holders} users or API keys still hold this role"
                )));
            }
            tenancy_store::delete_role(conn, row.tenant_id, row.id).await
        })
        .await?;
    app.rights_changed(p.tenant_id);
    Ok(row)
}

/// The stored names of a permission set.
pub fn perm_names(set: &PermissionSet) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_owned()).collect()
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

fn role_view(r: &RoleRow) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "description": r.description,
        "permissions": serde_json::from_str::<serde_json::Value>(&r.permissions).unwrap_or_default(),
    })
}

/// A custom-role change: the full role when created or deleted, the diff when updated.
fn role_audit(
    origin: &Origin,
    action: &str,
    r: &RoleRow,
    before: Option<&serde_json::Value>,
) -> Entry {
    let changes = match before {
        Some(b) => crate::audit::diff(b, &role_view(r)),
        None => role_view(r),
    };
    Entry::change(origin, action, "role", r.id, Some(changes), r.updated_at)
}

/// Refuses changes to a user who holds permissions the caller does not (an ADMIN cannot
/// demote, disable or erase an OWNER). Platform admins may change anyone.
pub async fn may_change_user(app: &App, p: &Principal, target: &UserRow) -> AppResult<()> {
    if p.platform_admin {
        return Ok(());
    }
    let tenant = crate::tenancy::store::find(&app.db, target.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let (held, platform) = super::role_permissions(app, &tenant, &target.role).await?;
    if platform || !held.is_subset(&p.permissions) {
        return Err(AppError::forbidden(
            "this user holds permissions you do not hold; ask someone with at least their role",
        ));
    }
    Ok(())
}
