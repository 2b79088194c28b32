//! The audit trail: append-only, one hash chain per tenant.
//!
//! A change and its record are written in one transaction: store functions that change
//! something call [`audit_append!`] inside their `db_tx!` body, so there is no change
//! without its record and no record of a change that rolled back. Security events that
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
use sha2::{Digest, Sha256};

use crate::db::DbPool;
use crate::db::schema::audit_log;
use crate::error::AppResult;

/// `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How serious an event is.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "AuditSeverity")]
pub enum Severity {
    /// Routine change.
    Info,
    /// Worth a look (failed sign-in, refused request).
    Warning,
    /// Needs attention (token reuse, lockout, erasure).
    Critical,
}

impl Severity {
    /// Stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
        }
    }
}

/// Whether the action succeeded.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "AuditOutcome")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused or failed (see `reason`).
    Failure,
}

impl Outcome {
    /// Stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The tenant whose chain it joins (the system tenant for platform events).
    pub tenant_id: String,
    /// `USER`, `API_KEY`, `SYSTEM` or `ANONYMOUS`.
    pub actor_type: &'static str,
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
            tenant_id: origin.tenant_id.clone(),
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
    /// The caller's tenant.
    pub tenant_id: String,
    /// `USER`, `API_KEY`, `SYSTEM` or `ANONYMOUS`.
    pub actor_type: &'static str,
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
        tenant: impl ToString,
        user: impl ToString,
        client: Option<&crate::request::ClientInfo>,
        request_id: Option<&str>,
    ) -> Self {
        Self {
            tenant_id: tenant.to_string(),
            actor_type: "USER",
            actor_ref: Some(format!("user:{}", user.to_string())),
            ip: client.map(|c| c.ip.to_string()),
            user_agent: client.and_then(|c| c.user_agent.clone()),
            request_id: request_id.map(str::to_owned),
        }
    }

    /// The platform itself acting in `tenant` (engine, scheduler, retention).
    pub fn system(tenant: impl ToString) -> Self {
        Self {
            tenant_id: tenant.to_string(),
            actor_type: "SYSTEM",
            actor_ref: None,
            ip: None,
            user_agent: None,
            request_id: None,
        }
    }
}

