//! Authentication rules: sign-in with lockout, refresh-token rotation with reuse detection
//! (RFC 9700: presenting a used token revokes the whole family), sign-out, password
//! changes, sessions and API keys.

use chrono::{DateTime, Duration, Utc};

pub mod account;
mod api_keys;
mod credentials;
pub mod mfa;
pub use api_keys::*;
pub use credentials::*;

use super::model::{LoginAttemptRow, RefreshTokenRow, RevokedTokenRow, SessionId, SessionRow};
use super::passwords;
use super::{Principal, check_tenant_active, store};
use crate::app::App;
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::request::ClientInfo;
use crate::tenancy::UserRow;
use crate::tenancy::model::UserStatus;

/// Failures on one account before it locks.
const ACCOUNT_THRESHOLD: i64 = 5;
/// Failures from one address before it locks.
const IP_THRESHOLD: i64 = 20;
/// Failures older than this are forgotten (per counter, since its last attempt).
const THROTTLE_WINDOW_SECS: i64 = 15 * 60;

/// How throttle keys name an account: a digest of the normalised e-mail address.
pub fn throttle_account(email_norm: &str) -> String {
    passwords::sha256_hex(email_norm)[..32].to_owned()
}
/// Longest lock.
const MAX_LOCK_SECS: i64 = 15 * 60;

/// Tokens handed to a client after sign-in or refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// Short-lived JWT.
    pub access_token: String,
    /// Opaque, single-use refresh token.
    pub refresh_token: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: UserRow,
}

fn bad_login() -> AppError {
    AppError::unauthenticated("invalid email or password")
}

pub(crate) fn lock_secs(failures: i64, threshold: i64) -> Option<i64> {
    (failures >= threshold).then(|| {
        let exp = u32::try_from((failures - threshold).min(20)).unwrap_or(20);
        (1i64 << exp).min(MAX_LOCK_SECS)
    })
}

/// Counts one more failure-to-be on each `(key, threshold)` (sign-in attempts, wrong
/// second-factor codes), atomically; returns the counters.
pub(crate) async fn count_attempts(
    app: &App,
    keys: &[(String, i64)],
    now: DateTime<Utc>,
) -> AppResult<Vec<LoginAttemptRow>> {
    app.db
        .tx("", async |conn| {
            store::count_login_attempt(
                conn,
                keys,
                db_time(now),
                Duration::seconds(THROTTLE_WINDOW_SECS),
                lock_secs,
            )
            .await
        })
        .await
}

