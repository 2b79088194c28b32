//! Multi-factor sign-in with time-based one-time passwords (TOTP, RFC 6238: HMAC-SHA1,
//! 6 digits, 30-second steps, one step of clock drift either way) and ten one-time
//! recovery codes.
//!
//! - Enrolment: `start_enrolment` hands out a new secret once (and its `otpauth://` URI);
//!   `confirm_enrolment` with a first code turns it on and hands out the recovery codes.
//! - Sign-in: a password sign-in of an enrolled user gets a short-lived challenge instead
//!   of tokens (`challenge`); `verify` completes it with a code or a recovery code.
//! - A code is good once: the last accepted time step is stored and only later steps are
//!   taken (a replay within the window is refused). Wrong codes count per user and lock
//!   like password failures; a challenge burns after [`CHALLENGE_ATTEMPTS`] wrong codes.
//! - Secrets are sealed under the master key when one is configured (like signing keys);
//!   recovery codes and challenges are stored as SHA-256 digests. Every step is audited.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};

use super::{IssuedTokens, count_attempts, open_session};
use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::auth::mfa_store::{self, ChallengeRow, FactorRow, RecoveryRow};
use crate::auth::passwords::sha256_hex;
use crate::auth::totp::{
    matching_step, new_recovery_codes, new_secret, normalize_recovery, otpauth_uri,
};
use crate::auth::{Principal, store};
use crate::db::ids::{UserId, db_time, utc};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::request::ClientInfo;
use crate::tenancy::UserRow;
use crate::tenancy::model::UserStatus;

/// How long a sign-in challenge lasts.
pub const CHALLENGE_SECS: i64 = 300;
/// Wrong codes one challenge takes before it is burnt.
pub const CHALLENGE_ATTEMPTS: i32 = 5;
/// Wrong codes for one user (across challenges) before codes are locked out for a while
/// (forgotten 15 minutes after the last, like sign-in failures).
const USER_THRESHOLD: i64 = 10;

fn sealing_aad(user: UserId) -> Vec<u8> {
    format!("agentplane-totp:{user}").into_bytes()
}

async fn factor(app: &App, user: UserId) -> AppResult<Option<FactorRow>> {
    mfa_store::factor(&app.db, user).await
}

fn secret_of(app: &App, f: &FactorRow) -> AppResult<Vec<u8>> {
    let b32 = crate::seal::open_text(
        &app.config.master_keys,
        &sealing_aad(f.user_id),
        &f.secret,
        "a TOTP secret",
    )
    .map_err(AppError::internal)?;
    data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .map_err(AppError::internal)
}

/// Whether `user` has a confirmed second factor.
pub async fn enrolled(app: &App, user: UserId) -> AppResult<bool> {
    Ok(factor(app, user)
        .await?
        .is_some_and(|f| f.confirmed_at.is_some()))
}

/// The refusal a password sign-in of an enrolled user gets: `UNAUTHENTICATED`, reason
/// `MFA_REQUIRED`, with a new challenge in `extensions.mfaChallenge`.
pub async fn challenge(app: &App, user: &UserRow, now: DateTime<Utc>) -> AppResult<AppError> {
    let token = crate::auth::passwords::random_secret(32);
    let row = ChallengeRow {
        token_hash: sha256_hex(&token),
        tenant_id: user.tenant_id,
        user_id: user.id,
        created_at: db_time(now),
        expires_at: db_time(now + Duration::seconds(CHALLENGE_SECS)),
        attempts: 0,
        used_at: None,
    };
    mfa_store::insert_challenge(&app.db, &row).await?;
    Ok(AppError::unauthenticated(
        "this account signs in with a second factor: send the 6-digit code from your \
         authenticator app (or a recovery code) with verifyMfa(input: { challenge, code }) \
         within 5 minutes",
    )
    .with_detail("reason", "MFA_REQUIRED")
    .with_detail("mfaChallenge", token)
    .with_detail("expiresInSeconds", CHALLENGE_SECS))
}

/// Which code proved the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Totp,
    RecoveryCode,
}

impl Proof {
    fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::RecoveryCode => "recovery_code",
        }
    }
}

