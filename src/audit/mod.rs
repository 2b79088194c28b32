//! The audit trail: append-only, one hash chain per tenant.
//!
//! A change and its record are written in one transaction: a service that changes
//! something calls [`append`] on the connection of its [`DbPool::tx`](crate::db::DbPool::tx),
//! so there is no change without its record and no record of a change that rolled back. Security events that
//! change nothing (failed sign-ins, refused requests, token reuse) are appended on their
//! own with [`record`].
//!
//! Each record stores the previous record's hash and the SHA-256 of its own canonical
//! form (a JSON array of every column but `hash`, in a fixed order). `audit_heads` holds
//! each chain's end, so deleting the newest record is detected too. Actors are stored as
//! pseudonyms (`audit_actors` maps them to people), so erasing a person never touches a
//! hashed record.

pub mod chain;
pub mod export;
pub mod graphql;
pub mod privacy;
pub mod report;
pub mod retention;
pub mod tail;

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::schema::audit_log;
use crate::error::AppResult;

mod append;
mod record;
mod verify;
pub use append::*;
pub use record::*;
pub use verify::*;

/// `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

crate::db_enum! {
    /// How serious an event is.
    pub enum Severity {
        /// Routine change.
        Info => "INFO",
        /// Worth a look (failed sign-in, refused request).
        Warning => "WARNING",
        /// Needs attention (token reuse, lockout, erasure).
        Critical => "CRITICAL",
    }
}

crate::db_enum! {
    /// Whether the action succeeded.
    pub enum Outcome {
        /// It happened.
        Success => "SUCCESS",
        /// It was refused or failed (see `reason`).
        Failure => "FAILURE",
    }
}

crate::db_enum! {
    /// Who acted.
    pub enum ActorType {
        /// A signed-in user.
        User => "USER",
        /// An API key.
        ApiKey => "API_KEY",
        /// The platform itself (engine, scheduler, retention, the CLI).
        System => "SYSTEM",
        /// Nobody proved who they are (a failed sign-in).
        Anonymous => "ANONYMOUS",
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The tenant whose chain it joins (the system tenant for platform events).
    pub tenant_id: TenantId,
    /// Who acted.
    pub actor_type: ActorType,
    /// `user:<id>` / `apikey:<id>`; stored only as a pseudonym.
    pub actor_ref: Option<String>,
    /// `workflow.created`, `auth.login_failed`, …
    pub action: String,
    /// `workflow`, `execution`, …
    pub resource_type: Option<String>,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// Before/after values of what changed, secrets redacted.
    pub changes: Option<Value>,
    /// Success or failure.
    pub outcome: Outcome,
    /// Why it failed.
    pub reason: Option<String>,
    /// Severity.
    pub severity: Severity,
    /// Client address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// When.
    pub at: NaiveDateTime,
}

impl Entry {
    /// A successful change of a resource.
    pub fn change(
        origin: &Origin,
        action: &str,
        resource_type: &str,
        resource_id: impl ToString,
        changes: Option<Value>,
        at: NaiveDateTime,
    ) -> Self {
        Self {
            tenant_id: origin.tenant_id,
            actor_type: origin.actor_type,
            actor_ref: origin.actor_ref.clone(),
            action: action.to_owned(),
            resource_type: Some(resource_type.to_owned()),
            resource_id: Some(resource_id.to_string()),
            changes: changes.map(|c| redact(&c)),
            outcome: Outcome::Success,
            reason: None,
            severity: Severity::Info,
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            request_id: origin.request_id.clone(),
            at,
        }
    }

    /// Sets severity.
    #[must_use]
    pub fn severity(mut self, s: Severity) -> Self {
        self.severity = s;
        self
    }

    /// Marks it a failure with a reason.
    #[must_use]
    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.outcome = Outcome::Failure;
        self.reason = Some(reason.into());
        self
    }
}

/// Who acts and from where: built from the request (see [`graphql::origin`]).
#[derive(Debug, Clone)]
pub struct Origin {
    /// The caller's tenant (the tenant whose chain its records join).
    pub tenant_id: TenantId,
    /// Who acted.
    pub actor_type: ActorType,
    /// `user:<id>` / `apikey:<id>`.
    pub actor_ref: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
}

impl Origin {
    /// A user acting in their tenant, from `client`.
    pub fn user(
        tenant: TenantId,
        user: impl ToString,
        client: Option<&crate::request::ClientInfo>,
        request_id: Option<&str>,
    ) -> Self {
        Self {
            tenant_id: tenant,
            actor_type: ActorType::User,
            actor_ref: Some(format!("user:{}", user.to_string())),
            ip: client.map(|c| c.ip.to_string()),
            user_agent: client.and_then(|c| c.user_agent.clone()),
            request_id: request_id.map(str::to_owned),
        }
    }