/// Signs in with e-mail and password.
pub async fn login(
    app: &App,
    email: &str,
    password: &str,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<IssuedTokens> {
    let now = app.clock.now();
    let email_norm =
        passwords::normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    // Throttled per (account, address), so failures from elsewhere do not lock out a
    // client that knows the password, and per address across accounts. The key names the
    // account by a digest (erasure finds it without matching e-mail text).
    let addr = client.map_or_else(|| "-".to_owned(), |c| c.ip.to_string());
    let acct_key = format!("acct:{}:{addr}", throttle_account(&email_norm));
    let ip_key = client.map(|c| format!("ip:{}", c.ip));
    let keys: Vec<(String, i64)> = std::iter::once((acct_key.clone(), ACCOUNT_THRESHOLD))
        .chain(ip_key.clone().map(|k| (k, IP_THRESHOLD)))
        .collect();
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let locked = |counters: &[LoginAttemptRow]| {
        counters
            .iter()
            .filter_map(|c| c.locked_until)
            .map(utc)
            .filter(|u| *u > now)
            .max()
            .map(|until| {
                let retry = (until - now).num_seconds().max(1);
                AppError::new(
                    ErrorCode::RateLimited,
                    format!("too many failed sign-ins; try again in {retry} s"),
                )
                .with_detail("retryAfterSeconds", retry)
            })
    };
    if let Some(e) = locked(&store::login_attempts_for(&app.db, &names).await?) {
        return Err(e);
    }
    // Count this attempt before checking the password, atomically: of N concurrent
    // guesses only those within the threshold are checked at all.
    let counted = count_attempts(app, &keys, now).await?;
    if counted
        .iter()
        .zip(&keys)
        .any(|(c, (_, threshold))| c.failures > *threshold)
    {
        if let Some(e) = locked(&counted) {
            return Err(e);
        }
    }

    let user = crate::tenancy::store::find_user_by_email(&app.db, &email_norm).await?;
    // The tenant's allowedIpRanges come before the password: from outside them a sign-in
    // is refused whatever the password, so no password can be tried from there (the
    // attempt stays counted).
    let tenant = match &user {
        Some(u) => crate::tenancy::store::find(&app.db, u.tenant_id).await?,
        None => None,
    };
    if let (Some(u), Some(t)) = (&user, &tenant) {
        if u.status == UserStatus::Active {
            sign_in_address(app, t, u, client, request_id).await?;
        }
    }
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| passwords::dummy_hash().to_owned());
    let pw = password.to_owned();
    let ok = app
        .password_slots
        .run(client.map(|c| c.ip), move || passwords::verify(&hash, &pw))
        .await?;
    let user = match user {
        Some(u) if ok && u.password_hash.is_some() && u.status == UserStatus::Active => u,
        _ => {
            // Already counted before the check.
            tracing::info!(event = "auth.login_failed", "sign-in failed");
            crate::metrics::auth_failure("BAD_LOGIN");
            // Recorded in the account's tenant when the address belongs to one, else in
            // the platform's chain. The attempt is anonymous: nobody proved who they are.
            let tenant = match &user {
                Some(u) => Some(u.tenant_id),
                None => crate::tenancy::store::find_system(&app.db)
                    .await?
                    .map(|t| t.id),
            };
            if let Some(tenant) = tenant {
                let origin = crate::audit::Origin::anonymous(tenant, client, request_id);
                let entry = crate::audit::Entry::change(
                    &origin,
                    "auth.login_failed",
                    "user",
                    user.as_ref().map(|u| u.id.to_string()).unwrap_or_default(),
                    None,
                    db_time(now),
                )
                .severity(crate::audit::Severity::Warning)
                .failed(if user.is_some() {
                    "wrong password or inactive account"
                } else {
                    "unknown e-mail address"
                });
                crate::audit::record(&app.db, &entry).await?;
            }
            return Err(bad_login());
        }
    };
    let tenant = tenant.ok_or_else(bad_login)?;
    check_tenant_active(&tenant)?;
    // A success is no failure: take the attempt back (and the account's counter for this
    // address is cleared).
    app.db
        .tx("", async |conn| {
            store::uncount_login_attempt(conn, std::slice::from_ref(&acct_key), &keys[1..]).await
        })
        .await?;
    // A second factor, when the user has one, before any session exists.
    if mfa::enrolled(app, user.id).await? {
        return Err(mfa::challenge(app, &user, now).await?);
    }
    open_session(app, user, client, request_id, now, None, false).await
}

/// Signs in a user whom the tenant's identity provider vouched for (single sign-on):
/// the tenant's `allowedIpRanges` hold as for a password, then a session opens,
/// recorded as `auth.login` with `details` (method, issuer, subject). `second_factor`:
/// the provider says the user signed in with more than a password (its `amr` claim).
pub async fn sign_in_federated(
    app: &App,
    tenant: &crate::tenancy::TenantRow,
    user: UserRow,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
    details: serde_json::Value,
    second_factor: bool,
) -> AppResult<IssuedTokens> {
    check_tenant_active(tenant)?;
    sign_in_address(app, tenant, &user, client, request_id).await?;
    let now = app.clock.now();
    open_session(
        app,
        user,
        client,
        request_id,
        now,
        Some(details),
        second_factor,
    )
    .await
}