/// One stored record.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = audit_log)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RecordRow {
    /// UUIDv7 (time-ordered).
    pub id: String,
    /// The chain.
    pub tenant_id: String,
    /// Position in the chain (1, 2, …).
    pub seq: i64,
    /// Actor kind.
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

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
            self.tenant_id.clone().into(),
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
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let context_hash = context_digest(&salt, e.ip.as_deref(), user_agent.as_deref());
        let mut r = Self {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: e.tenant_id.clone(),
            seq,
            actor_type: e.actor_type.to_owned(),
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

/// Appends an [`Entry`] to its tenant's chain on `$conn`, inside the caller's transaction
/// (`db_tx!`). Evaluates to `Result<RecordRow, AppError>`. A macro because the body is
/// expanded once per backend. Serialization: the chain head row is locked first (a
/// no-op UPDATE; SQLite's write transaction already serializes).
#[macro_export]
macro_rules! audit_append {
    ($conn:expr, $entry:expr) => {{
        async {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use $crate::db::schema::{audit_actors, audit_heads, audit_log};
            let e: &$crate::audit::Entry = $entry;
            diesel::insert_into(audit_heads::table)
                .values((
                    audit_heads::tenant_id.eq(&e.tenant_id),
                    audit_heads::seq.eq(0i64),
                    audit_heads::hash.eq($crate::audit::GENESIS),
                    audit_heads::checkpoint_seq.eq(0i64),
                    audit_heads::checkpoint_hash.eq($crate::audit::GENESIS),
                ))
                .on_conflict_do_nothing()
                .execute(&mut *$conn)
                .await?;
            diesel::update(audit_heads::table.find(&e.tenant_id))
                .set(audit_heads::seq.eq(audit_heads::seq))
                .execute(&mut *$conn)
                .await?;
            let (seq, prev): (i64, String) = audit_heads::table
                .find(&e.tenant_id)
                .select((audit_heads::seq, audit_heads::hash))
                .first(&mut *$conn)
                .await?;
            let pseudonym: Option<String> = match &e.actor_ref {
                None => None,
                Some(r) => {
                    diesel::insert_into(audit_actors::table)
                        .values((
                            audit_actors::pseudonym.eq(uuid::Uuid::now_v7().to_string()),
                            audit_actors::tenant_id.eq(&e.tenant_id),
                            audit_actors::actor_ref.eq(r),
                            audit_actors::created_at.eq(e.at),
                        ))
                        .on_conflict_do_nothing()
                        .execute(&mut *$conn)
                        .await?;
                    Some(
                        audit_actors::table
                            .filter(audit_actors::tenant_id.eq(&e.tenant_id))
                            .filter(audit_actors::actor_ref.eq(r))
                            .select(audit_actors::pseudonym)
                            .first::<String>(&mut *$conn)
                            .await?,
                    )
                }
            };
            let rec = $crate::audit::RecordRow::seal(e, pseudonym, seq + 1, prev);
            diesel::insert_into(audit_log::table)
                .values(&rec)
                .execute(&mut *$conn)
                .await?;
            diesel::update(audit_heads::table.find(&e.tenant_id))
                .set((
                    audit_heads::seq.eq(rec.seq),
                    audit_heads::hash.eq(&rec.hash),
                ))
                .execute(&mut *$conn)
                .await?;
            Ok::<_, $crate::error::AppError>(rec)
        }
        .await
    }};
}

/// Appends a record in a transaction of its own: for events that change nothing.
pub async fn record(db: &DbPool, entry: &Entry) -> AppResult<RecordRow> {
    let tenant = entry.tenant_id.clone();
    crate::db_tx!(db, tenant, |conn| crate::audit_append!(conn, entry))
}

/// Appends many entries to one tenant's chain in a single transaction, in order: for
/// bulk imports and for seeding benchmarks and tests. Rows go in multi-row inserts of
/// 1000 on PostgreSQL and one statement each on SQLite (same transaction). Returns the
/// new head sequence number.
pub async fn append_many(db: &DbPool, tenant: &str, entries: &[Entry]) -> AppResult<i64> {
    use crate::db::schema::{audit_actors, audit_heads};
    use diesel::prelude::*;
    use diesel_async::{AsyncConnection as _, RunQueryDsl};
    use std::collections::HashMap;

    if entries.iter().any(|e| e.tenant_id != tenant) {
        return Err(crate::error::AppError::bad_input(
            "entries",
            "every entry must belong to the tenant",
        ));
    }
    // Seals every record after `(seq, prev)`, resolving pseudonyms through `pseudonym`.
    fn seal_all(
        entries: &[Entry],
        mut seq: i64,
        mut prev: String,
        pseudonyms: &HashMap<String, String>,
    ) -> Vec<RecordRow> {
        entries
            .iter()
            .map(|e| {
                seq += 1;
                let ps = e
                    .actor_ref
                    .as_ref()
                    .and_then(|r| pseudonyms.get(r))
                    .cloned();
                let r = RecordRow::seal(e, ps, seq, std::mem::take(&mut prev));
                prev = r.hash.clone();
                r
            })
            .collect()
    }
    let refs: Vec<String> = {
        let mut v: Vec<String> = entries.iter().filter_map(|e| e.actor_ref.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let at = entries.first().map(|e| e.at).unwrap_or_default();
    let t = tenant.to_owned();
    // The same statements on both backends, but PostgreSQL gets multi-row inserts.
    macro_rules! prepare {
        ($conn:expr) => {{
            diesel::insert_into(audit_heads::table)
                .values((
                    audit_heads::tenant_id.eq(&t),
                    audit_heads::seq.eq(0i64),
                    audit_heads::hash.eq(GENESIS),
                    audit_heads::checkpoint_seq.eq(0i64),
                    audit_heads::checkpoint_hash.eq(GENESIS),
                ))
                .on_conflict_do_nothing()
                .execute($conn)
                .await?;
            diesel::update(audit_heads::table.find(&t))
                .set(audit_heads::seq.eq(audit_heads::seq))
                .execute($conn)
                .await?;
            let (seq, prev): (i64, String) = audit_heads::table
                .find(&t)
                .select((audit_heads::seq, audit_heads::hash))
                .first($conn)
                .await?;
            let mut pseudonyms = HashMap::new();
            for r in &refs {
                diesel::insert_into(audit_actors::table)
                    .values((
                        audit_actors::pseudonym.eq(uuid::Uuid::now_v7().to_string()),
                        audit_actors::tenant_id.eq(&t),
                        audit_actors::actor_ref.eq(r),
                        audit_actors::created_at.eq(at),
                    ))
                    .on_conflict_do_nothing()
                    .execute($conn)
                    .await?;
                let ps: String = audit_actors::table
                    .filter(audit_actors::tenant_id.eq(&t))
                    .filter(audit_actors::actor_ref.eq(r))
                    .select(audit_actors::pseudonym)
                    .first($conn)
                    .await?;
                pseudonyms.insert(r.clone(), ps);
            }
            seal_all(entries, seq, prev, &pseudonyms)
        }};
    }
    macro_rules! finish {
        ($conn:expr, $rows:expr) => {{
            if let Some(last) = $rows.last() {
                diesel::update(audit_heads::table.find(&t))
                    .set((
                        audit_heads::seq.eq(last.seq),
                        audit_heads::hash.eq(&last.hash),
                    ))
                    .execute($conn)
                    .await?;
                Ok::<i64, crate::error::AppError>(last.seq)
            } else {
                Ok(0)
            }
        }};
    }
    let run = async {
        match db {
            DbPool::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                conn.transaction(async |conn| -> AppResult<i64> {
                    crate::db::set_tenant(conn, &t).await?;
                    let rows = prepare!(&mut *conn);
                    for chunk in rows.chunks(1000) {
                        diesel::insert_into(audit_log::table)
                            .values(chunk)
                            .execute(&mut *conn)
                            .await?;
                    }
                    finish!(&mut *conn, rows)
                })
                .await
            }
            DbPool::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let conn: &mut crate::db::SqliteConn = &mut pooled;
                conn.immediate_transaction(async |conn| -> AppResult<i64> {
                    let rows = prepare!(&mut *conn);
                    for r in &rows {
                        diesel::insert_into(audit_log::table)
                            .values(r)
                            .execute(&mut *conn)
                            .await?;
                    }
                    finish!(&mut *conn, rows)
                })
                .await
            }
        }
    };
    chain::CURRENT.scope(db.chain_keys(), run).await
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

/// The result of checking a chain.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Records checked.
    pub checked: i64,
    /// The first problem: (sequence number, record id if it exists, what is wrong).
    pub first_broken: Option<(i64, Option<String>, String)>,
    /// The chain's head as stored: (sequence number, hash).
    pub head: Option<(i64, String)>,
}

/// Checks `tenant`'s chain (records created in `[from, to]`, all when unset): every
/// record's hash matches its content (keyed hashes under the chain keys), each links to
/// the one before, no sequence number is missing, a keyed retention checkpoint carries a
/// valid signature, the chain still holds every `pinned` checkpoint published earlier,
/// and it ends where its head says. Reads in batches of 1000.
pub async fn verify(
    db: &DbPool,
    tenant: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    pinned: &[chain::Checkpoint],
) -> AppResult<Verification> {
    use crate::db::schema::audit_heads;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let t = tenant.to_owned();
    let keys = db.chain_keys();
    let head: Option<(i64, String, i64, String, Option<String>)> = crate::db_run!(db, |conn| {
        audit_heads::table
            .find(&t)
            .select((
                audit_heads::seq,
                audit_heads::hash,
                audit_heads::checkpoint_seq,
                audit_heads::checkpoint_hash,
                audit_heads::checkpoint_sig,
            ))
            .first(conn)
            .await
            .optional()?
    });
    let Some((head_seq, head_hash, cp_seq, cp_hash, cp_sig)) = head else {
        let mut out = Verification::default();
        if let Some(p) = pinned.iter().find(|p| p.sequence > 0) {
            out.first_broken = Some((
                1,
                None,
                format!(
                    "the chain is gone, but checkpoint {} was published: records were removed",
                    p.sequence
                ),
            ));
        }
        return Ok(out);
    };
    let mut out = Verification {
        head: Some((head_seq, head_hash.clone())),
        ..Verification::default()
    };
    // A keyed checkpoint moves only with the key.
    if cp_hash.starts_with(chain::KEYED) || cp_sig.is_some() {
        let msg = chain::checkpoint_message(&t, cp_seq, &cp_hash);
        let problem = match (&cp_sig, keys.as_deref()) {
            (None, _) => Some("it is not signed (moved without the chain key)".to_owned()),
            (Some(_), None) => {
                Some("it is signed, and no master key is configured here to check it".into())
            }
            (Some(sig), Some(k)) => k.check(sig, &msg).err(),
        };
        if let Some(p) = problem {
            out.first_broken = Some((cp_seq, None, format!("the retention checkpoint: {p}")));
            return Ok(out);
        }
    }
    // Published checkpoints: the chain may have grown since, never shrunk or changed.
    for p in pinned {
        if p.sequence > head_seq {
            out.first_broken = Some((
                head_seq + 1,
                None,
                format!(
                    "the chain ends at {head_seq}, but checkpoint {} was published: records \
                     were removed",
                    p.sequence
                ),
            ));
            return Ok(out);
        }
        if p.sequence <= cp_seq {
            continue; // pruned by retention since
        }
        let seq = p.sequence;
        let stored: Option<String> = crate::db_run!(db, |conn| {
            audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.eq(seq))
                .select(audit_log::hash)
                .first::<String>(conn)
                .await
                .optional()?
        });
        if stored.as_deref() != Some(p.hash.as_str()) {
            out.first_broken = Some((
                seq,
                None,
                format!("record {seq} is not the one checkpoint {seq} published (rewritten)"),
            ));
            return Ok(out);
        }
    }
    // Where to start: the first record in range (or after the checkpoint).
    let start: Option<i64> = crate::db_run!(db, |conn| {
        let mut q = audit_log::table
            .filter(audit_log::tenant_id.eq(&t))
            .filter(audit_log::seq.gt(cp_seq))
            .into_boxed();
        if let Some(f) = from {
            q = q.filter(audit_log::created_at.ge(f));
        }
        q.select(diesel::dsl::min(audit_log::seq))
            .first::<Option<i64>>(conn)
            .await?
    });
    let Some(start) = start else {
        if to.is_none() && from.is_none() && head_seq > cp_seq {
            out.first_broken = Some((
                cp_seq + 1,
                None,
                format!("records {}..{head_seq} are missing", cp_seq + 1),
            ));
        }
        return Ok(out);
    };
    if start > cp_seq + 1 && from.is_none() {
        out.first_broken = Some((
            cp_seq + 1,
            None,
            format!("record {} is missing", cp_seq + 1),
        ));
        return Ok(out);
    }
    // The hash the first checked record must link to.
    let mut expected_prev: Option<String> = if start == cp_seq + 1 {
        Some(cp_hash)
    } else {
        crate::db_run!(db, |conn| {
            audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.eq(start - 1))
                .select(audit_log::hash)
                .first::<String>(conn)
                .await
                .optional()?
        })
    };
    let mut next = start;
    loop {
        let batch: Vec<RecordRow> = crate::db_run!(db, |conn| {
            let mut q = audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.ge(next))
                .into_boxed();
            if let Some(to) = to {
                q = q.filter(audit_log::created_at.le(to));
            }
            q.order(audit_log::seq.asc())
                .limit(1000)
                .select(RecordRow::as_select())
                .load(conn)
                .await?
        });
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            if r.seq != next {
                out.first_broken = Some((next, None, format!("record {next} is missing")));
                return Ok(out);
            }
            if let Some(problem) = r.hash_problem(keys.as_deref()) {
                out.first_broken = Some((r.seq, Some(r.id.clone()), problem));
                return Ok(out);
            }
            if expected_prev.as_ref().is_some_and(|p| p != &r.prev_hash) {
                out.first_broken = Some((
                    r.seq,
                    Some(r.id.clone()),
                    "it does not link to the record before it".into(),
                ));
                return Ok(out);
            }
            expected_prev = Some(r.hash.clone());
            out.checked += 1;
            next += 1;
        }
    }
    // Without an upper bound the chain must end at its head.
    if to.is_none() {
        if next - 1 < head_seq {
            out.first_broken = Some((
                next,
                None,
                format!("record {next} is missing (the chain ends at {head_seq})"),
            ));
        } else if expected_prev.as_deref() != Some(head_hash.as_str()) {
            out.first_broken = Some((
                next - 1,
                None,
                "the chain does not end at its recorded head".into(),
            ));
        }
    }
    Ok(out)
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
            tenant_id: "t".into(),
            actor_type: "SYSTEM",
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
            tenant_id: "t".into(),
            actor_type: "USER",
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
