//! Account lifecycle a user drives: a self-service password reset (a one-time token
//! delivered by the notifier; `setPassword` spends it and signs every session out) and an
//! e-mail change (the current password to ask, a one-time token to the new address to
//! confirm). Asking never says whether an account exists; a user gets at most one token
//! of a kind a minute, and a new one replaces the last.

use chrono::Duration;
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper};
use diesel_async::RunQueryDsl as _;

use super::super::passwords;
use super::super::{Principal, notify};
use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::db::Conn;
use crate::db::ids::{TenantId, UserId, db_time, utc};
use crate::db::schema::{email_changes, password_tokens};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::tenancy::model::{TenantStatus, UserStatus};

/// How long a password-reset token works.
pub const RESET_TTL: Duration = Duration::hours(1);
/// How long an e-mail-change token works.
pub const EMAIL_CHANGE_TTL: Duration = Duration::hours(24);
/// A user gets at most one token of a kind this often.
pub const RESEND_AFTER: Duration = Duration::seconds(60);

/// One row of `email_changes`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = email_changes)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct EmailChangeRow {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// The user's tenant.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// The address to change to (normalised).
    pub new_email: String,
    /// When asked.
    pub created_at: chrono::NaiveDateTime,
    /// When the token stops working.
    pub expires_at: chrono::NaiveDateTime,
    /// When used.
    pub used_at: Option<chrono::NaiveDateTime>,
}