    /// An operator at the command line (`bootstrap`, `agentplane admin …`), acting as
    /// SYSTEM: the service it calls names the tenant whose chain records the change.
    pub fn operator() -> Self {
        Self::system(TenantId(uuid::Uuid::nil()))
    }

    /// Someone who proved nothing (a failed sign-in, a reset asked for), calling from
    /// `client` in request `request_id`, recorded in `tenant`'s chain.
    pub fn anonymous(
        tenant: TenantId,
        client: Option<&crate::request::ClientInfo>,
        request_id: Option<&str>,
    ) -> Self {
        Self {
            tenant_id: tenant,
            actor_type: ActorType::Anonymous,
            actor_ref: None,
            ip: client.map(|c| c.ip.to_string()),
            user_agent: client.and_then(|c| c.user_agent.clone()),
            request_id: request_id.map(str::to_owned),
        }
    }

    /// The platform itself acting in `tenant` (engine, scheduler, retention).
    pub fn system(tenant: TenantId) -> Self {
        Self {
            tenant_id: tenant,
            actor_type: ActorType::System,
            actor_ref: None,
            ip: None,
            user_agent: None,
            request_id: None,
        }
    }
}

/// Replaces values of secret-looking keys with `"[REDACTED]"`, recursively.
pub fn redact(v: &Value) -> Value {
    const SECRET: [&str; 6] = ["password", "secret", "token", "apikey", "api_key", "value"];
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lk = k.to_ascii_lowercase();
                    if SECRET.iter().any(|s| lk.contains(s)) && !v.is_null() {
                        (k.clone(), Value::String("[REDACTED]".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// `{field: {before, after}}` for the top-level fields that differ.
pub fn diff(before: &Value, after: &Value) -> Value {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut out = Map::new();
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (
            b.get(k).unwrap_or(&Value::Null),
            a.get(k).unwrap_or(&Value::Null),
        );
        if x != y {
            out.insert(k.clone(), serde_json::json!({ "before": x, "after": y }));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_and_diffs_name_changed_fields() {
        let v = json!({ "name": "x", "password": "p", "nested": { "apiKey": "k", "ok": 1 } });
        assert_eq!(
            redact(&v),
            json!({ "name": "x", "password": "[REDACTED]", "nested": { "apiKey": "[REDACTED]", "ok": 1 } })
        );
        let d = diff(
            &json!({ "a": 1, "b": 2 }),
            &json!({ "a": 1, "b": 3, "c": true }),
        );
        assert_eq!(
            d,
            json!({ "b": { "before": 2, "after": 3 }, "c": { "before": null, "after": true } })
        );
    }

    #[test]
    fn sealing_hashes_the_canonical_form() {
        let e = Entry {
            tenant_id: TenantId(uuid::Uuid::nil()),
            actor_type: ActorType::System,
            actor_ref: None,
            action: "x.y".into(),
            resource_type: None,
            resource_id: None,
            changes: None,
            outcome: Outcome::Success,
            reason: None,
            severity: Severity::Info,
            ip: None,
            user_agent: None,
            request_id: None,
            at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.naive_utc(),
        };
        let r = RecordRow::seal(&e, None, 1, GENESIS.into());
        assert_eq!(r.hash, r.compute_hash());
        let mut edited = r.clone();
        edited.action = "x.z".into();
        assert_ne!(edited.compute_hash(), r.hash);
    }

    #[test]
    fn erasing_the_client_context_keeps_the_hash_but_editing_it_does_not() {
        let e = Entry {
            tenant_id: TenantId(uuid::Uuid::nil()),
            actor_type: ActorType::User,
            actor_ref: Some("user:u".into()),
            action: "auth.login".into(),
            resource_type: None,
            resource_id: None,
            changes: None,
            outcome: Outcome::Success,
            reason: None,
            severity: Severity::Info,
            ip: Some("192.0.2.7".into()),
            user_agent: Some("browser".into()),
            request_id: None,
            at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.naive_utc(),
        };
        let r = RecordRow::seal(&e, Some("p".into()), 1, GENESIS.into());
        assert!(r.context_intact());
        // Erased: values and salt gone together; the hash still matches.
        let mut erased = r.clone();
        erased.ip = None;
        erased.user_agent = None;
        erased.context_salt = None;
        assert_eq!(erased.compute_hash(), r.hash);
        assert!(erased.context_intact());
        // Edited: a different address no longer matches the commitment.
        let mut edited = r.clone();
        edited.ip = Some("198.51.100.1".into());
        assert_eq!(edited.compute_hash(), r.hash);
        assert!(!edited.context_intact());
        // Half-erased (salt kept, values gone) is an edit too.
        let mut half = r.clone();
        half.ip = None;
        assert!(!half.context_intact());
        // Two records of the same context carry different commitments (random salt).
        let r2 = RecordRow::seal(&e, Some("p".into()), 1, GENESIS.into());
        assert_ne!(r.context_hash, r2.context_hash);
    }
}
