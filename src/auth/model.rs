//! Rows owned by authentication: sessions (refresh-token families), refresh tokens,
//! API keys, revoked access tokens and lockout counters.

use chrono::NaiveDateTime;

use crate::db::ids::{TenantId, UserId};
use crate::db::schema::{
    api_keys, login_attempts, password_tokens, refresh_tokens, revoked_access_tokens, sessions,
};

pub use crate::db::ids::{ApiKeyId, SessionId};

/// One row of `sessions`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = sessions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct SessionRow {
    /// Family id.
    pub id: SessionId,
    /// Owner's tenant.
    pub tenant_id: TenantId,
    /// Owner.
    pub user_id: UserId,
    /// Sign-in time.
    pub created_at: NaiveDateTime,
    /// Absolute expiry.
    pub expires_at: NaiveDateTime,
    /// Last refresh (idle timeout counts from here).
    pub last_used_at: NaiveDateTime,
    /// When revoked, if it was.
    pub revoked_at: Option<NaiveDateTime>,
    /// Why revoked (`logout`, `refresh_token_reuse`, `password_changed`, `revoked`).
    pub revoked_reason: Option<String>,
    /// Address at sign-in.
    pub ip: Option<String>,
    /// User agent at sign-in.
    pub user_agent: Option<String>,
    /// Whether the sign-in passed a second factor (its tokens carry `mfa: true`).
    pub mfa: bool,
}

/// One row of `refresh_tokens`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = refresh_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RefreshTokenRow {
    /// SHA-256 of the opaque token.
    pub token_hash: String,
    /// Its family.
    pub session_id: SessionId,
    /// Issue time.
    pub created_at: NaiveDateTime,
    /// When it was exchanged; a second exchange is reuse.
    pub used_at: Option<NaiveDateTime>,
}

/// One row of `api_keys`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = api_keys)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ApiKeyRow {
    /// Primary key.
    pub id: ApiKeyId,
    /// The key's tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// The first characters of the secret, shown in lists.
    pub prefix: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// Built-in role name or custom role id.
    pub role: String,
    /// Creator's user id.
    pub created_by: String,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Optional expiry.
    pub expires_at: Option<NaiveDateTime>,
    /// Last authenticated use.
    pub last_used_at: Option<NaiveDateTime>,
    /// Revocation time.
    pub revoked_at: Option<NaiveDateTime>,
}

/// One row of `revoked_access_tokens`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = revoked_access_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RevokedTokenRow {
    /// The token's `jti`.
    pub jti: String,
    /// When the token would expire anyway (the row can go after that).
    pub expires_at: NaiveDateTime,
}

/// One row of `login_attempts`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = login_attempts)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct LoginAttemptRow {
    /// `acct:<email>` or `ip:<address>`.
    pub key: String,
    /// Consecutive failures.
    pub failures: i64,
    /// Locked until this time.
    pub locked_until: Option<NaiveDateTime>,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// One row of `password_tokens` (one-time set-password links).
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = password_tokens)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PasswordTokenRow {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// The user it sets a password for.
    pub user_id: UserId,
    /// Expiry.
    pub expires_at: NaiveDateTime,
    /// When used.
    pub used_at: Option<NaiveDateTime>,
    /// `SET` (an invitation, 7 days) or `RESET` (a self-service reset, 1 hour).
    pub purpose: String,
    /// When issued (unknown for tokens issued before this was recorded).
    pub created_at: Option<NaiveDateTime>,
}
