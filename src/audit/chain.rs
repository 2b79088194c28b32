//! Keys for the audit chain, so that write access to the database is not enough to forge
//! it.
//!
//! With a master key configured, each record's hash is an HMAC-SHA256 of its canonical
//! form under a chain key derived from the master key (never stored in the database),
//! written as `hmac:<master key id>:<hex>`; without one, records carry the plain SHA-256
//! (tamper-evident against accidents, not against a database writer). A keyed record may
//! only be followed by keyed records, so a rewritten tail cannot fall back to plain
//! hashes. The retention checkpoint (where a pruned chain starts) and the checkpoints this
//! process publishes (to its log and, when configured, a file outside the database) are
//! signed with the same key; `verifyAuditChain` checks the chain against them.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::MasterKey;

/// Prefix of keyed hashes and signatures.
pub const KEYED: &str = "hmac:";

/// A chain key derived from one master key.
pub struct ChainKey {
    /// The master key's id.
    pub id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey({}, ***)", self.id)
    }
}

impl ChainKey {
    /// HMAC-SHA256(master key, "agentplane audit chain v1").
    pub fn derive(master: &MasterKey) -> Self {
        use secrecy::ExposeSecret as _;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master.key.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"agentplane audit chain v1");
        Self {
            id: master.id.clone(),
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn hex_mac(&self, msg: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(msg.as_bytes());
        crate::seal::hex(&mac.finalize().into_bytes())
    }

    /// `hmac:<id>:<hex>` of `msg`.
    pub fn tag(&self, msg: &str) -> String {
        format!("{KEYED}{}:{}", self.id, self.hex_mac(msg))
    }
}

/// The chain keys of a process: the current master key's signs, every configured one
/// verifies.
#[derive(Debug, Default)]
pub struct ChainKeys {
    keys: Vec<ChainKey>,
}

impl ChainKeys {
    /// Derived from the configured master keys (the first is current).
    pub fn from_master(master: &[MasterKey]) -> Self {
        Self {
            keys: master.iter().map(ChainKey::derive).collect(),
        }
    }

    /// The key new records and checkpoints are signed with.
    pub fn current(&self) -> Option<&ChainKey> {
        self.keys.first()
    }

