//! Session, refresh-token, API-key, revocation and lockout queries, written once for both
//! backends.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{
    ApiKeyId, ApiKeyRow, LoginAttemptRow, PasswordTokenRow, RefreshTokenRow, RevokedTokenRow,
    SessionId, SessionRow,
};
use crate::db::schema::{
    api_keys, login_attempts, password_tokens, refresh_tokens, revoked_access_tokens, sessions,
};
use crate::db::{Conn, DbPool};
use crate::error::AppResult;
use crate::tenancy::{TenantId, TenantRow, UserId, UserRow};

/// Creates a session with its first refresh token.
pub async fn insert_session(
    conn: &mut Conn<'_>,
    s: &SessionRow,
    t: &RefreshTokenRow,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(sessions::table)
            .values(s)
            .execute(conn)
            .await?;
        diesel::insert_into(refresh_tokens::table)
            .values(t)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Everything an access token's principal rests on, read in one statement: the session,
/// its user, the tenant, the user's custom role (when the role is one) and whether the
/// token was revoked.
#[derive(Debug)]
pub struct TokenSubject {
    /// The token's session.
    pub session: SessionRow,
    /// The session's user.
    pub user: UserRow,
    /// The user's tenant.
    pub tenant: TenantRow,
    /// The permissions of the user's custom role; `None` for a built-in role or a custom
    /// role that no longer exists.
    pub custom_role_permissions: Option<String>,
    /// Whether the token's `jti` is on the revocation list.
    pub token_revoked: bool,
}

/// Reads the [`TokenSubject`] of session `session` of user `user` in `tenant`; `None`
/// when the session does not belong to that user and tenant.
pub async fn token_subject(
    db: &DbPool,
    tenant: TenantId,
    session: SessionId,
    user: UserId,
    jti: &str,
) -> AppResult<Option<TokenSubject>> {
    use crate::db::schema::{roles, tenants, users};
    // A platform lookup, outside a row-level-security transaction: one statement on
    // PostgreSQL too (the tenant is filtered by the query itself).
    let row = crate::db_run!(db, |conn| {
        sessions::table
            .inner_join(users::table.inner_join(tenants::table))
            .left_join(
                roles::table.on(roles::id
                    .eq(users::role)
                    .and(roles::tenant_id.eq(users::tenant_id))),
            )
            .filter(sessions::tenant_id.eq(tenant))
            .filter(sessions::id.eq(session))
            .filter(users::id.eq(user))
            .select((
                SessionRow::as_select(),
                UserRow::as_select(),
                TenantRow::as_select(),
                roles::permissions.nullable(),
                diesel::dsl::exists(
                    revoked_access_tokens::table.filter(revoked_access_tokens::jti.eq(jti)),
                ),
            ))
            .first::<(SessionRow, UserRow, TenantRow, Option<String>, bool)>(conn)
            .await
            .optional()?
    });
    Ok(row.map(
        |(session, user, tenant, custom_role_permissions, token_revoked)| TokenSubject {
            session,
            user,
            tenant,
            custom_role_permissions,
            token_revoked,
        },
    ))
}

/// An API key with its tenant and, when its role is a custom one, that role's
/// permissions: one statement.
pub async fn api_key_subject(
    db: &DbPool,
    hash: &str,
) -> AppResult<Option<(ApiKeyRow, TenantRow, Option<String>)>> {
    use crate::db::schema::{roles, tenants};
    Ok(crate::db_run!(db, |conn| {
        api_keys::table
            .inner_join(tenants::table)
            .left_join(
                roles::table.on(roles::id
                    .eq(api_keys::role)
                    .and(roles::tenant_id.eq(api_keys::tenant_id))),
            )
            .filter(api_keys::secret_hash.eq(hash))
            .select((
                ApiKeyRow::as_select(),
                TenantRow::as_select(),
                roles::permissions.nullable(),
            ))
            .first(conn)
            .await
            .optional()?
    }))
}

/// A user of `tenant` with the permissions of their custom role (when it is one): one
/// statement.
pub async fn user_with_role(
    db: &DbPool,
    tenant: TenantId,
    user: UserId,
) -> AppResult<Option<(UserRow, Option<String>)>> {
    use crate::db::schema::{roles, users};
    // A platform lookup on the authentication path: no transaction (see `token_subject`).
    Ok(crate::db_run!(db, |conn| {
        users::table
            .left_join(
                roles::table.on(roles::id
                    .eq(users::role)
                    .and(roles::tenant_id.eq(users::tenant_id))),
            )
            .filter(users::tenant_id.eq(tenant))
            .filter(users::id.eq(user))
            .select((UserRow::as_select(), roles::permissions.nullable()))
            .first(conn)
            .await
            .optional()?
    }))
}

/// Loads a session of `tenant`.
pub async fn find_session(
    db: &DbPool,
    tenant: TenantId,
    id: SessionId,
) -> AppResult<Option<SessionRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        sessions::table
            .filter(sessions::tenant_id.eq(tenant))
            .filter(sessions::id.eq(id))
            .select(SessionRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// A refresh token and its session, by token hash.
pub async fn find_refresh(
    db: &DbPool,
    hash: &str,
) -> AppResult<Option<(RefreshTokenRow, SessionRow)>> {
    Ok(crate::db_run!(db, |conn| {
        refresh_tokens::table
            .inner_join(sessions::table)
            .filter(refresh_tokens::token_hash.eq(hash))
            .select((RefreshTokenRow::as_select(), SessionRow::as_select()))
            .first(conn)
            .await
            .optional()?
    }))
}

/// Marks a refresh token used; false if it already was (a concurrent exchange).
pub async fn mark_refresh_used(db: &DbPool, hash: &str, now: NaiveDateTime) -> AppResult<bool> {
    Ok(crate::db_run!(db, |conn| {
        diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::token_hash.eq(hash))
                .filter(refresh_tokens::used_at.is_null()),
        )
        .set(refresh_tokens::used_at.eq(Some(now)))
        .execute(conn)
        .await?
            == 1
    }))
}

