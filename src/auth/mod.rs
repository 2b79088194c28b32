//! Authentication: who is calling. The [`Principal`] is attached to each GraphQL request
//! (or websocket connection) and is the only source of the caller's tenant.

pub mod admin;
pub mod cache;
pub mod graphql;
pub mod jwt;
pub mod limits;
pub mod mfa_store;
pub mod model;
pub mod notify;
pub mod passwords;
pub mod service;
pub mod store;
pub mod totp;

use chrono::{DateTime, Utc};

use crate::app::App;
use crate::db::ids::utc;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::rbac::{BuiltinRole, PermissionSet, parse_permission_list};
use crate::tenancy::model::{TenantStatus, UserStatus};
use crate::tenancy::{RoleId, TenantId, TenantRow, UserId};

pub use model::{ApiKeyId, SessionId};

/// Prefix of every API key secret, so leaked keys are recognisable by scanners.
pub const API_KEY_PREFIX: &str = "agp_";

/// Who acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user.
    User(UserId),
    /// An API key.
    ApiKey(ApiKeyId),
}

/// The access token behind a user principal.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The session (refresh-token family).
    pub session_id: SessionId,
    /// The token's id, for revocation.
    pub jti: String,
    /// The token's expiry.
    pub expires_at: DateTime<Utc>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User or API key.
    pub actor: Actor,
    /// The tenant the caller acts in. Never taken from client input.
    pub tenant_id: TenantId,
    /// Built-in role name or custom role id.
    pub role: String,
    /// What the caller may do.
    pub permissions: PermissionSet,
    /// Platform operators manage tenants and the cluster across tenants.
    pub platform_admin: bool,
    /// Present for users signed in with an access token.
    pub token: Option<TokenInfo>,
    /// The tenant's `allowedIpRanges` when the principal was resolved (empty: any
    /// address). Enforced by [`check_client_address`] on every use of the credential.
    pub allowed_ips: std::sync::Arc<[crate::net::Cidr]>,
    /// The tenant requires a second factor and this sign-in had none: the principal holds
    /// no permission (it may only enrol, sign out, read itself) until it signs in again
    /// with a code.
    pub second_factor_missing: bool,
    /// The tenant's rate limits and document policy when the principal was resolved.
    pub limits: crate::tenancy::model::TenantLimits,
}

impl Principal {
    /// Who acts and from where, for audit records: this principal, calling from
    /// `client` (when known) in request `request_id`.
    pub fn origin(
        &self,
        client: Option<&crate::request::ClientInfo>,
        request_id: Option<&crate::request::RequestId>,
    ) -> crate::audit::Origin {
        crate::audit::Origin {
            tenant_id: self.tenant_id,
            actor_type: match self.actor {
                Actor::User(_) => crate::audit::ActorType::User,
                Actor::ApiKey(_) => crate::audit::ActorType::ApiKey,
            },
            actor_ref: Some(self.actor_ref()),
            ip: client.map(|c| c.ip.to_string()),
            user_agent: client.and_then(|c| c.user_agent.clone()),
            request_id: request_id.map(|r| r.0.clone()),
        }
    }

    /// Whether this caller may see tenant `id` at all.
    pub fn may_see_tenant(&self, id: TenantId) -> bool {
        self.platform_admin || self.tenant_id == id
    }

    /// The user id, for user principals.
    pub fn user_id(&self) -> Option<UserId> {
        match self.actor {
            Actor::User(u) => Some(u),
            Actor::ApiKey(_) => None,
        }
    }

    /// A stable actor string for records (`user:<id>` / `apikey:<id>`).
    pub fn actor_ref(&self) -> String {
        match self.actor {
            Actor::User(u) => format!("user:{u}"),
            Actor::ApiKey(k) => format!("apikey:{k}"),
        }
    }
}

