//! Secret rules: names and host pins are validated, values are sealed before they reach
//! a store, the API never reads a value back, and every change is audited in its own
//! transaction (by name, never by value).

use secrecy::{ExposeSecret as _, SecretString};

use super::store::{find, list as list_rows, remove, stale, upsert};
use super::{SecretId, SecretRow, check_hosts, check_name, disabled, open, seal};
use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::db::ids::TenantId;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};

/// The secrets of `tenant` (metadata; values stay sealed).
pub async fn list(app: &App, tenant: TenantId) -> AppResult<Vec<SecretRow>> {
    app.db
        .read(tenant, async |conn| list_rows(conn, tenant).await)
        .await
}

/// Stores (or replaces) a secret; the audit record names it, never its value.
pub async fn set(
    app: &App,
    origin: &Origin,
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
    let audit = Entry::change(
        origin,
        "secret.set",
        "secret",
        &name,
        Some(serde_json::json!({ "name": name, "keyId": key.id, "allowedHosts": row.hosts() })),
        now,
    );
    app.db
        .tx(tenant, async |conn| {
            upsert(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            find(conn, tenant, &name)
                .await?
                .ok_or_else(|| AppError::internal(anyhow::anyhow!("secret vanished after write")))
        })
        .await
}

/// Deletes a secret of `tenant`; `NOT_FOUND` (and nothing recorded) when there is none.
/// Returns the validated name.
pub async fn delete(app: &App, origin: &Origin, tenant: TenantId, name: &str) -> AppResult<String> {
    let name = check_name(name)?;
    let audit = Entry::change(
        origin,
        "secret.deleted",
        "secret",
        &name,
        None,
        db_time(app.clock.now()),
    );
    app.db
        .tx(tenant, async |conn| {
            if !remove(conn, tenant, &name).await? {
                return Err(AppError::not_found("secret"));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(name)
}

async fn sealed(app: &App, tenant: TenantId, name: &str) -> AppResult<SecretRow> {
    if app.config.master_keys.is_empty() {
        return Err(disabled());
    }
    app.db
        .read(tenant, async |conn| find(conn, tenant, name).await)
        .await?
        .ok_or_else(|| AppError::not_found("secret"))
}

/// Decrypts a tenant's secret for the execution engine. Never exposed through the API.
pub async fn reveal(app: &App, tenant: TenantId, name: &str) -> AppResult<SecretString> {
    let row = sealed(app, tenant, name).await?;
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
    let row = sealed(app, tenant, name).await?;
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
/// Each secret is rewritten with its audit record in one transaction.
pub async fn rotate(app: &App) -> AppResult<usize> {
    let key = app.config.current_master_key().ok_or_else(disabled)?;
    let rows = app.db.run(async |conn| stale(conn, &key.id).await).await?;
    for row in &rows {
        let value = open(&app.config.master_keys, row)?;
        let (nonce, ciphertext) = seal(key, row.tenant_id, &row.name, value.expose_secret())?;
        let now = db_time(app.clock.now());
        let audit = Entry::change(
            &Origin::system(row.tenant_id),
            "secret.reencrypted",
            "secret",
            &row.name,
            Some(serde_json::json!({ "keyId": { "before": row.key_id, "after": key.id } })),
            now,
        );
        let sealed = SecretRow {
            key_id: key.id.clone(),
            nonce,
            ciphertext,
            updated_at: now,
            ..row.clone()
        };
        app.db
            .tx(row.tenant_id, async |conn| {
                upsert(conn, &sealed).await?;
                crate::audit::append(conn, &audit).await?;
                Ok(())
            })
            .await?;
    }
    Ok(rows.len())
}