    /// Whether `tag` (`hmac:<id>:<hex>`) is `msg`'s tag under one of the keys; `Err`
    /// says why not.
    pub fn check(&self, tag: &str, msg: &str) -> Result<(), String> {
        let Some(rest) = tag.strip_prefix(KEYED) else {
            return Err("it is not keyed".into());
        };
        let Some((id, _)) = rest.rsplit_once(':') else {
            return Err("its key tag is malformed".into());
        };
        let Some(key) = self.keys.iter().find(|k| k.id == id) else {
            return Err(format!(
                "it is keyed with master key {id}, which is not configured here"
            ));
        };
        if constant_time_eq(key.tag(msg).as_bytes(), tag.as_bytes()) {
            Ok(())
        } else {
            Err("its keyed hash does not match (edited or forged)".into())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The chain keys kept with a pool (`App` sets them as the pool's `db::Signer`), read
/// back from the pool or from a connection it lent.
pub trait KeysOf {
    /// The chain keys, if set.
    fn chain_keys(&self) -> Option<Arc<ChainKeys>>;
}

impl KeysOf for crate::db::DbPool {
    fn chain_keys(&self) -> Option<Arc<ChainKeys>> {
        self.signer()?.downcast::<ChainKeys>().ok()
    }
}

impl KeysOf for crate::db::Conn<'_> {
    fn chain_keys(&self) -> Option<Arc<ChainKeys>> {
        self.signer()?.downcast::<ChainKeys>().ok()
    }
}

tokio::task_local! {
    /// The chain keys of the pool a record is appended on (`audit::append` sets it).
    pub static CURRENT: Option<Arc<ChainKeys>>;
}

/// The chain keys of the current transaction, if any.
pub fn current() -> Option<Arc<ChainKeys>> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// What a checkpoint signs.
pub fn checkpoint_message(tenant: &str, seq: i64, hash: &str) -> String {
    format!("agentplane audit checkpoint v1|{tenant}|{seq}|{hash}")
}

/// A checkpoint of a chain: its head (or retention start) at a moment, signed when a
/// chain key is configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The tenant whose chain it is.
    pub tenant_id: String,
    /// The head's sequence number.
    pub sequence: i64,
    /// The head's hash.
    pub hash: String,
    /// When it was taken (RFC 3339).
    pub at: String,
    /// `hmac:<key id>:<hex>` over tenant, sequence and hash; `None` without a key.
    pub signature: Option<String>,
}

impl Checkpoint {
    /// Takes and signs a checkpoint.
    pub fn sign(keys: Option<&ChainKeys>, tenant: &str, seq: i64, hash: &str, at: String) -> Self {
        Self {
            tenant_id: tenant.to_owned(),
            sequence: seq,
            hash: hash.to_owned(),
            at,
            signature: keys
                .and_then(ChainKeys::current)
                .map(|k| k.tag(&checkpoint_message(tenant, seq, hash))),
        }
    }
}

/// The last checkpoint this process published per tenant. `verifyAuditChain` checks the
/// chain against it: it lives outside the database, so a database writer cannot move it.
#[derive(Debug, Default)]
pub struct Published {
    last: std::sync::Mutex<std::collections::HashMap<String, Checkpoint>>,
}

impl Published {
    /// The last checkpoint published for `tenant`.
    pub fn last(&self, tenant: &str) -> Option<Checkpoint> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }
}

/// Takes a signed checkpoint of every chain whose head moved since the last round and
/// publishes it outside the database: a log line (target `agentplane::audit::checkpoint`)
/// and, with `engine.audit_checkpoint_file`, a JSON line appended to that file. Returns how
/// many were published.
pub async fn publish(app: &crate::app::App) -> crate::error::AppResult<usize> {
    use crate::db::schema::audit_heads;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let heads: Vec<(String, i64, String)> = crate::db_run!(&app.db, |conn| {
        audit_heads::table
            .select((audit_heads::tenant_id, audit_heads::seq, audit_heads::hash))
            .load(conn)
            .await?
    });
    let keys = app.db.chain_keys();
    let at = app.clock.now().to_rfc3339();
    let mut fresh = Vec::new();
    {
        let mut last = app
            .published
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (tenant, seq, hash) in heads {
            if last
                .get(&tenant)
                .is_some_and(|c| c.sequence == seq && c.hash == hash)
            {
                continue;
            }
            let cp = Checkpoint::sign(keys.as_deref(), &tenant, seq, &hash, at.clone());
            last.insert(tenant, cp.clone());
            fresh.push(cp);
        }
    }
    let mut lines = String::new();
    for cp in &fresh {
        let line = serde_json::to_string(cp).map_err(crate::error::AppError::internal)?;
        tracing::info!(
            target: "agentplane::audit::checkpoint",
            tenant = %cp.tenant_id,
            sequence = cp.sequence,
            hash = %cp.hash,
            signature = cp.signature.as_deref().unwrap_or(""),
            "audit checkpoint"
        );
        lines.push_str(&line);
        lines.push('\n');
    }
    if let (Some(path), false) = (&app.config.engine.audit_checkpoint_file, lines.is_empty()) {
        use tokio::io::AsyncWriteExt as _;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(crate::error::AppError::internal)?;
        f.write_all(lines.as_bytes())
            .await
            .map_err(crate::error::AppError::internal)?;
        f.flush().await.map_err(crate::error::AppError::internal)?;
    }
    Ok(fresh.len())
}

/// Publishes checkpoints every `engine.audit_checkpoint_interval` until `stop`.
pub async fn publish_loop(app: Arc<crate::app::App>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(app.config.engine.audit_checkpoint_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = publish(&app).await {
            tracing::warn!(
                code = e.code().as_str(),
                "publishing audit checkpoints failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(id: &str, byte: u8) -> MasterKey {
        MasterKey {
            id: id.into(),
            key: Arc::new(secrecy::SecretBox::new(Box::new([byte; 32]))),
        }
    }

    #[test]
    fn tags_verify_under_any_configured_key_and_nothing_else() {
        let old = ChainKeys::from_master(&[master("k1", 1)]);
        let both = ChainKeys::from_master(&[master("k2", 2), master("k1", 1)]);
        let t = old.current().expect("key").tag("m");
        assert!(t.starts_with("hmac:k1:"));
        assert!(both.check(&t, "m").is_ok(), "an older key still verifies");
        assert!(both.check(&t, "n").is_err());
        let other = ChainKeys::from_master(&[master("k1", 9)]);
        assert!(other.check(&t, "m").is_err(), "same id, other key");
        assert!(
            ChainKeys::default()
                .check(&t, "m")
                .unwrap_err()
                .contains("not configured")
        );
    }
}
