//! Single sign-on rows: each tenant's provider, and the sign-ins in flight.

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper};
use diesel_async::RunQueryDsl as _;

use crate::db::ids::TenantId;
use crate::db::schema::{oidc_logins, oidc_providers};
use crate::db::{Conn, DbPool};
use crate::error::AppResult;

/// One row of `oidc_providers`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = oidc_providers)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ProviderRow {
    /// The tenant (one provider each).
    pub tenant_id: TenantId,
    /// The issuer URL (`iss`), without a trailing slash.
    pub issuer: String,
    /// Our client id at the provider (`aud`).
    pub client_id: String,
    /// The tenant secret holding the client secret (none: a public client, PKCE only).
    pub client_secret_name: Option<String>,
    /// JSON array of allowed e-mail domains (empty: any).
    pub allowed_domains: String,
    /// The ID-token claim mapped to roles (e.g. `groups`).
    pub role_claim: Option<String>,
    /// JSON array of `[claim value, stored role]`, first match wins.
    pub role_mapping: String,
    /// The stored role of users no mapping matches.
    pub default_role: String,
    /// Whether unknown users are created at their first sign-in.
    pub jit_provisioning: bool,
    /// Whether sign-ins are accepted.
    pub enabled: bool,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

impl ProviderRow {
    /// Allowed e-mail domains.
    pub fn domains(&self) -> Vec<String> {
        serde_json::from_str(&self.allowed_domains).unwrap_or_default()
    }

    /// `(claim value, stored role)` pairs.
    pub fn mapping(&self) -> Vec<(String, String)> {
        serde_json::from_str(&self.role_mapping).unwrap_or_default()
    }
}

/// One row of `oidc_logins`: a sign-in in flight.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = oidc_logins)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct LoginRow {
    /// SHA-256 of the `state` sent to the provider.
    pub state_hash: String,
    /// The tenant signing in.
    pub tenant_id: TenantId,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub code_verifier: String,
    /// SHA-256 of the secret the browser keeps in a cookie.
    pub browser_hash: String,
    /// Where the tokens go back to.
    pub return_to: Option<String>,
    /// When it started.
    pub created_at: NaiveDateTime,
    /// When it stops working.
    pub expires_at: NaiveDateTime,
    /// When it was used.
    pub used_at: Option<NaiveDateTime>,
}

/// The provider of `tenant`, if one is configured.
pub async fn provider(db: &DbPool, tenant: TenantId) -> AppResult<Option<ProviderRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        oidc_providers::table
            .filter(oidc_providers::tenant_id.eq(tenant))
            .select(ProviderRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Stores a new sign-in, forgetting those that expired before `expired`.
pub async fn insert_login(
    conn: &mut Conn<'_>,
    row: &LoginRow,
    expired: NaiveDateTime,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(oidc_logins::table.filter(oidc_logins::expires_at.lt(expired)))
            .execute(conn)
            .await?;
        diesel::insert_into(oidc_logins::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// The sign-in whose state hashes to `state_hash`.
pub async fn find_login(db: &DbPool, state_hash: &str) -> AppResult<Option<LoginRow>> {
    Ok(crate::db_run!(db, |conn| {
        oidc_logins::table
            .filter(oidc_logins::state_hash.eq(state_hash))
            .select(LoginRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Marks a sign-in used at `at`; `false` when it already was.
pub async fn spend_login(db: &DbPool, state_hash: &str, at: NaiveDateTime) -> AppResult<bool> {
    let n = crate::db_run!(db, |conn| {
        diesel::update(
            oidc_logins::table
                .filter(oidc_logins::state_hash.eq(state_hash))
                .filter(oidc_logins::used_at.is_null()),
        )
        .set(oidc_logins::used_at.eq(Some(at)))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}

/// Replaces the tenant's provider with `row`.
pub async fn replace_provider(conn: &mut Conn<'_>, row: &ProviderRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(oidc_providers::table.filter(oidc_providers::tenant_id.eq(row.tenant_id)))
            .execute(conn)
            .await?;
        diesel::insert_into(oidc_providers::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Deletes the tenant's provider; returns how many rows went (0 or 1).
pub async fn delete_provider(conn: &mut Conn<'_>, tenant: TenantId) -> AppResult<usize> {
    Ok(crate::on_conn!(conn, |conn| {
        diesel::delete(oidc_providers::table.filter(oidc_providers::tenant_id.eq(tenant)))
            .execute(conn)
            .await?
    }))
}