/// Checks `code` (a TOTP code or, when `recovery` allows, a recovery code) against the
/// user's factor and consumes it: the TOTP step becomes the last one used, the recovery
/// code is marked used. `None` when it does not match (or was already used).
async fn consume(
    app: &App,
    f: &FactorRow,
    code: &str,
    now: DateTime<Utc>,
    recovery: bool,
) -> AppResult<Option<Proof>> {
    let secret = secret_of(app, f)?;
    if let Some(step) = matching_step(&secret, code, now, f.last_step) {
        // Only one request can move the step past `step - 1`: a replay racing the first
        // use of the same code loses here.
        let moved = mfa_store::advance_step(&app.db, f.user_id, step).await?;
        return Ok(moved.then_some(Proof::Totp));
    }
    let normalized = normalize_recovery(code);
    if !recovery || normalized.len() != 10 {
        return Ok(None);
    }
    let hash = sha256_hex(&normalized);
    let used = mfa_store::use_recovery_code(&app.db, f.user_id, &hash, db_time(now)).await?;
    Ok(used.then_some(Proof::RecoveryCode))
}

fn throttle_key(user: UserId) -> String {
    format!("mfa:{user}")
}

/// Counts this code attempt for `user` before the code is checked (so of N concurrent
/// guesses only those within the threshold are checked at all, as for passwords), or
/// `RATE_LIMITED` while the user's wrong codes keep codes locked. A right code takes the
/// attempt back ([`clear_failures`]).
async fn take_attempt(app: &App, user: UserId, now: DateTime<Utc>) -> AppResult<()> {
    let keys = [(throttle_key(user), USER_THRESHOLD)];
    let rows = store::login_attempts_for(&app.db, &[throttle_key(user)]).await?;
    let locked = |rows: &[crate::auth::model::LoginAttemptRow]| {
        rows.iter()
            .filter_map(|r| r.locked_until)
            .map(utc)
            .filter(|u| *u > now)
            .max()
    };
    let until = match locked(&rows) {
        Some(u) => Some(u),
        None => {
            let counted = count_attempts(app, &keys, now).await?;
            if counted.iter().any(|c| c.failures > USER_THRESHOLD) {
                locked(&counted).or(Some(now + Duration::seconds(1)))
            } else {
                None
            }
        }
    };
    if let Some(until) = until {
        let retry = (until - now).num_seconds().max(1);
        return Err(AppError::new(
            ErrorCode::RateLimited,
            format!("too many wrong codes; try again in {retry} s"),
        )
        .with_detail("retryAfterSeconds", retry));
    }
    Ok(())
}

/// Records a wrong code for `user` (`auth.mfa_failed`; it was counted before the check).
async fn wrong_code(app: &App, origin: &Origin, user: UserId, now: DateTime<Utc>) -> AppError {
    crate::metrics::auth_failure("MFA_CODE_INVALID");
    let entry = Entry::change(origin, "auth.mfa_failed", "user", user, None, db_time(now))
        .severity(Severity::Warning)
        .failed("wrong or already used code");
    if let Err(e) = crate::audit::record(&app.db, &entry).await {
        return e;
    }
    AppError::unauthenticated("the code is wrong or was already used: wait for the next code")
        .with_detail("reason", "MFA_CODE_INVALID")
}

async fn clear_failures(app: &App, user: UserId) -> AppResult<()> {
    let clear = [throttle_key(user)];
    app.db
        .tx("", async |conn| {
            store::uncount_login_attempt(conn, &clear, &[]).await
        })
        .await
}

