//! Tenant, user and custom-role queries, written once for both backends. Every function
//! that touches tenant-owned data takes the `TenantId` it is scoped to.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{RoleId, RoleRow, TenantId, TenantRow, UserId, UserRow, UserStatus};
use crate::db::page::Page;
use crate::db::schema::{roles, tenants, users};
use crate::db::{Conn, DbPool};
use crate::error::AppResult;

/// Loads one tenant by id.
pub async fn find(db: &DbPool, id: TenantId) -> AppResult<Option<TenantRow>> {
    Ok(crate::db_run_tenant!(db, id, |conn| {
        tenants::table
            .filter(tenants::id.eq(id))
            .select(TenantRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// The reserved system tenant, if bootstrapped.
pub async fn find_system(db: &DbPool) -> AppResult<Option<TenantRow>> {
    Ok(crate::db_run!(db, |conn| {
        tenants::table
            .filter(tenants::is_system.eq(true))
            .select(TenantRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Inserts a tenant (a duplicate slug is `CONFLICT`).
pub async fn insert(conn: &mut Conn<'_>, row: &TenantRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(tenants::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A page of tenants (platform view) and the total count.
pub async fn list(db: &DbPool, page: &Page) -> AppResult<(Vec<TenantRow>, i64)> {
    Ok(crate::db_run!(db, |conn| {
        let mut q = tenants::table.select(TenantRow::as_select()).into_boxed();
        if let Some(a) = page.after {
            q = q.filter(tenants::id.gt(a.hyphenated().to_string()));
        }
        if let Some(b) = page.before {
            q = q.filter(tenants::id.lt(b.hyphenated().to_string()));
        }
        q = if page.from_end {
            q.order(tenants::id.desc())
        } else {
            q.order(tenants::id.asc())
        };
        let rows = q.limit(page.limit + 1).load(conn).await?;
        let total: i64 = tenants::table.count().get_result(conn).await?;
        (rows, total)
    }))
}

/// Looks a user up by e-mail across the platform (sign-in only: e-mail is globally
/// unique and the tenant is not known yet).
pub async fn find_user_by_email(db: &DbPool, email: &str) -> AppResult<Option<UserRow>> {
    Ok(crate::db_run!(db, |conn| {
        users::table
            .filter(users::email.eq(email))
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Loads a user of `tenant`.
pub async fn find_user(db: &DbPool, tenant: TenantId, id: UserId) -> AppResult<Option<UserRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        users::table
            .filter(users::tenant_id.eq(tenant))
            .filter(users::id.eq(id))
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Replaces a tenant's mutable columns.
/// The columns of a tenant change that differ from the row it started from (`None`:
/// left as stored).
#[derive(diesel::AsChangeset, Default)]
#[diesel(table_name = tenants)]
struct TenantChanges<'a> {
    name: Option<&'a str>,
    plan: Option<&'a super::model::Plan>,
    status: Option<&'a super::model::TenantStatus>,
    status_reason: Option<Option<&'a str>>,
    data_retention_days: Option<i64>,
    require_mfa: Option<bool>,
    allowed_ip_ranges: Option<&'a str>,
    max_users: Option<i64>,
    max_workflows: Option<i64>,
    max_executions_per_month: Option<i64>,
    max_concurrent_executions: Option<i64>,
    max_gpu_memory_mb: Option<i64>,
    feature_flags: Option<&'a str>,
    requests_per_minute: Option<i64>,
    expensive_operations_per_minute: Option<i64>,
    query_cost_per_minute: Option<i64>,
    trusted_documents_only: Option<bool>,
    updated_at: Option<chrono::NaiveDateTime>,
}

/// Writes the columns of `after` that differ from `before` (and `updated_at`).
pub async fn update_changed(
    conn: &mut Conn<'_>,
    before: &TenantRow,
    after: &TenantRow,
) -> AppResult<()> {
    fn diff<T: PartialEq>(a: T, b: T) -> Option<T> {
        (a != b).then_some(b)
    }
    let c = TenantChanges {
        name: diff(before.name.as_str(), after.name.as_str()),
        plan: diff(&before.plan, &after.plan),
        status: diff(&before.status, &after.status),
        status_reason: diff(
            before.status_reason.as_deref(),
            after.status_reason.as_deref(),
        ),
        data_retention_days: diff(before.data_retention_days, after.data_retention_days),
        require_mfa: diff(before.require_mfa, after.require_mfa),
        allowed_ip_ranges: diff(
            before.allowed_ip_ranges.as_str(),
            after.allowed_ip_ranges.as_str(),
        ),
        max_users: diff(before.max_users, after.max_users),
        max_workflows: diff(before.max_workflows, after.max_workflows),
        max_executions_per_month: diff(
            before.max_executions_per_month,
            after.max_executions_per_month,
        ),
        max_concurrent_executions: diff(
            before.max_concurrent_executions,
            after.max_concurrent_executions,
        ),
        max_gpu_memory_mb: diff(before.max_gpu_memory_mb, after.max_gpu_memory_mb),
        feature_flags: diff(before.feature_flags.as_str(), after.feature_flags.as_str()),
        requests_per_minute: diff(before.requests_per_minute, after.requests_per_minute),
        expensive_operations_per_minute: diff(
            before.expensive_operations_per_minute,
            after.expensive_operations_per_minute,
        ),
        query_cost_per_minute: diff(before.query_cost_per_minute, after.query_cost_per_minute),
        trusted_documents_only: diff(before.trusted_documents_only, after.trusted_documents_only),
        updated_at: Some(after.updated_at),
    };
    crate::on_conn!(conn, |conn| {
        diesel::update(tenants::table.filter(tenants::id.eq(after.id)))
            .set(&c)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Inserts a user (a duplicate e-mail is `CONFLICT`).
pub async fn insert_user(conn: &mut Conn<'_>, row: &UserRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(users::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Counts a tenant's users.
pub async fn count_users(conn: &mut Conn<'_>, tenant: TenantId) -> AppResult<i64> {
    Ok(crate::on_conn!(conn, |conn| {
        users::table
            .filter(users::tenant_id.eq(tenant))
            .count()
            .get_result(conn)
            .await?
    }))
}

/// A page of a tenant's users and the total count.
pub async fn list_users(
    db: &DbPool,
    tenant: TenantId,
    page: &Page,
) -> AppResult<(Vec<UserRow>, i64)> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        let mut q = users::table
            .filter(users::tenant_id.eq(tenant))
            .select(UserRow::as_select())
            .into_boxed();
        if let Some(a) = page.after {
            q = q.filter(users::id.gt(a.hyphenated().to_string()));
        }
        if let Some(b) = page.before {
            q = q.filter(users::id.lt(b.hyphenated().to_string()));
        }
        q = if page.from_end {
            q.order(users::id.desc())
        } else {
            q.order(users::id.asc())
        };
        let rows = q.limit(page.limit + 1).load(conn).await?;
        let total: i64 = users::table
            .filter(users::tenant_id.eq(tenant))
            .count()
            .get_result(conn)
            .await?;
        (rows, total)
    }))
}

/// The refusal when a change would leave a tenant without an active OWNER.
pub fn no_owner_left() -> crate::error::AppError {
    crate::error::AppError::new(
        crate::error::ErrorCode::Conflict,
        "a tenant keeps at least one active OWNER: make another user OWNER first",
    )
}

/// Inside a write transaction, after its audit append (which holds the tenant's chain
/// lock, so concurrent changes of one tenant are checked one after the other): whether
/// user `$user` of `$tenant` is an active OWNER now. Evaluates to `Option<bool>` (`None`:
/// no such user).
macro_rules! is_active_owner {
    ($conn:expr, $tenant:expr, $user:expr) => {{
        use $crate::db::schema::users;
        users::table
            .filter(users::tenant_id.eq($tenant))
            .filter(users::id.eq($user))
            .select((users::role, users::status))
            .first::<(String, String)>(&mut *$conn)
            .await
            .optional()?
            .map(|(role, status)| {
                role == $crate::rbac::BuiltinRole::Owner.as_str()
                    && status == $crate::tenancy::model::UserStatus::Active.as_str()
            })
    }};
}
pub(crate) use is_active_owner;

/// Inside a write transaction: refuses (rolling it back) when `$tenant` has no active
/// OWNER left.
macro_rules! ensure_an_owner {
    ($conn:expr, $tenant:expr) => {{
        use $crate::db::schema::users;
        let owners: i64 = users::table
            .filter(users::tenant_id.eq($tenant))
            .filter(users::role.eq($crate::rbac::BuiltinRole::Owner.as_str()))
            .filter(users::status.eq($crate::tenancy::model::UserStatus::Active.as_str()))
            .count()
            .get_result(&mut *$conn)
            .await?;
        if owners == 0 {
            return Err($crate::tenancy::store::no_owner_left());
        }
    }};
}
pub(crate) use ensure_an_owner;

/// Inside a write transaction: revokes the unrevoked API keys created by `$user` (an
/// actor reference, `user:<id>`);
/// evaluates to how many.
macro_rules! revoke_keys_created_by {
    ($conn:expr, $tenant:expr, $user:expr, $now:expr) => {{
        use $crate::db::schema::api_keys;
        diesel::update(
            api_keys::table
                .filter(api_keys::tenant_id.eq($tenant))
                .filter(api_keys::created_by.eq($user))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(Some($now)))
        .execute(&mut *$conn)
        .await?
    }};
}
pub(crate) use revoke_keys_created_by;

/// What [`change_user`] changes.
#[derive(Debug, Clone, Copy)]
pub enum UserChange<'a> {
    /// A new role (a built-in role name or a custom role's id).
    Role(&'a str),
    /// A new status.
    Status(UserStatus),
    /// A new display name.
    DisplayName(&'a str),
}

/// Changes a user's role or status, on the caller's transaction and after its audit
/// append (which holds the tenant's chain lock, so concurrent changes of one tenant are
/// checked one after the other). The last active OWNER of a tenant keeps the role and
/// stays active (`CONFLICT`). Leaving ACTIVE also revokes the user's sessions and the API
/// keys they created; returns how many keys.
pub async fn change_user(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: UserId,
    change: UserChange<'_>,
    now: NaiveDateTime,
) -> AppResult<usize> {
    let creator = format!("user:{id}");
    let deactivating = matches!(change, UserChange::Status(s) if s != UserStatus::Active);
    Ok(crate::on_conn!(conn, |conn| {
        let was_owner = is_active_owner!(conn, tenant, id)
            .ok_or_else(|| crate::error::AppError::not_found("user"))?;
        let user = users::table
            .filter(users::tenant_id.eq(tenant))
            .filter(users::id.eq(id));
        match change {
            UserChange::Role(role) => {
                diesel::update(user)
                    .set((users::role.eq(role), users::updated_at.eq(now)))
                    .execute(&mut *conn)
                    .await?
            }
            UserChange::Status(status) => {
                diesel::update(user)
                    .set((users::status.eq(status.as_str()), users::updated_at.eq(now)))
                    .execute(&mut *conn)
                    .await?
            }
            UserChange::DisplayName(name) => {
                diesel::update(user)
                    .set((users::display_name.eq(name), users::updated_at.eq(now)))
                    .execute(&mut *conn)
                    .await?
            }
        };
        if was_owner && (deactivating || matches!(change, UserChange::Role(_))) {
            ensure_an_owner!(conn, tenant);
        }
        if deactivating {
            // Sessions and API keys end in the same transaction as the account.
            use crate::db::schema::sessions;
            diesel::update(
                sessions::table
                    .filter(sessions::tenant_id.eq(tenant))
                    .filter(sessions::user_id.eq(id))
                    .filter(sessions::revoked_at.is_null()),
            )
            .set((
                sessions::revoked_at.eq(Some(now)),
                sessions::revoked_reason.eq(Some("user_disabled")),
            ))
            .execute(&mut *conn)
            .await?;
            revoke_keys_created_by!(conn, tenant, &creator, now)
        } else {
            0
        }
    }))
}

/// Makes user `id` an active OWNER of `tenant` (platform repair of a tenant whose owners
/// were all demoted or disabled). `NOT_FOUND` for an unknown or erased user.
pub async fn restore_owner(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: UserId,
    now: NaiveDateTime,
) -> AppResult<()> {
    let changed = crate::on_conn!(conn, |conn| {
        diesel::update(
            users::table
                .filter(users::tenant_id.eq(tenant))
                .filter(users::id.eq(id))
                .filter(users::status.ne(UserStatus::Erased.as_str())),
        )
        .set((
            users::role.eq(crate::rbac::BuiltinRole::Owner.as_str()),
            users::status.eq(UserStatus::Active.as_str()),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .await?
    });
    if changed == 0 {
        return Err(crate::error::AppError::not_found("user"));
    }
    Ok(())
}

/// Sets a user's password hash; `false` when there is no such user.
pub async fn set_password(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: UserId,
    hash: &str,
    now: NaiveDateTime,
) -> AppResult<bool> {
    Ok(crate::on_conn!(conn, |conn| {
        diesel::update(
            users::table
                .filter(users::tenant_id.eq(tenant))
                .filter(users::id.eq(id)),
        )
        .set((
            users::password_hash.eq(Some(hash)),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .await?
            == 1
    }))
}

/// Changes a user's e-mail address (a taken address is `CONFLICT`).
pub async fn set_email(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: UserId,
    email: &str,
    now: NaiveDateTime,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::update(
            users::table
                .filter(users::tenant_id.eq(tenant))
                .filter(users::id.eq(id)),
        )
        .set((users::email.eq(email), users::updated_at.eq(now)))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Records that a user was active at `now`, when the stored time is older than `since`
/// (one statement; a no-op when another request already wrote it).
pub async fn touch_last_active(
    db: &DbPool,
    id: UserId,
    now: NaiveDateTime,
    since: NaiveDateTime,
) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::update(
            users::table.filter(users::id.eq(id)).filter(
                users::last_active_at
                    .is_null()
                    .or(users::last_active_at.lt(since)),
            ),
        )
        .set(users::last_active_at.eq(Some(now)))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Records a successful sign-in.
pub async fn touch_last_login(db: &DbPool, id: UserId, now: NaiveDateTime) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::update(users::table.filter(users::id.eq(id)))
            .set(users::last_login_at.eq(Some(now)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Loads a custom role of `tenant`.
pub async fn find_role(db: &DbPool, tenant: TenantId, id: RoleId) -> AppResult<Option<RoleRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        roles::table
            .filter(roles::tenant_id.eq(tenant))
            .filter(roles::id.eq(id))
            .select(RoleRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// `NOT_FOUND` unless `role` (a stored role reference) is a built-in role or a custom role
/// of `tenant` that exists now. Called inside the transaction that grants the role,
/// after its audit append (the tenant's chain lock, which deleting a role also takes),
/// so a role cannot be granted and deleted at once.
pub async fn role_still_exists(conn: &mut Conn<'_>, tenant: TenantId, role: &str) -> AppResult<()> {
    if crate::rbac::BuiltinRole::parse(role).is_some() {
        return Ok(());
    }
    let n: i64 = crate::on_conn!(conn, |conn| {
        roles::table
            .filter(roles::tenant_id.eq(tenant))
            .filter(roles::id.eq(role))
            .count()
            .get_result(conn)
            .await?
    });
    if n == 0 {
        return Err(crate::error::AppError::not_found("role"));
    }
    Ok(())
}

/// Inserts a custom role (a duplicate name in the tenant is `CONFLICT`).
pub async fn insert_role(conn: &mut Conn<'_>, row: &RoleRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(roles::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A tenant's custom roles, by name.
pub async fn list_roles(db: &DbPool, tenant: TenantId) -> AppResult<Vec<RoleRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        roles::table
            .filter(roles::tenant_id.eq(tenant))
            .order(roles::name.asc())
            .select(RoleRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Loads a user by id alone. Only for flows where the id comes from a server-held secret
/// (a set-password token), never from client input.
pub async fn find_user_any(db: &DbPool, id: UserId) -> AppResult<Option<UserRow>> {
    Ok(crate::db_run!(db, |conn| {
        users::table
            .filter(users::id.eq(id))
            .select(UserRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Replaces a custom role's name, description and permissions.
pub async fn update_role(conn: &mut Conn<'_>, row: &RoleRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::update(
            roles::table
                .filter(roles::tenant_id.eq(row.tenant_id))
                .filter(roles::id.eq(row.id)),
        )
        .set((
            roles::name.eq(&row.name),
            roles::description.eq(&row.description),
            roles::permissions.eq(&row.permissions),
            roles::updated_at.eq(row.updated_at),
        ))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// How many users and live API keys hold a role.
pub async fn role_holders(conn: &mut Conn<'_>, tenant: TenantId, role: &str) -> AppResult<i64> {
    use crate::db::schema::api_keys;
    Ok(crate::on_conn!(conn, |conn| {
        let u: i64 = users::table
            .filter(users::tenant_id.eq(tenant))
            .filter(users::role.eq(role))
            .count()
            .get_result(conn)
            .await?;
        let k: i64 = api_keys::table
            .filter(api_keys::tenant_id.eq(tenant))
            .filter(api_keys::role.eq(role))
            .filter(api_keys::revoked_at.is_null())
            .count()
            .get_result(conn)
            .await?;
        u + k
    }))
}

/// Deletes a custom role.
pub async fn delete_role(conn: &mut Conn<'_>, tenant: TenantId, id: RoleId) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(
            roles::table
                .filter(roles::tenant_id.eq(tenant))
                .filter(roles::id.eq(id)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Loads a tenant by slug (operator CLI).
pub async fn find_by_slug(db: &DbPool, slug: &str) -> AppResult<Option<TenantRow>> {
    Ok(crate::db_run!(db, |conn| {
        tenants::table
            .filter(tenants::slug.eq(slug))
            .select(TenantRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Users of `tenant` by id, in one statement (dataloader).
pub async fn users_by_ids(
    db: &DbPool,
    tenant: TenantId,
    ids: &[UserId],
) -> AppResult<Vec<UserRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        users::table
            .filter(users::tenant_id.eq(tenant))
            .filter(users::id.eq_any(ids))
            .select(UserRow::as_select())
            .load(conn)
            .await?
    }))
}
