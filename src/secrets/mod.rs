//! Tenant secrets (API keys for LLM providers and the like): encrypted at rest with
//! XChaCha20-Poly1305 under a configured master key, the key id stored beside each
//! ciphertext for rotation, and the tenant id and name bound in as associated data so a
//! ciphertext copied to another row or tenant does not decrypt. Values are never returned
//! by the API; only the execution engine reads them, through [`reveal`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::NaiveDateTime;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

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