/// Resolves a role reference (built-in name or custom role id) to permissions. A
/// platform-admin role outside the system tenant, or an unknown role, grants nothing.
pub async fn role_permissions(
    app: &App,
    tenant: &TenantRow,
    role: &str,
) -> AppResult<(PermissionSet, bool)> {
    let custom = match (BuiltinRole::parse(role), uuid::Uuid::parse_str(role)) {
        (None, Ok(uuid)) => crate::tenancy::store::find_role(&app.db, tenant.id, RoleId(uuid))
            .await?
            .map(|r| r.permissions),
        _ => None,
    };
    Ok(permissions_of(tenant, role, custom.as_deref()))
}

/// [`role_permissions`] when the custom role's permission list (if the role is a custom
/// one that exists) was already read: built-in roles map to their matrix row, a custom
/// role to its list, anything else to nothing.
pub fn permissions_of(
    tenant: &TenantRow,
    role: &str,
    custom_permissions: Option<&str>,
) -> (PermissionSet, bool) {
    if let Some(b) = BuiltinRole::parse(role) {
        if b == BuiltinRole::PlatformAdmin {
            return if tenant.is_system {
                (b.permissions(), true)
            } else {
                (PermissionSet::new(), false)
            };
        }
        return (b.permissions(), false);
    }
    custom_permissions.map_or_else(
        || (PermissionSet::new(), false),
        |list| (parse_permission_list(list), false),
    )
}

/// A tenant's `allowedIpRanges`, parsed (values were validated when saved; one that no
/// longer parses is skipped, never widened to "any").
pub fn allowed_ranges(tenant: &TenantRow) -> std::sync::Arc<[crate::net::Cidr]> {
    serde_json::from_str::<Vec<String>>(&tenant.allowed_ip_ranges)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| crate::net::Cidr::parse(r))
        .collect()
}

/// Whether a caller from `ip` may use a credential of a tenant whose ranges are
/// `ranges` (empty: any address). Platform admins are held to the system tenant's list
/// like everyone else, unless `AGENTPLANE_PLATFORM_ADMINS_BYPASS_IP_ALLOWLIST` is set.
pub fn address_allowed(
    app: &App,
    ranges: &[crate::net::Cidr],
    platform_admin: bool,
    ip: std::net::IpAddr,
) -> bool {
    ranges.is_empty()
        || (platform_admin && app.config.auth.platform_admins_bypass_ip_allowlist)
        || ranges.iter().any(|r| r.contains(ip))
}

/// The refusal of a caller outside its tenant's `allowedIpRanges`: `FORBIDDEN` with
/// reason `IP_NOT_ALLOWED`.
pub fn ip_not_allowed(ip: std::net::IpAddr) -> AppError {
    crate::metrics::auth_failure("IP_NOT_ALLOWED");
    AppError::forbidden(format!(
        "your address {ip} is not in this organization's allowed IP ranges: \
         connect from an allowed network, or ask an owner to add it (allowedIpRanges)"
    ))
    .with_detail("reason", "IP_NOT_ALLOWED")
}

/// Enforces the principal's tenant `allowedIpRanges` for a caller at `client`, and
/// records a refusal as `auth.ip_denied` (once per principal and address a minute, so
/// a rejected client cannot grow the trail with every request).
pub async fn check_client_address(
    app: &App,
    p: &Principal,
    client: &crate::request::ClientInfo,
    request_id: Option<&crate::request::RequestId>,
) -> AppResult<()> {
    if address_allowed(app, &p.allowed_ips, p.platform_admin, client.ip) {
        return Ok(());
    }
    if app
        .ip_denials
        .first(&format!("{}|{}", p.actor_ref(), client.ip), app.clock.now())
    {
        let origin = p.origin(Some(client), request_id);
        record_ip_denial(app, &origin, client.ip).await;
    }
    Err(ip_not_allowed(client.ip))
}

