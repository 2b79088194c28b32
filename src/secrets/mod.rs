//! Tenant secrets (API keys for LLM providers and the like): encrypted at rest with
//! XChaCha20-Poly1305 under a configured master key, the key id stored beside each
//! ciphertext for rotation, and the tenant id and name bound in as associated data so a
//! ciphertext copied to another row or tenant does not decrypt. Values are never returned
//! by the API; only the execution engine reads them, through [`reveal`].

use async_graphql::{Context, InputObject, Object, SimpleObject};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

use crate::app::App;
use crate::auth::principal;
use crate::config::MasterKey;
use crate::db::DbPool;
use crate::db::ids::{db_time, utc};
use crate::db::schema::secrets;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::rbac::{Permission, Require};
use crate::tenancy::TenantId;

crate::id_type!(
    /// Identifies a secret.
    SecretId
);

/// One row of `secrets`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = secrets)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct SecretRow {
    /// Primary key.
    pub id: SecretId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Unique within the tenant.
    pub name: String,
    /// The master key that encrypted it.
    pub key_id: String,
    /// Base64 nonce (24 bytes).
    pub nonce: String,
    /// Base64 ciphertext with tag.
    pub ciphertext: String,
    /// `user:<id>` or `apikey:<id>`.
    pub created_by: String,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
    /// JSON array of the only hosts the value may be sent to; `None`: any host.
    pub allowed_hosts: Option<String>,
}

impl SecretRow {
    /// The hosts the value may be sent to (empty: any).
    pub fn hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }
}

/// Normalises `allowedHosts`: host names or IP addresses, lower-case, no scheme, port or
/// path; at most 20.
fn check_hosts(hosts: &[String]) -> AppResult<Option<String>> {
    if hosts.is_empty() {
        return Ok(None);
    }
    if hosts.len() > 20 {
        return Err(AppError::bad_input("allowedHosts", "at most 20 hosts"));
    }
    let mut out = Vec::new();
    for h in hosts {
        let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid || h.contains("//") {
            return Err(AppError::bad_input(
                "allowedHosts",
                format!(
                    "{h:?} is not a host name: give names like api.openai.com, without scheme or path"
                ),
            ));
        }
        if !out.contains(&h) {
            out.push(h);
        }
    }
    serde_json::to_string(&out)
        .map(Some)
        .map_err(AppError::internal)
}

fn aad(tenant: TenantId, name: &str) -> Vec<u8> {
    format!("agentplane-secret:{tenant}:{name}").into_bytes()
}

fn disabled() -> AppError {
    AppError::forbidden("secrets are disabled: the operator has not set AGENTPLANE_MASTER_KEY")
        .with_detail("reason", "SECRETS_DISABLED")
}

/// Encrypts `plaintext` under `key` with `aad` bound in; returns (nonce, ciphertext) in
/// base64. Also seals the token-signing keys (`auth::jwt`).
pub(crate) fn seal_bytes(
    key: &MasterKey,
    aad: &[u8],
    plaintext: &[u8],
) -> anyhow::Result<(String, String)> {
    let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| anyhow::anyhow!("encrypting failed"))?;
    Ok((STANDARD.encode(nonce), STANDARD.encode(ct)))
}

/// Decrypts what [`seal_bytes`] sealed under the master key `key_id` (one of `keys`);
/// `what` names it in errors.
pub(crate) fn open_bytes(
    keys: &[MasterKey],
    key_id: &str,
    aad: &[u8],
    nonce: &str,
    ciphertext: &str,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let key = keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
        anyhow::anyhow!("{what} is sealed under master key {key_id}, which is not configured")
    })?;
    let nonce = STANDARD.decode(nonce)?;
    let ct = STANDARD.decode(ciphertext)?;
    if nonce.len() != 24 {
        anyhow::bail!("{what} has a bad nonce");
    }
    let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
    cipher
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad })
        .map_err(|_| anyhow::anyhow!("{what} failed authentication"))
}

/// Encrypts under `key`; returns (nonce, ciphertext) in base64.
fn seal(key: &MasterKey, tenant: TenantId, name: &str, value: &str) -> AppResult<(String, String)> {
    seal_bytes(key, &aad(tenant, name), value.as_bytes()).map_err(AppError::internal)
}

fn open(keys: &[MasterKey], row: &SecretRow) -> AppResult<SecretString> {
    let pt = open_bytes(
        keys,
        &row.key_id,
        &aad(row.tenant_id, &row.name),
        &row.nonce,
        &row.ciphertext,
        &format!("secret {}", row.name),
    )
    .map_err(AppError::internal)?;
    String::from_utf8(pt)
        .map(SecretString::from)
        .map_err(AppError::internal)
}

