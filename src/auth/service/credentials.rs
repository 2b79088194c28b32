//! Passwords: changing one, setting one with a one-time token, hashing within bounds.

use super::super::model::SessionId;
use super::super::passwords;
use super::super::{Principal, store};
use super::*;
use crate::app::App;
use crate::db::ids::UserId;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};

/// Changes the caller's password and revokes every other session.
pub async fn change_password(
    app: &App,
    p: &Principal,
    origin: &crate::audit::Origin,
    current: &str,
    new: &str,
) -> AppResult<()> {
    let (Some(user_id), Some(t)) = (p.user_id(), &p.token) else {
        return Err(AppError::bad_input(
            "currentPassword",
            "only a signed-in user can change a password",
        ));
    };
    passwords::check_policy(new).map_err(|m| AppError::bad_input("newPassword", m))?;
    let user = crate::tenancy::store::find_user(&app.db, p.tenant_id, user_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    if !check_current_password(app, &user, current).await? {
        return Err(AppError::bad_input(
            "currentPassword",
            "the current password is wrong",
        ));
    }
    let new_hash = hash_bounded(app, new).await?;
    let now = db_time(app.clock.now());
    let audit =
        crate::audit::Entry::change(origin, "user.password_changed", "user", user_id, None, now)
            .severity(crate::audit::Severity::Warning);
    store_password(
        app,
        p.tenant_id,
        user_id,
        &new_hash,
        &audit,
        Some((Some(t.session_id), "password_changed")),
    )
    .await?;
    Ok(())
}

/// Writes a user's new password hash and its audit record in one transaction; with
/// `revoke` (a session to keep, and why), the user's other sessions end in it too, so a
/// changed password never leaves an old session alive. `false` (nothing written) when
/// there is no such user.
pub async fn store_password(
    app: &App,
    tenant: crate::tenancy::TenantId,
    user: UserId,
    hash: &str,
    audit: &crate::audit::Entry,
    revoke: Option<(Option<SessionId>, &str)>,
) -> AppResult<bool> {
    let now = audit.at;
    let stored = app
        .db
        .tx(tenant, async |conn| {
            if !crate::tenancy::store::set_password(conn, tenant, user, hash, now).await? {
                return Ok(false);
            }
            crate::audit::append(conn, audit).await?;
            if let Some((keep, reason)) = revoke {
                store::revoke_user_sessions(conn, tenant, user, keep, reason, now).await?;
            }
            // A new password cancels e-mail changes asked for before it (perhaps by
            // whoever knew the old one).
            crate::on_conn!(conn, |conn| {
                use diesel::{ExpressionMethods as _, QueryDsl as _};
                use diesel_async::RunQueryDsl as _;
                diesel::delete(
                    crate::db::schema::email_changes::table
                        .filter(crate::db::schema::email_changes::user_id.eq(user))
                        .filter(crate::db::schema::email_changes::used_at.is_null()),
                )
                .execute(conn)
                .await?;
            });
            Ok(true)
        })
        .await?;
    if stored && revoke.is_some() {
        app.rights_changed(tenant);
    }
    Ok(stored)
}

/// Checks a signed-in user's current password (to change it, or their e-mail address).
/// At most 5 checks in a burst and 10 a minute per user (`RATE_LIMITED`), so a stolen
/// session is no way to guess the password the sign-in lockout protects.
pub async fn check_current_password(
    app: &App,
    user: &crate::tenancy::UserRow,
    given: &str,
) -> AppResult<bool> {
    let quota = crate::ratelimit::Quota {
        per_minute: 10,
        burst: 5,
    };
    if let Err(limited) = app
        .rate_limiter
        .take(&format!("pw:{}", user.id), quota, 1)
        .await
    {
        let secs = limited.retry_after_secs();
        return Err(AppError::new(
            crate::error::ErrorCode::RateLimited,
            format!("too many password checks; try again in {secs} s"),
        )
        .with_detail("retryAfterSeconds", secs));
    }
    let hash = user.password_hash.clone().unwrap_or_default();
    let given = given.to_owned();
    app.password_slots
        .run(None, move || passwords::verify(&hash, &given))
        .await
}

/// Hashes within the process's hashing bounds (API paths).
pub async fn hash_bounded(app: &App, password: &str) -> AppResult<String> {
    let pw = password.to_owned();
    app.password_slots
        .run(None, move || passwords::hash(&pw))
        .await?
        .map_err(AppError::internal)
}

/// Hashes on a blocking thread (argon2id takes tens of milliseconds); for the CLI.
pub async fn hash_blocking(password: &str) -> AppResult<String> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || passwords::hash(&pw))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)
}

/// Sets a password with a one-time token from `createUser`/`inviteUser`.
pub async fn set_password_with_token(app: &App, token: &str, password: &str) -> AppResult<()> {
    passwords::check_policy(password).map_err(|m| AppError::bad_input("password", m))?;
    let hash = hash_bounded(app, password).await?;
    let now = db_time(app.clock.now());
    let user_id = store::take_password_token(&app.db, &passwords::sha256_hex(token), now)
        .await?
        .ok_or_else(|| AppError::unauthenticated("invalid or expired set-password token"))?;
    // The token row names the user; its tenant comes from the user row.
    let user = crate::tenancy::store::find_user_any(&app.db, user_id)
        .await?
        .filter(|u| u.status == crate::tenancy::model::UserStatus::Active)
        .ok_or_else(|| AppError::unauthenticated("invalid or expired set-password token"))?;
    // A suspended organization's users set no passwords either.
    let tenant = crate::tenancy::store::find(&app.db, user.tenant_id)
        .await?
        .ok_or_else(|| AppError::unauthenticated("invalid or expired set-password token"))?;
    super::super::check_tenant_active(&tenant)?;
    let audit = crate::audit::Entry::change(
        &crate::audit::Origin::user(user.tenant_id, user.id, None, None),
        "user.password_set",
        "user",
        user.id,
        None,
        now,
    );
    // Whoever held the account's sessions before a reset holds none after it.
    store_password(
        app,
        user.tenant_id,
        user.id,
        &hash,
        &audit,
        Some((None, "password_set")),
    )
    .await?;
    Ok(())
}

/// Creates a one-time set-password token valid for 7 days; returns the secret.
pub async fn create_password_token(app: &App, user: UserId) -> AppResult<String> {
    let (secret, row) = new_password_token(app, user);
    app.db
        .run(async |conn| store::insert_password_token(conn, &row).await)
        .await?;
    Ok(secret)
}

/// A one-time set-password token (valid 7 days) and the row that stores its hash, for
/// callers that write it in their own transaction.
pub fn new_password_token(
    app: &App,
    user: UserId,
) -> (String, crate::auth::model::PasswordTokenRow) {
    let secret = passwords::random_secret(32);
    let row = crate::auth::model::PasswordTokenRow {
        token_hash: passwords::sha256_hex(&secret),
        user_id: user,
        expires_at: db_time(app.clock.now() + Duration::days(7)),
        used_at: None,
        purpose: "SET".into(),
        created_at: Some(db_time(app.clock.now())),
    };
    (secret, row)
}