/// Writes `auth.ip_denied` (best effort: a failure is logged; the caller is refused
/// either way).
pub async fn record_ip_denial(app: &App, origin: &crate::audit::Origin, ip: std::net::IpAddr) {
    tracing::warn!(event = "auth.ip_denied", client.ip = %ip, "refused: address not allowed");
    let entry = crate::audit::Entry::change(
        origin,
        "auth.ip_denied",
        "tenant",
        origin.tenant_id,
        Some(serde_json::json!({ "ip": ip.to_string() })),
        crate::db::ids::db_time(app.clock.now()),
    )
    .severity(crate::audit::Severity::Warning)
    .failed("the client address is not in allowedIpRanges");
    if let Err(e) = crate::audit::record(&app.db, &entry).await {
        tracing::warn!(error = ?e, "could not record a refused address");
    }
}

/// Remembers which keys were seen lately: (principal, address) refusals recorded in the
/// last minute, users whose activity was written in the last few minutes.
#[derive(Default)]
pub struct DenialLog(std::sync::Mutex<std::collections::HashMap<String, DateTime<Utc>>>);

/// How often a user's `lastActiveAt` is written at most (per process).
pub const ACTIVITY_EVERY: chrono::Duration = chrono::Duration::minutes(5);

/// Notes that `p` made a request: a user's `lastActiveAt` is written at most every
/// [`ACTIVITY_EVERY`] per process — one statement, within the request that triggers it
/// (so a request's statements are its own, and idle connections run none).
pub async fn note_activity(app: &App, p: &Principal) {
    let Some(user) = p.user_id() else {
        return;
    };
    let now = app.clock.now();
    if !app
        .activity
        .first_within(&user.to_string(), now, ACTIVITY_EVERY)
    {
        return;
    }
    let since = crate::db::ids::db_time(now - ACTIVITY_EVERY);
    let at = crate::db::ids::db_time(now);
    if let Err(e) = crate::tenancy::store::touch_last_active(&app.db, user, at, since).await {
        tracing::debug!(error = ?e, "could not record a user's activity");
    }
}

impl DenialLog {
    /// `true` when `key` was not recorded in the last minute (and remembers it now).
    pub fn first(&self, key: &str, now: DateTime<Utc>) -> bool {
        self.first_within(key, now, chrono::Duration::seconds(60))
    }

