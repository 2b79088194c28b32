//! Tenancy rules shared by the GraphQL API, the CLI (`admin create-tenant`,
//! `admin create-user`) and first-start bootstrap: the same validation, the same audit
//! records, one transaction per creation.

pub mod deletion;
pub mod teams;
pub mod tenants;

use super::model::{Plan, TenantRow, UserRow};
use super::model::{new_tenant_row, new_user_row};
use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};

/// A valid tenant slug: 3–40 of a-z, 0-9 and -, not starting or ending with -.
pub fn check_slug(raw: &str) -> AppResult<String> {
    let s = raw.trim();
    let ok = (3..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(AppError::bad_input(
            "slug",
            "3–40 characters of a-z, 0-9 and -, not starting or ending with -",
        ))
    }
}

/// A valid tenant name (1–200 characters, trimmed).
pub fn check_name(raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(AppError::bad_input(
            "name",
            "the name must be 1 to 200 characters",
        ));
    }
    Ok(name.to_owned())
}

/// How a new user gets a password.
pub enum Credential {
    /// A one-time set-password link token (returned to the caller).
    SetPasswordToken,
    /// This argon2id hash (the CLI generated and printed the password).
    Hash(String),
    /// None: the user signs in through the tenant's single sign-on only.
    None,
}

/// A tenant to create.
pub struct NewTenant<'a> {
    /// Its slug (checked).
    pub slug: &'a str,
    /// Its name (checked).
    pub name: &'a str,
    /// Its plan (quotas follow it).
    pub plan: Plan,
    /// The system tenant (platform operators): its first user is a PLATFORM_ADMIN.
    pub is_system: bool,
}

/// A user to create.
pub struct NewUser<'a> {
    /// E-mail (normalised).
    pub email: &'a str,
    /// Display name.
    pub display_name: &'a str,
    /// How they get a password.
    pub credential: Credential,
}

/// What a creation returns.
pub struct Created {
    /// The new tenant (tenant creation only).
    pub tenant: Option<TenantRow>,
    /// The new user.
    pub user: UserRow,
    /// The set-password token, for [`Credential::SetPasswordToken`].
    pub set_password_token: Option<String>,
}

fn token_for(
    app: &App,
    user: &UserRow,
    credential: &Credential,
) -> (Option<String>, Option<crate::auth::model::PasswordTokenRow>) {
    match credential {
        Credential::SetPasswordToken => {
            let (t, row) = crate::auth::service::new_password_token(app, user.id);
            (Some(t), Some(row))
        }
        Credential::Hash(_) | Credential::None => (None, None),
    }
}

/// Creates a tenant and its OWNER in one transaction, recorded as `tenant.created` at
/// the start of the new tenant's own chain (by `origin`'s actor). A slug in use is
/// `CONFLICT`; nothing is left behind.
pub async fn create_tenant(
    app: &App,
    origin: &Origin,
    new: NewTenant<'_>,
    owner: NewUser<'_>,
) -> AppResult<Created> {
    let slug = check_slug(new.slug)?;
    let name = check_name(new.name)?;
    let now = db_time(app.clock.now());
    let tenant = new_tenant_row(&slug, &name, new.plan, new.is_system, now);
    let NewUser {
        email: owner_email,
        display_name: owner_name,
        credential,
    } = owner;
    let role = if new.is_system {
        crate::rbac::BuiltinRole::PlatformAdmin
    } else {
        crate::rbac::BuiltinRole::Owner
    };
    let mut owner = new_user_row(tenant.id, owner_email, owner_name, role.as_str(), now)?;
    if let Credential::Hash(h) = &credential {
        owner.password_hash = Some(h.clone());
    }
    let (token, token_row) = token_for(app, &owner, &credential);
    let mut origin = origin.clone();
    origin.tenant_id = tenant.id;
    let audit = Entry::change(
        &origin,
        "tenant.created",
        "tenant",
        tenant.id,
        Some(serde_json::json!({
            "after": super::model::tenant_view(&tenant),
            "ownerId": owner.id.to_string(),
        })),
        now,
    );
    create_with_token(app, Some(&tenant), &owner, token_row.as_ref(), None, &audit).await?;
    Ok(Created {
        tenant: Some(tenant),
        user: owner,
        set_password_token: token,
    })
}

/// Creates a user of `tenant` with `role` (already checked against what the caller may
/// grant), recorded as `user.created`. With `enforce_quota`, the plan's user quota is
/// checked in the same transaction.
pub async fn create_user(
    app: &App,
    origin: &Origin,
    tenant: &TenantRow,
    new: NewUser<'_>,
    role: &str,
    enforce_quota: bool,
) -> AppResult<Created> {
    let NewUser {
        email,
        display_name,
        credential,
    } = new;
    let now = db_time(app.clock.now());
    let mut user = new_user_row(tenant.id, email, display_name, role, now)?;
    if let Credential::Hash(h) = &credential {
        user.password_hash = Some(h.clone());
    }
    let (token, token_row) = token_for(app, &user, &credential);
    let mut origin = origin.clone();
    origin.tenant_id = tenant.id;
    let audit = Entry::change(
        &origin,
        "user.created",
        "user",
        user.id,
        Some(serde_json::json!({ "role": role })),
        now,
    );
    create_with_token(
        app,
        None,
        &user,
        token_row.as_ref(),
        enforce_quota.then_some(tenant.max_users),
        &audit,
    )
    .await?;
    Ok(Created {
        tenant: None,
        user,
        set_password_token: token,
    })
}

/// Creates a user (and, with `tenant`, the tenant it owns) with its one-time
/// set-password token and the audit record, all or nothing: a duplicate slug or e-mail
/// (`CONFLICT`) leaves no tenant, user, token or record behind. With `max_users`, the
/// tenant's user count is checked in the same transaction (`QUOTA_EXCEEDED`).
async fn create_with_token(
    app: &App,
    tenant: Option<&TenantRow>,
    user: &UserRow,
    token: Option<&crate::auth::model::PasswordTokenRow>,
    max_users: Option<i64>,
    audit: &Entry,
) -> AppResult<()> {
    app.db
        .tx(user.tenant_id, async |conn| {
            // In an existing tenant, its audit-chain lock comes first: concurrent
            // creations count users one after the other (the quota holds however many
            // arrive at once), and a custom role deleted since it was resolved (deleting
            // takes the same lock before counting holders) is not granted. A new
            // tenant's chain can only start once the tenant row exists.
            if tenant.is_none() {
                crate::audit::append(conn, audit).await?;
            }
            if let Some(max) = max_users {
                if super::store::count_users(conn, user.tenant_id).await? >= max {
                    return Err(AppError::quota_exceeded("maxUsers", max, "users"));
                }
            }
            super::store::role_still_exists(conn, user.tenant_id, &user.role).await?;
            if let Some(t) = tenant {
                super::store::insert(conn, t).await?;
            }
            super::store::insert_user(conn, user).await?;
            if let Some(token) = token {
                crate::auth::store::insert_password_token(conn, token).await?;
            }
            if tenant.is_some() {
                crate::audit::append(conn, audit).await?;
            }
            Ok(())
        })
        .await
}
