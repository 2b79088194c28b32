//! API keys: creation (the secret is shown once), authentication, and the rights of a
//! key's creator, followed back to a person.

use chrono::{DateTime, Utc};

use super::super::model::{ApiKeyId, ApiKeyRow};
use super::super::passwords;
use super::super::{Actor, Principal, check_tenant_active, role_permissions, store};
use super::*;
use crate::app::App;
use crate::db::ids::UserId;
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult};
use crate::tenancy::model::UserStatus;

/// Creates an API key acting with `role` in the caller's tenant; returns the row and the
/// secret (shown once).
pub async fn create_api_key(
    app: &App,
    origin: &crate::audit::Origin,
    p: &Principal,
    name: &str,
    role: &str,
    expires_at: Option<DateTime<Utc>>,
) -> AppResult<(ApiKeyRow, String)> {
    let now = app.clock.now();
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(AppError::bad_input(
            "name",
            "the name must be 1 to 100 characters",
        ));
    }
    if expires_at.is_some_and(|e| e <= now) {
        return Err(AppError::bad_input(
            "expiresAt",
            "the expiry must be in the future",
        ));
    }
    let secret = format!(
        "{}{}",
        crate::auth::API_KEY_PREFIX,
        passwords::random_secret(32)
    );
    let row = ApiKeyRow {
        id: ApiKeyId::new(),
        tenant_id: p.tenant_id,
        name: name.to_owned(),
        prefix: secret.chars().take(12).collect(),
        secret_hash: passwords::sha256_hex(&secret),
        role: role.to_owned(),
        created_by: p.actor_ref(),
        created_at: db_time(now),
        expires_at: expires_at.map(db_time),
        last_used_at: None,
        revoked_at: None,
    };
    let audit = crate::audit::Entry::change(
        origin,
        "apikey.created",
        "api_key",
        row.id,
        Some(
            serde_json::json!({ "name": row.name, "role": row.role, "prefix": row.prefix,
                                 "expiresAt": row.expires_at.map(|e| utc(e).to_rfc3339()) }),
        ),
        row.created_at,
    );
    app.db
        .tx(p.tenant_id, async |conn| {
            // The record first (the tenant's chain lock), then the role check: a custom
            // role deleted concurrently is not handed out.
            crate::audit::append(conn, &audit).await?;
            crate::tenancy::store::role_still_exists(conn, p.tenant_id, &row.role).await?;
            store::insert_api_key(conn, &row).await
        })
        .await?;
    Ok((row, secret))
}

/// Authenticates an `agp_…` key.
pub async fn authenticate_api_key(app: &App, secret: &str) -> AppResult<Principal> {
    let invalid = || crate::auth::Refused::Invalid.error();
    let now = app.clock.now();
    let hash = passwords::sha256_hex(secret);
    let cache_key = format!("k:{hash}");
    if let Some(p) = app.auth_cache.get(&cache_key, now) {
        return Ok(p);
    }
    let generation = app.auth_cache.generation();
    // One statement for the key, its tenant and its custom role; one for its creator.
    let (key, tenant, custom) = store::api_key_subject(&app.db, &hash)
        .await?
        .ok_or_else(invalid)?;
    if key.revoked_at.is_some() {
        return Err(crate::auth::Refused::Revoked.error());
    }
    if key.expires_at.is_some_and(|e| utc(e) <= now) {
        return Err(crate::auth::Refused::Expired.error());
    }
    check_tenant_active(&tenant)?;
    let (mut permissions, mut platform_admin) =
        crate::auth::permissions_of(&tenant, &key.role, custom.as_deref());
    // A key never does more than whoever created it may do now: demoting its creator
    // takes it down too, and a creator who is gone (disabled, erased) takes it along.
    let Some((held, creator_platform)) =
        creator_rights(app, &tenant, &key.created_by, KEY_CHAIN_DEPTH).await?
    else {
        return Err(invalid());
    };
    permissions = permissions.intersection(&held);
    platform_admin &= creator_platform;
    if key
        .last_used_at
        .is_none_or(|t| now - utc(t) > Duration::seconds(60))
    {
        store::touch_api_key(&app.db, key.id, db_time(now)).await?;
    }
    let principal = Principal {
        actor: Actor::ApiKey(key.id),
        tenant_id: key.tenant_id,
        role: key.role,
        permissions,
        platform_admin,
        token: None,
        allowed_ips: crate::auth::allowed_ranges(&tenant),
        second_factor_missing: false,
        limits: crate::tenancy::model::TenantLimits::of(&tenant),
    };
    app.auth_cache.insert(
        cache_key,
        principal.clone(),
        key.expires_at.map(utc),
        generation,
    );
    Ok(principal)
}

/// How many keys-created-by-keys are followed back to a person.
const KEY_CHAIN_DEPTH: u8 = 4;

/// What the creator of a key (`user:<id>` or `apikey:<id>`) may do now; `None` when the
/// creator is gone: a disabled or erased user, a revoked or expired key.
async fn creator_rights(
    app: &App,
    tenant: &crate::tenancy::TenantRow,
    created_by: &str,
    depth: u8,
) -> AppResult<Option<(crate::rbac::PermissionSet, bool)>> {
    if let Some(id) = created_by.strip_prefix("user:") {
        let Ok(uuid) = uuid::Uuid::parse_str(id) else {
            return Ok(None);
        };
        let Some((user, custom)) = store::user_with_role(&app.db, tenant.id, UserId(uuid)).await?
        else {
            return Ok(None);
        };
        if user.status != UserStatus::Active {
            return Ok(None);
        }
        return Ok(Some(crate::auth::permissions_of(
            tenant,
            &user.role,
            custom.as_deref(),
        )));
    }
    if let (Some(id), true) = (created_by.strip_prefix("apikey:"), depth > 0) {
        let Ok(uuid) = uuid::Uuid::parse_str(id) else {
            return Ok(None);
        };
        let Some(key) = store::find_api_key(&app.db, tenant.id, ApiKeyId(uuid)).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| utc(e) <= app.clock.now()) {
            return Ok(None);
        }
        let (own, own_platform) = role_permissions(app, tenant, &key.role).await?;
        let Some((up, up_platform)) =
            Box::pin(creator_rights(app, tenant, &key.created_by, depth - 1)).await?
        else {
            return Ok(None);
        };
        return Ok(Some((own.intersection(&up), own_platform && up_platform)));
    }
    Ok(None)
}

/// Revokes an API key of the caller's tenant; it stops working at once. Revoking a
/// revoked key changes nothing and records nothing; an unknown key is `NOT_FOUND`.
pub async fn revoke_api_key(
    app: &App,
    origin: &crate::audit::Origin,
    p: &Principal,
    id: ApiKeyId,
) -> AppResult<ApiKeyRow> {
    let now = db_time(app.clock.now());
    let audit = crate::audit::Entry::change(origin, "apikey.revoked", "api_key", id, None, now)
        .severity(crate::audit::Severity::Warning);
    let row = app
        .db
        .tx(p.tenant_id, async |conn| {
            let (changed, row) = store::revoke_api_key(conn, p.tenant_id, id, now).await?;
            if changed {
                crate::audit::append(conn, &audit).await?;
            }
            Ok(row)
        })
        .await?
        .ok_or_else(|| AppError::not_found("API key"))?;
    app.rights_changed(p.tenant_id);
    Ok(row)
}
