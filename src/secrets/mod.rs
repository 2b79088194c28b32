//! Tenant secrets (API keys for LLM providers and the like): encrypted at rest with
//! XChaCha20-Poly1305 under a configured master key, the key id stored beside each
//! ciphertext for rotation, and the tenant id and name bound in as associated data so a
//! ciphertext copied to another row or tenant does not decrypt. Values are never returned
//! by the API; only the execution engine reads them, through [`reveal`].

use chrono::NaiveDateTime;
use secrecy::SecretString;

use crate::config::MasterKey;
use crate::db::ids::TenantId;
use crate::db::schema::secrets;
use crate::error::{AppError, AppResult};

pub use crate::db::ids::SecretId;

pub mod graphql;
pub mod service;
mod store;

pub use service::{reveal, reveal_for_host, rotate};

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

/// Encrypts under `key`; returns (nonce, ciphertext) in base64.
fn seal(key: &MasterKey, tenant: TenantId, name: &str, value: &str) -> AppResult<(String, String)> {
    crate::seal::seal_bytes(key, &aad(tenant, name), value.as_bytes()).map_err(AppError::internal)
}

fn open(keys: &[MasterKey], row: &SecretRow) -> AppResult<SecretString> {
    let pt = crate::seal::open_bytes(
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