fn check_name(name: &str) -> AppResult<String> {
    let n = name.trim();
    let ok = (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(n.to_owned())
    } else {
        Err(AppError::bad_input(
            "name",
            "1–64 characters of A-Z a-z 0-9 _ - .",
        ))
    }
}

// ---- store ----

async fn find(db: &DbPool, tenant: TenantId, name: &str) -> AppResult<Option<SecretRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        secrets::table
            .filter(secrets::tenant_id.eq(tenant))
            .filter(secrets::name.eq(name))
            .select(SecretRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

async fn upsert(db: &DbPool, row: &SecretRow, audit: &crate::audit::Entry) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
        diesel::insert_into(secrets::table)
            .values(row)
            .on_conflict((secrets::tenant_id, secrets::name))
            .do_update()
            .set((
                secrets::key_id.eq(&row.key_id),
                secrets::nonce.eq(&row.nonce),
                secrets::ciphertext.eq(&row.ciphertext),
                secrets::updated_at.eq(row.updated_at),
                secrets::allowed_hosts.eq(&row.allowed_hosts),
            ))
            .execute(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

async fn remove(
    db: &DbPool,
    tenant: TenantId,
    name: &str,
    audit: &crate::audit::Entry,
) -> AppResult<bool> {
    crate::db_tx!(db, tenant, |conn| {
        let gone = diesel::delete(
            secrets::table
                .filter(secrets::tenant_id.eq(tenant))
                .filter(secrets::name.eq(name)),
        )
        .execute(conn)
        .await?
            == 1;
        if gone {
            crate::audit_append!(conn, audit)?;
        }
        Ok(gone)
    })
}

async fn list(db: &DbPool, tenant: TenantId) -> AppResult<Vec<SecretRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        secrets::table
            .filter(secrets::tenant_id.eq(tenant))
            .order(secrets::name.asc())
            .select(SecretRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Every secret not under the current master key (rotation), across tenants.
async fn stale(db: &DbPool, current: &str) -> AppResult<Vec<SecretRow>> {
    Ok(crate::db_run!(db, |conn| {
        secrets::table
            .filter(secrets::key_id.ne(current))
            .select(SecretRow::as_select())
            .load(conn)
            .await?
    }))
}

// ---- service ----

/// Stores (or replaces) a secret; the audit record names it, never its value.
pub async fn set(
    app: &App,
    origin: &crate::audit::Origin,
    tenant: TenantId,
    actor: &str,
    name: &str,
    value: &str,
    allowed_hosts: &[String],
) -> AppResult<SecretRow> {
    let key = app.config.current_master_key().ok_or_else(disabled)?;
    let name = check_name(name)?;
    let allowed_hosts = check_hosts(allowed_hosts)?;
    if value.is_empty() || value.len() > 64 * 1024 {
        return Err(AppError::bad_input("value", "1 byte to 64 KiB"));
    }
    let (nonce, ciphertext) = seal(key, tenant, &name, value)?;
    let now = db_time(app.clock.now());
    let row = SecretRow {
        id: SecretId::new(),
        tenant_id: tenant,
        name: name.clone(),
        key_id: key.id.clone(),
        nonce,
        ciphertext,
        created_by: actor.to_owned(),
        created_at: now,
        updated_at: now,
        allowed_hosts,
    };
    let audit = crate::audit::Entry::change(
        origin,
        "secret.set",
        "secret",
        &name,
        Some(serde_json::json!({ "name": name, "keyId": key.id, "allowedHosts": row.hosts() })),
        now,
    );
    upsert(&app.db, &row, &audit).await?;
    find(&app.db, tenant, &name)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("secret vanished after write")))
}

/// Decrypts a tenant's secret for the execution engine. Never exposed through the API.
pub async fn reveal(app: &App, tenant: TenantId, name: &str) -> AppResult<SecretString> {
    if app.config.master_keys.is_empty() {
        return Err(disabled());
    }
    let row = find(&app.db, tenant, name)
        .await?
        .ok_or_else(|| AppError::not_found("secret"))?;
    open(&app.config.master_keys, &row)
}

/// Decrypts a secret that is about to be sent to `host`: refused (`FORBIDDEN`) when the
/// secret is pinned to other hosts.
pub async fn reveal_for_host(
    app: &App,
    tenant: TenantId,
    name: &str,
    host: &str,
) -> AppResult<SecretString> {
    if app.config.master_keys.is_empty() {
        return Err(disabled());
    }
    let row = find(&app.db, tenant, name)
        .await?
        .ok_or_else(|| AppError::not_found("secret"))?;
    let hosts = row.hosts();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if !hosts.is_empty() && !hosts.contains(&host) {
        return Err(AppError::forbidden(format!(
            "it may be sent only to {}, not to {host}",
            hosts.join(", ")
        )));
    }
    open(&app.config.master_keys, &row)
}

/// Re-encrypts every secret that is not under the current master key; returns how many.
pub async fn rotate(app: &App) -> AppResult<usize> {
    let key = app.config.current_master_key().ok_or_else(disabled)?;
    let rows = stale(&app.db, &key.id).await?;
    for row in &rows {
        let value = open(&app.config.master_keys, row)?;
        let (nonce, ciphertext) = seal(key, row.tenant_id, &row.name, value.expose_secret())?;
        let now = db_time(app.clock.now());
        let audit = crate::audit::Entry::change(
            &crate::audit::Origin::system(row.tenant_id),
            "secret.reencrypted",
            "secret",
            &row.name,
            Some(serde_json::json!({ "keyId": { "before": row.key_id, "after": key.id } })),
            now,
        );
        upsert(
            &app.db,
            &SecretRow {
                key_id: key.id.clone(),
                nonce,
                ciphertext,
                updated_at: now,
                ..row.clone()
            },
            &audit,
        )
        .await?;
    }
    Ok(rows.len())
}

// ---- GraphQL ----

/// A secret's metadata. The value is write-only.
#[derive(SimpleObject)]
pub struct SecretInfo {
    /// Name, unique in the tenant.
    pub name: String,
    /// The master key it is encrypted under.
    pub key_id: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The only hosts the value is sent to (empty: any).
    pub allowed_hosts: Vec<String>,
}

impl From<SecretRow> for SecretInfo {
    fn from(r: SecretRow) -> Self {
        Self {
            allowed_hosts: r.hosts(),
            name: r.name,
            key_id: r.key_id,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

/// Input of `setSecret`.
#[derive(InputObject)]
pub struct SetSecretInput {
    /// 1–64 of A-Z a-z 0-9 _ - .
    pub name: String,
    /// The value (write-only; never returned).
    pub value: String,
    /// Pins the secret to these hosts (e.g. `api.openai.com`): a step that would send it
    /// anywhere else fails. Default: any host.
    #[graphql(default)]
    pub allowed_hosts: Vec<String>,
}

/// Input of `deleteSecret`.
#[derive(InputObject)]
pub struct DeleteSecretInput {
    /// The secret's name.
    pub name: String,
}

/// Result of `setSecret`.
#[derive(SimpleObject)]
pub struct SetSecretPayload {
    /// The secret's metadata.
    pub secret: SecretInfo,
}

/// Result of `deleteSecret`.
#[derive(SimpleObject)]
pub struct DeleteSecretPayload {
    /// The deleted secret's name.
    pub deleted_name: String,
}

/// Secret queries.
#[derive(Default)]
pub struct SecretQuery;

#[Object]
impl SecretQuery {
    /// The tenant's secrets (names and metadata only).
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn secrets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SecretInfo>> {
        let p = principal(ctx)?;
        Ok(list(&app(ctx)?.db, p.tenant_id)
            .await?
            .into_iter()
            .map(SecretInfo::from)
            .collect())
    }
}

/// Secret mutations.
#[derive(Default)]
pub struct SecretMutation;

#[Object]
impl SecretMutation {
    /// Stores or replaces a secret, encrypted at rest.
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn set_secret(
        &self,
        ctx: &Context<'_>,
        input: SetSecretInput,
    ) -> async_graphql::Result<SetSecretPayload> {
        let p = principal(ctx)?;
        let row = set(
            app(ctx)?,
            &crate::graphql::origin(ctx)?,
            p.tenant_id,
            &p.actor_ref(),
            &input.name,
            &input.value,
            &input.allowed_hosts,
        )
        .await?;
        Ok(SetSecretPayload { secret: row.into() })
    }

    /// Deletes a secret.
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn delete_secret(
        &self,
        ctx: &Context<'_>,
        input: DeleteSecretInput,
    ) -> async_graphql::Result<DeleteSecretPayload> {
        let p = principal(ctx)?;
        let name = check_name(&input.name)?;
        let a = app(ctx)?;
        let audit = crate::audit::Entry::change(
            &crate::graphql::origin(ctx)?,
            "secret.deleted",
            "secret",
            &name,
            None,
            db_time(a.clock.now()),
        );
        if !remove(&a.db, p.tenant_id, &name, &audit).await? {
            return Err(AppError::not_found("secret").into());
        }
        Ok(DeleteSecretPayload { deleted_name: name })
    }
}