/// Asks for a password reset of the account with `email`: when it is an active user of
/// an active tenant (and none was sent in the last minute), a one-time token valid for an
/// hour goes to the notifier. Only the address's form is checked before answering; the
/// rest runs after, in the background, so neither the answer nor its timing says whether
/// the account exists.
pub fn request_password_reset(
    app: &std::sync::Arc<App>,
    email: &str,
    client: Option<&crate::request::ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<()> {
    let email =
        crate::policy::normalize_email(email).map_err(|p| AppError::bad_input("email", p))?;
    let app = app.clone();
    let client = client.cloned();
    let request_id = request_id.map(str::to_owned);
    tokio::spawn(async move {
        if let Err(e) = issue_reset(&app, &email, client.as_ref(), request_id.as_deref()).await {
            tracing::warn!(error = ?e, "a password reset could not be issued");
        }
    });
    Ok(())
}

async fn issue_reset(
    app: &App,
    email: &str,
    client: Option<&crate::request::ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<()> {
    let Some(user) = crate::tenancy::store::find_user_by_email(&app.db, email).await? else {
        return Ok(());
    };
    if user.status != UserStatus::Active {
        return Ok(());
    }
    let Some(tenant) = crate::tenancy::store::find(&app.db, user.tenant_id).await? else {
        return Ok(());
    };
    if tenant.status != TenantStatus::Active {
        return Ok(());
    }
    let now = app.clock.now();
    let secret = passwords::random_secret(32);
    let row = crate::auth::model::PasswordTokenRow {
        token_hash: passwords::sha256_hex(&secret),
        user_id: user.id,
        expires_at: db_time(now + RESET_TTL),
        used_at: None,
        purpose: "RESET".into(),
        created_at: Some(db_time(now)),
    };
    // Whoever asked proved nothing: the record is anonymous, with their address.
    let origin = crate::audit::Origin::anonymous(user.tenant_id, client, request_id);
    let audit = Entry::change(
        &origin,
        "user.password_reset_requested",
        "user",
        user.id,
        None,
        db_time(now),
    )
    .severity(Severity::Warning);
    let issued = app
        .db
        .tx(user.tenant_id, async |conn| {
            // After the audit append (the tenant's chain lock): two requests at once
            // cannot both pass the once-a-minute check.
            crate::audit::append(conn, &audit).await?;
            if recent_reset(conn, user.id, db_time(now - RESEND_AFTER)).await? {
                return Err(AppError::new(ErrorCode::RateLimited, "reset sent recently"));
            }
            crate::on_conn!(conn, |conn| {
                // A new reset replaces the last reset (an invitation stays good: asking
                // for a reset is open to anyone who knows the address).
                diesel::delete(
                    password_tokens::table
                        .filter(password_tokens::user_id.eq(user.id))
                        .filter(password_tokens::purpose.eq("RESET"))
                        .filter(password_tokens::used_at.is_null()),
                )
                .execute(conn)
                .await?;
                diesel::insert_into(password_tokens::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
            });
            Ok(())
        })
        .await;
    match issued {
        Ok(()) => {}
        // The one sent a moment ago stands.
        Err(e) if e.code() == ErrorCode::RateLimited => return Ok(()),
        Err(e) => return Err(e),
    }
    notify::send(
        app,
        notify::Message {
            kind: notify::Kind::PasswordReset,
            email: user.email,
            token: secret,
            expires_at: now + RESET_TTL,
            tenant: tenant.slug,
        },
    );
    Ok(())
}

async fn recent_reset(
    conn: &mut Conn<'_>,
    user: UserId,
    since: chrono::NaiveDateTime,
) -> AppResult<bool> {
    let n: i64 = crate::on_conn!(conn, |conn| {
        password_tokens::table
            .filter(password_tokens::user_id.eq(user))
            .filter(password_tokens::purpose.eq("RESET"))
            .filter(password_tokens::created_at.gt(since))
            .count()
            .get_result(conn)
            .await?
    });
    Ok(n > 0)
}

/// Asks to change the caller's e-mail address to `new_email`: the current password
/// confirms it is the user; a one-time token valid for a day goes to the new address,
/// and `confirmEmailChange` with it makes the change.
pub async fn request_email_change(
    app: &App,
    p: &Principal,
    origin: &Origin,
    new_email: &str,
    current_password: &str,
) -> AppResult<()> {
    let Some(user_id) = p.user_id() else {
        return Err(AppError::bad_input(
            "newEmail",
            "only a signed-in user has an e-mail address to change",
        ));
    };
    let new_email = crate::policy::normalize_email(new_email)
        .map_err(|m| AppError::bad_input("newEmail", m))?;
    let user = crate::tenancy::store::find_user(&app.db, p.tenant_id, user_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    if user.email == new_email {
        return Err(AppError::bad_input(
            "newEmail",
            "that is already your address",
        ));
    }
    if !super::credentials::check_current_password(app, &user, current_password).await? {
        return Err(AppError::bad_input(
            "currentPassword",
            "the current password is wrong",
        ));
    }
    let tenant = crate::tenancy::store::find(&app.db, p.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let now = app.clock.now();
    let secret = passwords::random_secret(32);
    let row = EmailChangeRow {
        token_hash: passwords::sha256_hex(&secret),
        tenant_id: p.tenant_id,
        user_id,
        new_email: new_email.clone(),
        created_at: db_time(now),
        expires_at: db_time(now + EMAIL_CHANGE_TTL),
        used_at: None,
    };
    // Whether the address is taken is not said here (that would tell any signed-in user
    // which addresses have accounts); confirming says it, to whoever holds the mailbox.
    let audit = Entry::change(
        origin,
        "user.email_change_requested",
        "user",
        user_id,
        Some(serde_json::json!({ "newEmail": new_email })),
        db_time(now),
    )
    .severity(Severity::Warning);
    app.db
        .tx(p.tenant_id, async |conn| {
            crate::audit::append(conn, &audit).await?;
            let since = db_time(now - RESEND_AFTER);
            let recent: i64 = crate::on_conn!(conn, |conn| {
                email_changes::table
                    .filter(email_changes::user_id.eq(user_id))
                    .filter(email_changes::created_at.gt(since))
                    .count()
                    .get_result(conn)
                    .await?
            });
            if recent > 0 {
                return Err(AppError::new(
                    ErrorCode::RateLimited,
                    "a confirmation was sent less than a minute ago: check that mailbox, or \
                     ask again in a minute",
                )
                .with_detail("retryAfterSeconds", RESEND_AFTER.num_seconds()));
            }
            crate::on_conn!(conn, |conn| {
                diesel::delete(
                    email_changes::table
                        .filter(email_changes::user_id.eq(user_id))
                        .filter(email_changes::used_at.is_null()),
                )
                .execute(conn)
                .await?;
                diesel::insert_into(email_changes::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
            });
            Ok(())
        })
        .await?;
    notify::send(
        app,
        notify::Message {
            kind: notify::Kind::EmailChange,
            email: new_email,
            token: secret,
            expires_at: now + EMAIL_CHANGE_TTL,
            tenant: tenant.slug,
        },
    );
    Ok(())
}

/// Confirms an e-mail change with its token; returns the new address. An address taken
/// meanwhile is `CONFLICT`; a used, expired or unknown token `UNAUTHENTICATED`.
pub async fn confirm_email_change(
    app: &App,
    token: &str,
    client: Option<&crate::request::ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<String> {
    let invalid = || {
        AppError::unauthenticated(
            "invalid or expired e-mail confirmation token: ask for the change again",
        )
    };
    let hash = passwords::sha256_hex(token.trim());
    let now = app.clock.now();
    let row: Option<EmailChangeRow> = crate::db_run!(&app.db, |conn| {
        email_changes::table
            .filter(email_changes::token_hash.eq(&hash))
            .select(EmailChangeRow::as_select())
            .first(conn)
            .await
            .optional()?
    });
    let row = row
        .filter(|r| r.used_at.is_none() && utc(r.expires_at) > now)
        .ok_or_else(invalid)?;
    let user = crate::tenancy::store::find_user(&app.db, row.tenant_id, row.user_id)
        .await?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(invalid)?;
    let tenant = crate::tenancy::store::find(&app.db, row.tenant_id)
        .await?
        .ok_or_else(invalid)?;
    crate::auth::check_tenant_active(&tenant)?;
    let audit = Entry::change(
        &Origin::user(row.tenant_id, row.user_id, client, request_id),
        "user.email_changed",
        "user",
        row.user_id,
        Some(serde_json::json!({ "email": { "before": user.email, "after": row.new_email } })),
        db_time(now),
    )
    .severity(Severity::Warning);
    let at = db_time(now);
    let changed = app
        .db
        .tx(row.tenant_id, async |conn| {
            let spent = crate::on_conn!(conn, |conn| {
                diesel::update(
                    email_changes::table
                        .filter(email_changes::token_hash.eq(&hash))
                        .filter(email_changes::used_at.is_null()),
                )
                .set(email_changes::used_at.eq(Some(at)))
                .execute(conn)
                .await?
            });
            if spent != 1 {
                return Err(invalid());
            }
            crate::tenancy::store::set_email(conn, row.tenant_id, row.user_id, &row.new_email, at)
                .await?;
            // Tokens sent to the old address stop working with it.
            crate::on_conn!(conn, |conn| {
                diesel::delete(
                    password_tokens::table
                        .filter(password_tokens::user_id.eq(row.user_id))
                        .filter(password_tokens::used_at.is_null()),
                )
                .execute(conn)
                .await?;
            });
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await;
    match changed {
        Ok(()) => Ok(row.new_email),
        Err(e) if e.code() == ErrorCode::Conflict => Err(AppError::conflict(
            "another account uses that address now: ask for a change to a different one",
        )),
        Err(e) => Err(e),
    }
}
