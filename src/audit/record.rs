//! A stored audit record: its canonical form, hash and signature.

use super::*;
use crate::seal::sha256_hex;

/// One stored record.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = audit_log)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RecordRow {
    /// UUIDv7 (time-ordered).
    pub id: String,
    /// The chain.
    pub tenant_id: crate::db::ids::TenantId,
    /// Position in the chain (1, 2, …).
    pub seq: i64,
    /// Actor kind ([`ActorType`] as stored). The record's columns stay the strings that
    /// were stored, so that the verifier can read, and report, any record, forged ones
    /// included; the typed values are what the application writes ([`Entry`]).
    pub actor_type: String,
    /// Actor pseudonym.
    pub actor_id: Option<String>,
    /// Action.
    pub action: String,
    /// Resource type.
    pub resource_type: Option<String>,
    /// Resource id.
    pub resource_id: Option<String>,
    /// JSON diff.
    pub changes: Option<String>,
    /// SUCCESS / FAILURE.
    pub outcome: String,
    /// Failure reason.
    pub reason: Option<String>,
    /// INFO / WARNING / CRITICAL.
    pub severity: String,
    /// Client address.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// When.
    pub created_at: NaiveDateTime,
    /// The previous record's hash ([`GENESIS`] first).
    pub prev_hash: String,
    /// SHA-256 of [`RecordRow::canonical`], hex.
    pub hash: String,
    /// SHA-256 of `[context_salt, ip, user_agent]` (JSON), hex: what the chain covers
    /// instead of the erasable client context. `None` on records written before it
    /// existed (they hash `ip` and `user_agent` directly).
    pub context_hash: Option<String>,
    /// Random per record; set to NULL with `ip` and `user_agent` when the actor is erased.
    pub context_salt: Option<String>,
}

/// The commitment to a record's client context.
pub fn context_digest(salt: &str, ip: Option<&str>, user_agent: Option<&str>) -> String {
    sha256_hex(&serde_json::json!([salt, ip, user_agent]).to_string())
}

impl RecordRow {
    /// Every hashed column, in a fixed order, as JSON: all but `hash`, with the client
    /// context replaced by its commitment (`context_hash`) on records that have one.
    pub fn canonical(&self) -> String {
        let (ip, ua): (Value, Value) = match &self.context_hash {
            Some(c) => (Value::String(format!("ctx:{c}")), Value::Null),
            None => (self.ip.clone().into(), self.user_agent.clone().into()),
        };
        Value::Array(vec![
            self.id.clone().into(),
            self.tenant_id.to_string().into(),
            self.seq.into(),
            self.actor_type.clone().into(),
            self.actor_id.clone().into(),
            self.action.clone().into(),
            self.resource_type.clone().into(),
            self.resource_id.clone().into(),
            self.changes.clone().into(),
            self.outcome.clone().into(),
            self.reason.clone().into(),
            self.severity.clone().into(),
            ip,
            ua,
            self.request_id.clone().into(),
            self.created_at
                .format("%Y-%m-%dT%H:%M:%S%.6f")
                .to_string()
                .into(),
            self.prev_hash.clone().into(),
        ])
        .to_string()
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        sha256_hex(&self.canonical())
    }

    /// Whether the stored client context is consistent with its commitment: either it
    /// matches, or it was erased (salt, ip and user agent all gone).
    pub fn context_intact(&self) -> bool {
        match (&self.context_hash, &self.context_salt) {
            (None, _) => true,
            (Some(c), Some(salt)) => {
                *c == context_digest(salt, self.ip.as_deref(), self.user_agent.as_deref())
            }
            (Some(_), None) => self.ip.is_none() && self.user_agent.is_none(),
        }
    }

    /// Builds and seals the record at `seq` after `prev`.
    pub fn seal(e: &Entry, pseudonym: Option<String>, seq: i64, prev: String) -> Self {
        let user_agent: Option<String> =
            e.user_agent.as_ref().map(|u| u.chars().take(256).collect());
        let salt = {
            use rand::RngCore as _;
            let mut b = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut b);
            crate::seal::hex(&b)
        };
        let context_hash = context_digest(&salt, e.ip.as_deref(), user_agent.as_deref());
        let mut r = Self {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: e.tenant_id,
            seq,
            actor_type: e.actor_type.as_str().to_owned(),
            actor_id: pseudonym,
            action: e.action.clone(),
            resource_type: e.resource_type.clone(),
            resource_id: e.resource_id.clone(),
            changes: e.changes.as_ref().map(Value::to_string),
            outcome: e.outcome.as_str().to_owned(),
            reason: e.reason.clone(),
            severity: e.severity.as_str().to_owned(),
            ip: e.ip.clone(),
            user_agent,
            request_id: e.request_id.clone(),
            created_at: e.at,
            prev_hash: prev,
            hash: String::new(),
            context_hash: Some(context_hash),
            context_salt: Some(salt),
        };
        r.hash = match chain::current()
            .as_deref()
            .and_then(chain::ChainKeys::current)
        {
            Some(key) => key.tag(&r.canonical()),
            None => r.compute_hash(),
        };
        r
    }

    /// What is wrong with this record's hash, if anything: keyed hashes are checked with
    /// `keys`; a plain hash is accepted only where no keyed record precedes it.
    pub fn hash_problem(&self, keys: Option<&chain::ChainKeys>) -> Option<String> {
        let edited = || "its content does not match its hash (edited)".to_owned();
        if !self.context_intact() {
            return Some(edited());
        }
        if self.hash.starts_with(chain::KEYED) {
            let Some(keys) = keys else {
                return Some(
                    "it is keyed, and no master key is configured here to check it".into(),
                );
            };
            return keys.check(&self.hash, &self.canonical()).err();
        }
        if self.prev_hash.starts_with(chain::KEYED) {
            return Some(
                "it carries a plain hash after a keyed record (rewritten without the key)".into(),
            );
        }
        (self.compute_hash() != self.hash).then(edited)
    }
}