/// Completes a sign-in: the challenge from `login` and a code (or recovery code).
pub async fn verify(
    app: &App,
    challenge: &str,
    code: &str,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<IssuedTokens> {
    let now = app.clock.now();
    let expired = || {
        AppError::unauthenticated("the sign-in challenge is unknown or expired: sign in again")
            .with_detail("reason", "MFA_CHALLENGE_INVALID")
    };
    let hash = sha256_hex(challenge.trim());
    let row = mfa_store::challenge(&app.db, &hash)
        .await?
        .ok_or_else(expired)?;
    if row.used_at.is_some() || utc(row.expires_at) <= now || row.attempts >= CHALLENGE_ATTEMPTS {
        return Err(expired());
    }
    let user = crate::tenancy::store::find_user(&app.db, row.tenant_id, row.user_id)
        .await?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(expired)?;
    let tenant = crate::tenancy::store::find(&app.db, row.tenant_id)
        .await?
        .ok_or_else(expired)?;
    crate::auth::check_tenant_active(&tenant)?;
    super::sign_in_address(app, &tenant, &user, client, request_id).await?;
    // The attempt counts before the code is checked: a challenge takes five, however
    // many arrive at once, and the user's counter locks codes like passwords.
    if !mfa_store::take_challenge_attempt(&app.db, &hash, CHALLENGE_ATTEMPTS).await? {
        return Err(expired());
    }
    take_attempt(app, user.id, now).await?;
    let f = factor(app, user.id)
        .await?
        .filter(|f| f.confirmed_at.is_some())
        .ok_or_else(expired)?;
    let origin = crate::audit::Origin::anonymous(user.tenant_id, client, request_id);
    let Some(proof) = consume(app, &f, code, now, true).await? else {
        return Err(wrong_code(app, &origin, user.id, now).await);
    };
    // The challenge is good once.
    if !mfa_store::use_challenge(&app.db, &hash, db_time(now)).await? {
        return Err(expired());
    }
    clear_failures(app, user.id).await?;
    // One record for the sign-in, saying how the second step was made (and, for a
    // recovery code, how many are left).
    let details = match proof {
        Proof::Totp => serde_json::json!({ "secondFactor": proof.as_str() }),
        Proof::RecoveryCode => serde_json::json!({
            "secondFactor": proof.as_str(),
            "recoveryCodesLeft": mfa_store::recovery_left(&app.db, user.id).await?,
        }),
    };
    open_session(app, user, client, request_id, now, Some(details), true).await
}

/// The signed-in user a factor change is for: user principals only.
async fn own_user(app: &App, p: &Principal) -> AppResult<UserRow> {
    let Some(id) = p.user_id() else {
        return Err(AppError::bad_input(
            "principal",
            "API keys have no second factor; sign in as a user",
        ));
    };
    crate::tenancy::store::find_user(&app.db, p.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// A new, unconfirmed TOTP secret: shown once.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The secret in base32, for typing into an app.
    pub secret: String,
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_uri: String,
}

/// Starts (or restarts) enrolment: a new secret replaces an unconfirmed one. A user with
/// a confirmed factor must disable it first (`CONFLICT`).
pub async fn start_enrolment(app: &App, p: &Principal, origin: &Origin) -> AppResult<Enrolment> {
    let user = own_user(app, p).await?;
    let now = app.clock.now();
    if factor(app, user.id)
        .await?
        .is_some_and(|f| f.confirmed_at.is_some())
    {
        return Err(AppError::conflict(
            "a second factor is already on: disableTotp first to enrol a new device",
        ));
    }
    let secret = new_secret();
    let row = FactorRow {
        user_id: user.id,
        tenant_id: user.tenant_id,
        secret: crate::seal::seal_text(&app.config.master_keys, &sealing_aad(user.id), &secret)
            .map_err(AppError::internal)?,
        confirmed_at: None,
        last_step: 0,
        created_at: db_time(now),
    };
    let entry = Entry::change(
        origin,
        "auth.mfa_enrolment_started",
        "user",
        user.id,
        None,
        db_time(now),
    );
    app.db
        .tx(user.tenant_id, async |conn| {
            mfa_store::put_factor(conn, &row).await?;
            crate::audit::append(conn, &entry).await?;
            Ok(())
        })
        .await?;
    let issuer = &app.config.auth.issuer;
    Ok(Enrolment {
        otpauth_uri: otpauth_uri(issuer, &user.email, &secret),
        secret,
    })
}

/// Replaces the user's recovery codes (inside `conn`'s transaction); returns the codes.
async fn replace_recovery_codes(
    conn: &mut crate::db::Conn<'_>,
    user: &UserRow,
    now: NaiveDateTime,
) -> AppResult<Vec<String>> {
    let codes = new_recovery_codes();
    let rows: Vec<RecoveryRow> = codes
        .iter()
        .map(|(_, hash)| RecoveryRow {
            code_hash: hash.clone(),
            tenant_id: user.tenant_id,
            user_id: user.id,
            created_at: now,
            used_at: None,
        })
        .collect();
    mfa_store::replace_recovery_codes(conn, user.id, &rows).await?;
    Ok(codes.into_iter().map(|(code, _)| code).collect())
}

/// Confirms enrolment with a first code; returns the recovery codes (shown once).
pub async fn confirm_enrolment(
    app: &App,
    p: &Principal,
    origin: &Origin,
    code: &str,
) -> AppResult<Vec<String>> {
    let user = own_user(app, p).await?;
    let now = app.clock.now();
    take_attempt(app, user.id, now).await?;
    let f = factor(app, user.id).await?.ok_or_else(|| {
        AppError::bad_input(
            "code",
            "there is no enrolment to confirm: call enrollTotp first",
        )
    })?;
    if f.confirmed_at.is_some() {
        return Err(AppError::conflict("the second factor is already on"));
    }
    if consume(app, &f, code, now, false).await?.is_none() {
        return Err(wrong_code(app, origin, user.id, now).await);
    }
    clear_failures(app, user.id).await?;
    let entry = Entry::change(
        origin,
        "auth.mfa_enabled",
        "user",
        user.id,
        None,
        db_time(now),
    );
    let codes = app
        .db
        .tx(user.tenant_id, async |conn| {
            mfa_store::confirm_factor(conn, user.id, db_time(now)).await?;
            let codes = replace_recovery_codes(conn, &user, db_time(now)).await?;
            crate::audit::append(conn, &entry).await?;
            // Sessions opened with the password alone (one may be a stolen one) end
            // here; this one lives on.
            store::revoke_user_sessions(
                conn,
                user.tenant_id,
                user.id,
                p.token.as_ref().map(|t| t.session_id),
                "mfa_enabled",
                db_time(now),
            )
            .await?;
            Ok(codes)
        })
        .await?;
    app.rights_changed(user.tenant_id);
    Ok(codes)
}

/// Proves the caller's factor with a code or recovery code (for changes to the factor).
async fn prove(
    app: &App,
    origin: &Origin,
    user: &UserRow,
    code: &str,
    now: DateTime<Utc>,
) -> AppResult<()> {
    take_attempt(app, user.id, now).await?;
    let f = factor(app, user.id)
        .await?
        .filter(|f| f.confirmed_at.is_some())
        .ok_or_else(|| AppError::bad_input("code", "no second factor is on"))?;
    if consume(app, &f, code, now, true).await?.is_none() {
        return Err(wrong_code(app, origin, user.id, now).await);
    }
    clear_failures(app, user.id).await
}

/// Deletes a user's factor and recovery codes with `entry` (inside one transaction).
async fn remove(app: &App, user: &UserRow, entry: &Entry) -> AppResult<()> {
    app.db
        .tx(user.tenant_id, async |conn| {
            mfa_store::delete_factor(conn, user.id).await?;
            crate::audit::append(conn, entry).await?;
            Ok(())
        })
        .await
}

/// Turns the caller's second factor off (a code or recovery code proves it).
pub async fn disable(app: &App, p: &Principal, origin: &Origin, code: &str) -> AppResult<()> {
    let user = own_user(app, p).await?;
    let now = app.clock.now();
    prove(app, origin, &user, code, now).await?;
    let entry = Entry::change(
        origin,
        "auth.mfa_disabled",
        "user",
        user.id,
        None,
        db_time(now),
    )
    .severity(Severity::Warning);
    remove(app, &user, &entry).await
}

/// New recovery codes for the caller (the old ones stop working); a code proves it.
pub async fn regenerate_recovery_codes(
    app: &App,
    p: &Principal,
    origin: &Origin,
    code: &str,
) -> AppResult<Vec<String>> {
    let user = own_user(app, p).await?;
    let now = app.clock.now();
    prove(app, origin, &user, code, now).await?;
    let entry = Entry::change(
        origin,
        "auth.mfa_recovery_codes_regenerated",
        "user",
        user.id,
        None,
        db_time(now),
    );
    app.db
        .tx(user.tenant_id, async |conn| {
            let codes = replace_recovery_codes(conn, &user, db_time(now)).await?;
            crate::audit::append(conn, &entry).await?;
            Ok(codes)
        })
        .await
}

/// An administrator turns off another user's second factor (a lost device): the user
/// signs in with the password alone and enrols again. Who may change whom follows the
/// role rules of `auth::admin`.
pub async fn reset(
    app: &App,
    p: &Principal,
    origin: &Origin,
    target: UserId,
) -> AppResult<UserRow> {
    let user = crate::tenancy::store::find_user(&app.db, p.tenant_id, target)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    if p.user_id() == Some(user.id) {
        return Err(AppError::bad_input(
            "userId",
            "to turn off your own second factor use disableTotp with a code or recovery code",
        ));
    }
    crate::auth::admin::may_change_user(app, p, &user).await?;
    if factor(app, user.id).await?.is_none() {
        return Err(AppError::bad_input(
            "userId",
            "this user has no second factor",
        ));
    }
    let entry = Entry::change(
        origin,
        "auth.mfa_reset",
        "user",
        user.id,
        None,
        db_time(app.clock.now()),
    )
    .severity(Severity::Critical);
    remove(app, &user, &entry).await?;
    Ok(user)
}

/// An operator turns off a user's second factor from the command line (`agentplane
/// admin reset-mfa`): the way back in when nobody in the tenant can. Recorded as
/// CRITICAL in the user's tenant. `false` when the user had no factor.
pub async fn reset_by_operator(app: &App, user: &UserRow) -> AppResult<bool> {
    if factor(app, user.id).await?.is_none() {
        return Ok(false);
    }
    let entry = Entry::change(
        &Origin::system(user.tenant_id),
        "auth.mfa_reset",
        "user",
        user.id,
        Some(serde_json::json!({ "by": "operator" })),
        db_time(app.clock.now()),
    )
    .severity(Severity::Critical);
    remove(app, user, &entry).await?;
    Ok(true)
}