/// Adds the next refresh token of a session and bumps its idle clock.
pub async fn rotate_refresh(
    conn: &mut Conn<'_>,
    t: &RefreshTokenRow,
    now: NaiveDateTime,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(refresh_tokens::table)
            .values(t)
            .execute(conn)
            .await?;
        diesel::update(sessions::table.filter(sessions::id.eq(t.session_id)))
            .set(sessions::last_used_at.eq(now))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Revokes a live session of `tenant`; returns whether this call revoked it (`false`
/// when it is missing or was already revoked).
pub async fn revoke_session(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: SessionId,
    reason: &str,
    now: NaiveDateTime,
) -> AppResult<bool> {
    Ok(crate::on_conn!(conn, |conn| {
        diesel::update(
            sessions::table
                .filter(sessions::tenant_id.eq(tenant))
                .filter(sessions::id.eq(id))
                .filter(sessions::revoked_at.is_null()),
        )
        .set((
            sessions::revoked_at.eq(Some(now)),
            sessions::revoked_reason.eq(Some(reason)),
        ))
        .execute(conn)
        .await?
    }) == 1)
}

/// Revokes every live session of a user except `keep`.
pub async fn revoke_user_sessions(
    conn: &mut crate::db::Conn<'_>,
    tenant: TenantId,
    user: UserId,
    keep: Option<SessionId>,
    reason: &str,
    now: NaiveDateTime,
) -> AppResult<usize> {
    let keep = keep
        .map(|k| k.0.hyphenated().to_string())
        .unwrap_or_default();
    Ok(crate::on_conn!(conn, |conn| {
        diesel::update(
            sessions::table
                .filter(sessions::tenant_id.eq(tenant))
                .filter(sessions::user_id.eq(user))
                .filter(sessions::revoked_at.is_null())
                .filter(sessions::id.ne(keep.as_str())),
        )
        .set((
            sessions::revoked_at.eq(Some(now)),
            sessions::revoked_reason.eq(Some(reason)),
        ))
        .execute(conn)
        .await?
    }))
}

/// A user's sessions, newest first.
pub async fn list_sessions(
    db: &DbPool,
    tenant: TenantId,
    user: UserId,
) -> AppResult<Vec<SessionRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        sessions::table
            .filter(sessions::tenant_id.eq(tenant))
            .filter(sessions::user_id.eq(user))
            .order(sessions::id.desc())
            .limit(100)
            .select(SessionRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Refuses an access token until it would expire anyway.
pub async fn revoke_access_token(conn: &mut Conn<'_>, row: &RevokedTokenRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(revoked_access_tokens::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Lockout counters for the given keys.
pub async fn login_attempts_for(db: &DbPool, keys: &[String]) -> AppResult<Vec<LoginAttemptRow>> {
    Ok(crate::db_run!(db, |conn| {
        login_attempts::table
            .filter(login_attempts::key.eq_any(keys))
            .select(LoginAttemptRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Counts one more sign-in attempt on each `(key, threshold)` before its password is
/// checked, atomically (concurrent attempts each see their own count): a counter whose
/// last attempt is older than `window` starts again (a sliding window), and one that
/// reaches its threshold is locked until `lock(failures, threshold)` from `now`. Returns
/// the counters after the increment, in `keys` order.
pub async fn count_login_attempt(
    conn: &mut Conn<'_>,
    keys: &[(String, i64)],
    now: NaiveDateTime,
    window: chrono::Duration,
    lock: fn(i64, i64) -> Option<i64>,
) -> AppResult<Vec<LoginAttemptRow>> {
    let cutoff = now - window;
    crate::on_conn!(conn, |conn| {
        let mut out = Vec::with_capacity(keys.len());
        for (key, threshold) in keys {
            diesel::update(
                login_attempts::table
                    .filter(login_attempts::key.eq(key))
                    .filter(login_attempts::updated_at.lt(cutoff)),
            )
            .set((
                login_attempts::failures.eq(0),
                login_attempts::locked_until.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)
            .await?;
            let mut row: LoginAttemptRow = diesel::insert_into(login_attempts::table)
                .values(&LoginAttemptRow {
                    key: key.clone(),
                    failures: 1,
                    locked_until: None,
                    updated_at: now,
                })
                .on_conflict(login_attempts::key)
                .do_update()
                .set((
                    login_attempts::failures.eq(login_attempts::failures + 1),
                    login_attempts::updated_at.eq(now),
                ))
                .returning(LoginAttemptRow::as_returning())
                .get_result(conn)
                .await?;
            if let Some(secs) = lock(row.failures, *threshold) {
                let until = now + chrono::Duration::seconds(secs);
                if row.locked_until.is_none_or(|u| u < until) {
                    diesel::update(login_attempts::table.filter(login_attempts::key.eq(key)))
                        .set(login_attempts::locked_until.eq(until))
                        .execute(conn)
                        .await?;
                    row.locked_until = Some(until);
                }
            }
            out.push(row);
        }
        Ok(out)
    })
}

/// Takes back the attempt [`count_login_attempt`] counted when it turned out to be a
/// success: `clear` keys are deleted, the others go down by one and lose a lock that
/// attempt set.
pub async fn uncount_login_attempt(
    conn: &mut Conn<'_>,
    clear: &[String],
    decrement: &[(String, i64)],
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(login_attempts::table.filter(login_attempts::key.eq_any(clear)))
            .execute(conn)
            .await?;
        for (key, threshold) in decrement {
            diesel::update(login_attempts::table.filter(login_attempts::key.eq(key)))
                .set(login_attempts::failures.eq(login_attempts::failures - 1))
                .execute(conn)
                .await?;
            diesel::update(
                login_attempts::table
                    .filter(login_attempts::key.eq(key))
                    .filter(login_attempts::failures.lt(*threshold)),
            )
            .set(login_attempts::locked_until.eq(None::<NaiveDateTime>))
            .execute(conn)
            .await?;
        }
        Ok(())
    })
}

/// Writes a lockout counter.
pub async fn put_login_attempt(db: &DbPool, row: &LoginAttemptRow) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::insert_into(login_attempts::table)
            .values(row)
            .on_conflict(login_attempts::key)
            .do_update()
            .set((
                login_attempts::failures.eq(row.failures),
                login_attempts::locked_until.eq(row.locked_until),
                login_attempts::updated_at.eq(row.updated_at),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Clears a lockout counter.
pub async fn clear_login_attempts(db: &DbPool, key: &str) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::delete(login_attempts::table.filter(login_attempts::key.eq(key)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Inserts an API key with its audit record.
pub async fn insert_api_key(conn: &mut crate::db::Conn<'_>, row: &ApiKeyRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(api_keys::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Ids of the unrevoked keys of `tenant` created by `creator` (`user:<id>`).
pub async fn active_keys_created_by(
    db: &DbPool,
    tenant: TenantId,
    creator: &str,
) -> AppResult<Vec<ApiKeyId>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        api_keys::table
            .filter(api_keys::tenant_id.eq(tenant))
            .filter(api_keys::created_by.eq(creator))
            .filter(api_keys::revoked_at.is_null())
            .select(api_keys::id)
            .load(conn)
            .await?
    }))
}

/// Loads a key of `tenant` by id.
pub async fn find_api_key(
    db: &DbPool,
    tenant: TenantId,
    id: ApiKeyId,
) -> AppResult<Option<ApiKeyRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        api_keys::table
            .filter(api_keys::tenant_id.eq(tenant))
            .filter(api_keys::id.eq(id))
            .select(ApiKeyRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Records a key's use.
pub async fn touch_api_key(db: &DbPool, id: ApiKeyId, now: NaiveDateTime) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::update(api_keys::table.filter(api_keys::id.eq(id)))
            .set(api_keys::last_used_at.eq(Some(now)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A tenant's API keys, newest first.
pub async fn list_api_keys(db: &DbPool, tenant: TenantId) -> AppResult<Vec<ApiKeyRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        api_keys::table
            .filter(api_keys::tenant_id.eq(tenant))
            .order(api_keys::id.desc())
            .limit(500)
            .select(ApiKeyRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Revokes a key of `tenant`; returns whether it exists there.
pub async fn revoke_api_key(
    conn: &mut crate::db::Conn<'_>,
    tenant: TenantId,
    id: ApiKeyId,
    now: NaiveDateTime,
) -> AppResult<(bool, Option<ApiKeyRow>)> {
    Ok(crate::on_conn!(conn, |conn| {
        let changed = diesel::update(
            api_keys::table
                .filter(api_keys::tenant_id.eq(tenant))
                .filter(api_keys::id.eq(id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(Some(now)))
        .execute(conn)
        .await?;
        let row = api_keys::table
            .filter(api_keys::tenant_id.eq(tenant))
            .filter(api_keys::id.eq(id))
            .select(ApiKeyRow::as_select())
            .first(conn)
            .await
            .optional()?;
        (changed == 1, row)
    }))
}

/// Stores a one-time set-password token.
pub async fn insert_password_token(conn: &mut Conn<'_>, row: &PasswordTokenRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(password_tokens::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Consumes a set-password token: marks it used if unused and unexpired.
pub async fn take_password_token(
    db: &DbPool,
    hash: &str,
    now: NaiveDateTime,
) -> AppResult<Option<UserId>> {
    Ok(crate::db_run!(db, |conn| {
        let row: Option<PasswordTokenRow> = password_tokens::table
            .filter(password_tokens::token_hash.eq(hash))
            .select(PasswordTokenRow::as_select())
            .first(conn)
            .await
            .optional()?;
        match row {
            Some(r) if r.used_at.is_none() && r.expires_at > now => {
                let n = diesel::update(
                    password_tokens::table
                        .filter(password_tokens::token_hash.eq(hash))
                        .filter(password_tokens::used_at.is_null()),
                )
                .set(password_tokens::used_at.eq(Some(now)))
                .execute(conn)
                .await?;
                (n == 1).then_some(r.user_id)
            }
            _ => None,
        }
    }))
}