/// Opens a session for a user who proved who they are (with `second_factor`, the
/// details of the second factor used, when one was), records `auth.login` (a WARNING when
/// a recovery code stood in for the app) and issues the first tokens.
async fn open_session(
    app: &App,
    user: UserRow,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
    now: DateTime<Utc>,
    second_factor: Option<serde_json::Value>,
    mfa: bool,
) -> AppResult<IssuedTokens> {
    crate::tenancy::store::touch_last_login(&app.db, user.id, db_time(now)).await?;
    let session = SessionRow {
        id: SessionId::new(),
        tenant_id: user.tenant_id,
        user_id: user.id,
        created_at: db_time(now),
        expires_at: db_time(
            now + Duration::from_std(app.config.auth.refresh_absolute).unwrap_or_default(),
        ),
        last_used_at: db_time(now),
        revoked_at: None,
        revoked_reason: None,
        ip: client.map(|c| c.ip.to_string()),
        user_agent: client.and_then(|c| c.user_agent.clone()),
        mfa,
    };
    let refresh = passwords::random_secret(32);
    let severity = if second_factor
        .as_ref()
        .is_some_and(|f| f["secondFactor"] == "recovery_code")
    {
        crate::audit::Severity::Warning
    } else {
        crate::audit::Severity::Info
    };
    let audit = crate::audit::Entry::change(
        &crate::audit::Origin::user(user.tenant_id, user.id, client, request_id),
        "auth.login",
        "session",
        session.id,
        second_factor,
        db_time(now),
    )
    .severity(severity);
    let first = refresh_row(&refresh, session.id, now);
    app.db
        .tx(user.tenant_id, async |conn| {
            store::insert_session(conn, &session, &first).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    issue(app, user, session.id, refresh, now, session.mfa)
}

/// The tenant's `allowedIpRanges` at sign-in and refresh: a refusal is `FORBIDDEN`
/// (reason `IP_NOT_ALLOWED`) and recorded in the tenant's trail.
async fn sign_in_address(
    app: &App,
    tenant: &crate::tenancy::TenantRow,
    user: &UserRow,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<()> {
    let Some(client) = client else {
        return Ok(());
    };
    let ranges = super::allowed_ranges(tenant);
    let (_, platform_admin) = super::permissions_of(tenant, &user.role, None);
    if super::address_allowed(app, &ranges, platform_admin, client.ip) {
        return Ok(());
    }
    if app
        .ip_denials
        .first(&format!("user:{}|{}", user.id, client.ip), app.clock.now())
    {
        let origin = crate::audit::Origin::user(tenant.id, user.id, Some(client), request_id);
        super::record_ip_denial(app, &origin, client.ip).await;
    }
    Err(super::ip_not_allowed(client.ip))
}

/// The stored form of a new refresh token: its hash, unused.
fn refresh_row(secret: &str, session: SessionId, now: DateTime<Utc>) -> RefreshTokenRow {
    RefreshTokenRow {
        token_hash: passwords::sha256_hex(secret),
        session_id: session,
        created_at: db_time(now),
        used_at: None,
    }
}

fn issue(
    app: &App,
    user: UserRow,
    session: SessionId,
    refresh: String,
    now: DateTime<Utc>,
    mfa: bool,
) -> AppResult<IssuedTokens> {
    let cfg = &app.config.auth;
    let exp = now + Duration::from_std(cfg.access_ttl).unwrap_or_else(|_| Duration::minutes(15));
    let claims = super::jwt::Claims {
        sub: user.id.to_string(),
        tid: user.tenant_id.to_string(),
        role: user.role.clone(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        iss: cfg.issuer.clone(),
        aud: cfg.audience.clone(),
        jti: uuid::Uuid::now_v7().to_string(),
        sid: session.to_string(),
        mfa,
    };
    let access_token = app.keys.sign(&claims).map_err(AppError::internal)?;
    Ok(IssuedTokens {
        access_token,
        refresh_token: refresh,
        access_token_expires_at: exp,
        user,
    })
}

/// Exchanges a refresh token for new tokens. A token presented twice revokes its family.
pub async fn refresh(
    app: &App,
    token: &str,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<IssuedTokens> {
    let now = app.clock.now();
    let invalid = || AppError::unauthenticated("invalid or expired refresh token");
    let hash = passwords::sha256_hex(token);
    let (row, session) = store::find_refresh(&app.db, &hash)
        .await?
        .ok_or_else(invalid)?;
    if session.revoked_at.is_some() {
        return Err(invalid());
    }
    // Outside the tenant's networks the token is refused before it is spent, so the
    // client can use it again from an allowed address.
    if let Some(client) = client {
        if let (Some(tenant), Some(user)) = (
            crate::tenancy::store::find(&app.db, session.tenant_id).await?,
            crate::tenancy::store::find_user(&app.db, session.tenant_id, session.user_id).await?,
        ) {
            sign_in_address(app, &tenant, &user, Some(client), request_id).await?;
        }
    }
    if row.used_at.is_some() || !store::mark_refresh_used(&app.db, &hash, db_time(now)).await? {
        let entry = crate::audit::Entry::change(
            &crate::audit::Origin::system(session.tenant_id),
            "auth.refresh_reuse_detected",
            "session",
            session.id,
            None,
            db_time(now),
        )
        .severity(crate::audit::Severity::Critical)
        .failed("a refresh token was presented twice; the session was revoked");
        // The revocation and its record commit together.
        app.db
            .tx(session.tenant_id, async |conn| {
                store::revoke_session(
                    conn,
                    session.tenant_id,
                    session.id,
                    "refresh_token_reuse",
                    db_time(now),
                )
                .await?;
                crate::audit::append(conn, &entry).await?;
                Ok(())
            })
            .await?;
        app.rights_changed(session.tenant_id);
        tracing::warn!(
            event = "auth.refresh_reuse_detected",
            session.id = %session.id,
            tenant.id = %session.tenant_id,
            "refresh token presented twice; session revoked"
        );
        return Err(AppError::unauthenticated(
            "refresh token reuse detected; the session was revoked",
        )
        .with_detail("reason", "REFRESH_TOKEN_REUSE"));
    }
    let idle =
        Duration::from_std(app.config.auth.refresh_idle).unwrap_or_else(|_| Duration::days(7));
    if now > utc(session.expires_at) || now > utc(session.last_used_at) + idle {
        return Err(invalid());
    }
    let user = crate::tenancy::store::find_user(&app.db, session.tenant_id, session.user_id)
        .await?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(invalid)?;
    let tenant = crate::tenancy::store::find(&app.db, user.tenant_id)
        .await?
        .ok_or_else(invalid)?;
    check_tenant_active(&tenant)?;
    let next = passwords::random_secret(32);
    let audit = crate::audit::Entry::change(
        &crate::audit::Origin::user(user.tenant_id, user.id, None, None),
        "auth.session_refreshed",
        "session",
        session.id,
        None,
        db_time(now),
    );
    let rotated = refresh_row(&next, session.id, now);
    app.db
        .tx("", async |conn| {
            store::rotate_refresh(conn, &rotated, db_time(now)).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    issue(app, user, session.id, next, now, session.mfa)
}

/// Signs out: revokes the session and the current access token.
pub async fn logout(app: &App, p: &Principal, origin: &crate::audit::Origin) -> AppResult<()> {
    let Some(t) = &p.token else {
        return Err(AppError::bad_input(
            "token",
            "API keys have no session; revoke the key instead",
        ));
    };
    let now = db_time(app.clock.now());
    let audit =
        crate::audit::Entry::change(origin, "auth.logout", "session", t.session_id, None, now);
    let revoked = RevokedTokenRow {
        jti: t.jti.clone(),
        expires_at: db_time(t.expires_at),
    };
    // The session, the access token and the record go together: a sign-out that fails
    // half-way leaves the token working and says so.
    app.db
        .tx(p.tenant_id, async |conn| {
            if store::revoke_session(conn, p.tenant_id, t.session_id, "logout", now).await? {
                crate::audit::append(conn, &audit).await?;
            }
            store::revoke_access_token(conn, &revoked).await
        })
        .await?;
    app.rights_changed(p.tenant_id);
    Ok(())
}

/// Revokes a session of the caller's (own) user.
pub async fn revoke_own_session(
    app: &App,
    p: &Principal,
    origin: &crate::audit::Origin,
    id: SessionId,
) -> AppResult<()> {
    let user = p.user_id().ok_or_else(|| AppError::not_found("session"))?;
    let session = store::find_session(&app.db, p.tenant_id, id)
        .await?
        .filter(|s| s.user_id == user)
        .ok_or_else(|| AppError::not_found("session"))?;
    let now = db_time(app.clock.now());
    let audit =
        crate::audit::Entry::change(origin, "session.revoked", "session", session.id, None, now);
    app.db
        .tx(p.tenant_id, async |conn| {
            if store::revoke_session(conn, p.tenant_id, session.id, "revoked", now).await? {
                crate::audit::append(conn, &audit).await?;
            }
            Ok(())
        })
        .await?;
    app.rights_changed(p.tenant_id);
    Ok(())
}