    /// `true` when `key` was not recorded in the last `window` (and remembers it now).
    pub fn first_within(&self, key: &str, now: DateTime<Utc>, window: chrono::Duration) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if seen.len() > 10_000 {
            seen.retain(|_, at| now - *at < window);
        }
        match seen.get(key) {
            Some(at) if now - *at < window => false,
            _ => {
                seen.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// Refuses principals of a suspended tenant with `FORBIDDEN` and reason `TENANT_SUSPENDED`.
pub fn check_tenant_active(tenant: &TenantRow) -> AppResult<()> {
    if tenant.status == TenantStatus::Active {
        Ok(())
    } else {
        Err(AppError::forbidden("this organization is suspended")
            .with_detail("reason", "TENANT_SUSPENDED"))
    }
}

/// Why a credential is refused, sent as `extensions.reason` so a client knows what to
/// do: refresh (`TOKEN_EXPIRED`) or sign in again (`TOKEN_INVALID`, `TOKEN_REVOKED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Past its expiry (an access token: refresh it; an API key: make a new one).
    Expired,
    /// Not a credential this server issued, or its subject is gone or disabled.
    Invalid,
    /// Signed out, or revoked by an administrator.
    Revoked,
}

impl Refused {
    /// The `UNAUTHENTICATED` error with its reason and what to do.
    pub fn error(self) -> AppError {
        let (reason, message) = match self {
            Self::Expired => (
                "TOKEN_EXPIRED",
                "the credential has expired: refresh the session (refreshSession) or sign in again",
            ),
            Self::Invalid => (
                "TOKEN_INVALID",
                "the credential is not valid: sign in again",
            ),
            Self::Revoked => ("TOKEN_REVOKED", "the credential was revoked: sign in again"),
        };
        crate::metrics::auth_failure(reason);
        AppError::unauthenticated(message).with_detail("reason", reason)
    }
}

fn invalid_credentials() -> AppError {
    Refused::Invalid.error()
}

/// Turns a bearer credential (access token or API key) into a principal.
pub async fn authenticate(app: &App, bearer: &str) -> AppResult<Principal> {
    if bearer.starts_with(API_KEY_PREFIX) {
        return service::authenticate_api_key(app, bearer).await;
    }
    let cfg = &app.config.auth;
    let now = app.clock.now();
    // A token seen before (the same bytes, by digest) skips even the signature check:
    // its claims were verified when it was cached, and its expiry bounds the entry.
    let key = format!("t:{}", passwords::sha256_hex(bearer));
    if let Some(p) = app.auth_cache.get(&key, now) {
        return Ok(p);
    }
    let generation = app.auth_cache.generation();
    if app.keys.should_reload_for(bearer) {
        if let Err(e) = app.keys.reload(&app.db, cfg, &app.config.master_keys).await {
            tracing::warn!(error = format!("{e:#}"), "reloading signing keys failed");
        }
    }
    let claims = app.keys.verify(bearer, cfg, now).map_err(|r| {
        tracing::debug!(reason = r.0, "access token refused");
        if r.is_expiry() {
            Refused::Expired.error()
        } else {
            invalid_credentials()
        }
    })?;
    let tenant_id = uuid::Uuid::parse_str(&claims.tid)
        .map(TenantId)
        .map_err(|_| invalid_credentials())?;
    let user_id = uuid::Uuid::parse_str(&claims.sub)
        .map(UserId)
        .map_err(|_| invalid_credentials())?;
    let session_id = uuid::Uuid::parse_str(&claims.sid)
        .map(SessionId)
        .map_err(|_| invalid_credentials())?;
    // One statement: session, user, tenant, custom role and the revocation list.
    let subject = store::token_subject(&app.db, tenant_id, session_id, user_id, &claims.jti)
        .await?
        .ok_or_else(invalid_credentials)?;
    let store::TokenSubject {
        session,
        user,
        tenant,
        custom_role_permissions,
        token_revoked,
    } = subject;
    if session.user_id != user_id {
        return Err(invalid_credentials());
    }
    if token_revoked || session.revoked_at.is_some() {
        return Err(Refused::Revoked.error());
    }
    if user.status != UserStatus::Active {
        return Err(invalid_credentials());
    }
    check_tenant_active(&tenant)?;
    let (mut permissions, mut platform_admin) =
        permissions_of(&tenant, &user.role, custom_role_permissions.as_deref());
    let second_factor_missing = tenant.require_mfa && !claims.mfa;
    if second_factor_missing {
        permissions = PermissionSet::new();
        platform_admin = false;
    }
    let principal = Principal {
        actor: Actor::User(user.id),
        tenant_id,
        role: user.role,
        permissions,
        platform_admin,
        allowed_ips: allowed_ranges(&tenant),
        second_factor_missing,
        limits: crate::tenancy::model::TenantLimits::of(&tenant),
        token: Some(TokenInfo {
            session_id,
            jti: claims.jti,
            expires_at: DateTime::from_timestamp(claims.exp, 0)
                .unwrap_or_else(|| utc(session.expires_at)),
        }),
    };
    // The entry ends with the token (its expiry plus the leeway `verify` allows) or the
    // session, whichever comes first.
    let token_end = DateTime::from_timestamp(claims.exp, 0)
        .map(|t| t + chrono::Duration::seconds(jwt::LEEWAY_SECS));
    let session_end = utc(session.expires_at);
    app.auth_cache.insert(
        key,
        principal.clone(),
        Some(token_end.map_or(session_end, |t| t.min(session_end))),
        generation,
    );
    Ok(principal)
}

/// Parses an `Authorization` header value into the bearer credential.
pub fn bearer_from_header(value: &str) -> AppResult<&str> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(' ').ok_or_else(|| {
        AppError::new(
            ErrorCode::Unauthenticated,
            "use Authorization: Bearer <token>",
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
        return Err(AppError::unauthenticated(
            "use Authorization: Bearer <token>",
        ));
    }
    Ok(rest.trim())
}
