//! GraphQL for the audit trail: `auditLog`, `verifyAuditChain`, `complianceReport`,
//! the `auditEvents` live tail, and the `auditTrail` fields of other types.

use crate::audit::chain::KeysOf as _;
use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::RecordRow;
use crate::db::ids::{db_time, utc};
use crate::db::schema::{audit_actors, audit_log};
use crate::graphql::enums::{Outcome, Severity};
use crate::graphql::principal;
use crate::graphql::{app, origin};

mod privacy;
mod report;
use crate::graphql::guards::Require;
use crate::graphql::relay::{Conn, NodeKind, Page, decode_expecting};
use crate::rbac::Permission;
pub use privacy::*;
pub use report::*;

/// One audit record.
pub struct AuditRecord(pub RecordRow);

#[Object]
impl AuditRecord {
    /// The record's id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Position in the tenant's chain.
    async fn sequence(&self) -> i64 {
        self.0.seq
    }
    /// USER, API_KEY, SYSTEM or ANONYMOUS.
    async fn actor_type(&self) -> &str {
        &self.0.actor_type
    }
    /// The actor's pseudonym (stable per person; the mapping is erasable).
    async fn actor_id(&self) -> Option<&str> {
        self.0.actor_id.as_deref()
    }
    /// `workflow.created`, `auth.login_failed`, …
    async fn action(&self) -> &str {
        &self.0.action
    }
    /// Resource type.
    async fn resource_type(&self) -> Option<&str> {
        self.0.resource_type.as_deref()
    }
    /// Resource id as stored (a UUID for most resources, a name for secrets).
    async fn resource_id(&self) -> Option<&str> {
        self.0.resource_id.as_deref()
    }
    /// The resource's global ID (what `node(id:)` and the API's other fields take), when
    /// the resource is a node; null for others (secrets, reports).
    async fn resource_global_id(&self) -> Option<ID> {
        let kind =
            crate::graphql::relay::NodeKind::of_resource_type(self.0.resource_type.as_deref()?)?;
        let uuid = uuid::Uuid::parse_str(self.0.resource_id.as_deref()?).ok()?;
        Some(crate::graphql::relay::to_global_id(kind, uuid))
    }
    /// Before/after of what changed, secrets redacted.
    async fn changes(&self) -> Option<Json<serde_json::Value>> {
        self.0
            .changes
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .map(Json)
    }
    /// SUCCESS or FAILURE.
    async fn outcome(&self) -> Outcome {
        super::Outcome::parse(&self.0.outcome)
            .unwrap_or(super::Outcome::Success)
            .into()
    }
    /// Why it failed.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// INFO, WARNING or CRITICAL.
    async fn severity(&self) -> Severity {
        match super::Severity::parse(&self.0.severity) {
            Some(s) => s.into(),
            None => Severity::Info,
        }
    }
    /// Client address.
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    /// Client user agent.
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// Request id.
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    /// When.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// The previous record's hash.
    async fn prev_hash(&self) -> &str {
        &self.0.prev_hash
    }
    /// This record's hash.
    async fn hash(&self) -> &str {
        &self.0.hash
    }
}

/// `auditLog` filter.
#[derive(InputObject, Default)]
pub struct AuditFilter {
    /// Records by this user (global user ID).
    pub actor_id: Option<ID>,
    /// Actions starting with this (`workflow.`, `auth.login`).
    pub action_prefix: Option<String>,
    /// Resource type.
    pub resource_type: Option<String>,
    /// Resource id: its global ID or the stored id (`resourceId` of a record).
    pub resource_id: Option<String>,
    /// Severity.
    pub severity: Option<Severity>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// From (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To (inclusive).
    pub to: Option<DateTime<Utc>>,
}

/// Result of `verifyAuditChain`.
#[derive(SimpleObject)]
pub struct ChainVerification {
    /// Whether every checked record is intact and linked.
    pub intact: bool,
    /// Records checked.
    pub checked: i64,
    /// Sequence number of the first broken (edited, unlinked or missing) record.
    pub first_broken_sequence: Option<i64>,
    /// Its id, when it still exists.
    pub first_broken_id: Option<ID>,
    /// What is wrong with it.
    pub problem: Option<String>,
    /// The chain's head now, signed when a master key is configured: keep it (outside
    /// this database) and pass it to a later `verifyAuditChain(checkpoint:)`, which then
    /// proves the chain was not cut back or rewritten up to it.
    pub checkpoint: Option<AuditCheckpoint>,
}

/// A chain position: a record's sequence number and hash, and a signature over them.
#[derive(SimpleObject, Clone)]
pub struct AuditCheckpoint {
    /// Sequence number of the head record.
    pub sequence: i64,
    /// Its hash.
    pub hash: String,
    /// When the checkpoint was taken.
    pub at: String,
    /// HMAC over tenant, sequence and hash under the audit chain key (null when no master
    /// key is configured).
    pub signature: Option<String>,
}

/// A checkpoint kept from an earlier `verifyAuditChain` (or the published checkpoint
/// log) to verify the chain against.
#[derive(async_graphql::InputObject)]
pub struct AuditCheckpointInput {
    /// Sequence number.
    pub sequence: i64,
    /// Hash of that record.
    pub hash: String,
    /// The checkpoint's signature.
    pub signature: Option<String>,
}

impl ChainVerification {
    pub(crate) fn new(v: super::Verification, checkpoint: Option<AuditCheckpoint>) -> Self {
        match v.first_broken {
            None => Self {
                intact: true,
                checked: v.checked,
                first_broken_sequence: None,
                first_broken_id: None,
                problem: None,
                checkpoint,
            },
            Some((seq, id, problem)) => Self {
                intact: false,
                checked: v.checked,
                first_broken_sequence: Some(seq),
                first_broken_id: id.map(ID),
                problem: Some(problem),
                checkpoint,
            },
        }
    }
}

/// Audit queries.
#[derive(Default)]
pub struct AuditQuery;

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The records a listing asks for.
#[derive(Default)]
pub struct LogQuery {
    /// `auditLog`'s filter.
    pub filter: AuditFilter,
    /// Records about this resource (type, id), or done by this actor (`user:<id>`).
    pub subject: Option<(String, String, Option<String>)>,
}

/// Lists the caller's tenant's records, newest first (keyset pages on the time-ordered
/// id). `totalCount` is counted only when the client selects it.
pub async fn list(
    ctx: &Context<'_>,
    q: LogQuery,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<Conn<AuditRecord>> {
    let p = principal(ctx)?;
    let a = app(ctx)?;
    let page = Page::from_args(after, None, first, None)?;
    let want_total = ctx.look_ahead().field("totalCount").exists();
    let f = q.filter;
    let tenant = p.tenant_id.to_string();
    let actor_ref = f
        .actor_id
        .as_ref()
        .map(|id| decode_expecting(id, NodeKind::User, "user").map(|u| format!("user:{u}")))
        .transpose()?;
    let subject = q.subject;
    let rows: (Vec<RecordRow>, i64) = crate::db_run_tenant!(&a.db, p.tenant_id, |conn| {
        let mut pseudonyms: Vec<Option<String>> = Vec::new();
        for r in [
            actor_ref.as_ref(),
            subject.as_ref().and_then(|s| s.2.as_ref()),
        ] {
            pseudonyms.push(match r {
                None => None,
                Some(r) => Some(
                    audit_actors::table
                        .filter(audit_actors::tenant_id.eq(&tenant))
                        .filter(audit_actors::actor_ref.eq(r))
                        .select(audit_actors::pseudonym)
                        .first::<String>(conn)
                        .await
                        .optional()?
                        .unwrap_or_else(|| "none".into()),
                ),
            });
        }
        let (pseudonym, subject_actor) = (pseudonyms[0].clone(), pseudonyms[1].clone());
        let build = || {
            let mut q = audit_log::table
                .filter(audit_log::tenant_id.eq(&tenant))
                .into_boxed();
            if let Some(ps) = &pseudonym {
                q = q.filter(audit_log::actor_id.eq(ps.clone()));
            }
            if let Some((rt, rid, _)) = &subject {
                let about = audit_log::resource_type
                    .eq(rt.clone())
                    .and(audit_log::resource_id.eq(rid.clone()));
                q = match &subject_actor {
                    Some(ps) => q.filter(about.or(audit_log::actor_id.eq(ps.clone()))),
                    None => q.filter(about),
                };
            }
            if let Some(pre) = &f.action_prefix {
                q = q.filter(
                    audit_log::action
                        .like(format!("{}%", escape_like(pre)))
                        .escape('\\'),
                );
            }
            if let Some(t) = &f.resource_type {
                q = q.filter(audit_log::resource_type.eq(t.clone()));
            }
            if let Some(r) = &f.resource_id {
                q = q.filter(audit_log::resource_id.eq(crate::graphql::relay::raw_id(r)));
            }
            if let Some(s) = f.severity {
                q = q.filter(audit_log::severity.eq(super::Severity::from(s).as_str()));
            }
            if let Some(o) = f.outcome {
                q = q.filter(audit_log::outcome.eq(super::Outcome::from(o).as_str()));
            }
            if let Some(from) = f.from {
                q = q.filter(audit_log::created_at.ge(db_time(from)));
            }
            if let Some(to) = f.to {
                q = q.filter(audit_log::created_at.le(db_time(to)));
            }
            q
        };
        let total: i64 = if want_total {
            build().count().get_result(conn).await?
        } else {
            0
        };
        let mut q = build().select(RecordRow::as_select());
        if let Some(after) = page.after {
            q = q.filter(audit_log::id.lt(after.to_string()));
        }
        let rows = q
            .order(audit_log::id.desc())
            .limit(page.limit + 1)
            .load(conn)
            .await?;
        (rows, total)
    });
    let (rows, total) = rows;
    Ok(
        page.finish(rows.into_iter().map(AuditRecord).collect(), total, |r| {
            uuid::Uuid::parse_str(&r.0.id).unwrap_or_default()
        }),
    )
}

#[Object]
impl AuditQuery {
    /// The caller's tenant's audit trail, newest first.
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)",
        guard = "Require(Permission::AuditRead)"
    )]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Conn<AuditRecord>> {
        list(
            ctx,
            LogQuery {
                filter: filter.unwrap_or_default(),
                subject: None,
            },
            first,
            after,
        )
        .await
    }

    /// Checks the caller's tenant's chain over records created in `[from, to]` (all when
    /// unset): hashes (keyed when a master key is configured), links, missing records,
    /// the signed retention checkpoint, the chain's end, and that the chain still holds
    /// `checkpoint` (one kept from earlier) and the last checkpoint this server published.
    #[graphql(guard = "Require(Permission::AuditRead)")]
    async fn verify_audit_chain(
        &self,
        ctx: &Context<'_>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        checkpoint: Option<AuditCheckpointInput>,
    ) -> async_graphql::Result<ChainVerification> {
        let p = principal(ctx)?;
        let a = app(ctx)?;
        let tenant = p.tenant_id.to_string();
        let keys = a.db.chain_keys();
        let mut pinned: Vec<super::chain::Checkpoint> =
            a.published.last(&tenant).into_iter().collect();
        if let Some(c) = checkpoint {
            let signed_hash = c.hash.starts_with(super::chain::KEYED);
            match (&c.signature, keys.as_deref()) {
                (Some(sig), Some(k)) => k
                    .check(
                        sig,
                        &super::chain::checkpoint_message(&tenant, c.sequence, &c.hash),
                    )
                    .map_err(|why| {
                        crate::error::AppError::bad_input(
                            "checkpoint",
                            format!("the checkpoint's signature is invalid: {why}"),
                        )
                    })?,
                (None, Some(_)) if signed_hash => {
                    return Err(crate::error::AppError::bad_input(
                        "checkpoint",
                        "pass the checkpoint's signature: a keyed chain's checkpoints are signed",
                    )
                    .into());
                }
                _ => {}
            }
            pinned.push(super::chain::Checkpoint {
                tenant_id: tenant.clone(),
                sequence: c.sequence,
                hash: c.hash,
                at: String::new(),
                signature: c.signature,
            });
        }
        let v = super::verify(&a.db, &tenant, from.map(db_time), to.map(db_time), &pinned).await?;
        let head = v.head.clone().map(|(seq, hash)| {
            let cp = super::chain::Checkpoint::sign(
                keys.as_deref(),
                &tenant,
                seq,
                &hash,
                a.clock.now().to_rfc3339(),
            );
            AuditCheckpoint {
                sequence: cp.sequence,
                hash: cp.hash,
                at: cp.at,
                signature: cp.signature,
            }
        });
        Ok(ChainVerification::new(v, head))
    }

    /// Counts over the caller's tenant's trail in `[from, to]`: totals, per action,
    /// actors, failed sign-ins, denials, critical events, exports. Running a report is
    /// itself recorded (`audit.report_generated`).
    #[graphql(guard = "Require(Permission::AuditExport)")]
    async fn compliance_report(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> async_graphql::Result<report::ComplianceReport> {
        let tenant = principal(ctx)?.tenant_id;
        let row = crate::tenancy::store::find(&app(ctx)?.db, tenant)
            .await?
            .ok_or_else(|| crate::error::AppError::not_found("tenant"))?;
        crate::tenancy::features::require(&row, crate::tenancy::features::Feature::AuditExport)?;
        crate::auth::limits::check_expensive(app(ctx)?, principal(ctx)?).await?;
        let r = crate::audit::report::generate(app(ctx)?, &origin(ctx)?, tenant, from, to).await?;
        Ok(report::ComplianceReport(r))
    }
}

pub use live::{AuditEventFilter, AuditSubscription};

/// The `auditTrail` field of workflows, executions and users: records about the object
/// (and, for a person, records of what they did), newest first, from the caller's chain.
pub async fn trail(
    ctx: &Context<'_>,
    resource_type: &str,
    resource_id: String,
    actor_ref: Option<String>,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<Conn<AuditRecord>> {
    list(
        ctx,
        LogQuery {
            filter: AuditFilter::default(),
            subject: Some((resource_type.to_owned(), resource_id, actor_ref)),
        },
        first,
        after,
    )
    .await
}

/// The `auditEvents` subscription (its own module: the subscription macro's generated
/// code must not see diesel's `RunQueryDsl`).
mod live {
    use async_graphql::{Context, InputObject, Subscription};
    use futures_util::{Stream, StreamExt as _};

    use super::AuditRecord;
    use crate::audit::RecordRow;
    use crate::graphql::app;
    use crate::graphql::enums::{Outcome, Severity};
    use crate::graphql::guards::Require;
    use crate::graphql::principal;
    use crate::rbac::Permission;

    /// `auditEvents` filter (applied to each record as it arrives).
    #[derive(InputObject, Default)]
    pub struct AuditEventFilter {
        /// Actions starting with this (`workflow.`, `auth.`).
        pub action_prefix: Option<String>,
        /// Resource type.
        pub resource_type: Option<String>,
        /// Resource id: its global ID or the stored id.
        pub resource_id: Option<String>,
        /// Only this severity.
        pub severity: Option<Severity>,
        /// Only this outcome.
        pub outcome: Option<Outcome>,
    }

    impl AuditEventFilter {
        pub(super) fn keeps(&self, r: &RecordRow) -> bool {
            self.action_prefix
                .as_ref()
                .is_none_or(|p| r.action.starts_with(p.as_str()))
                && self
                    .resource_type
                    .as_ref()
                    .is_none_or(|t| r.resource_type.as_ref() == Some(t))
                && self.resource_id.as_ref().is_none_or(|t| {
                    r.resource_id.as_deref() == Some(crate::graphql::relay::raw_id(t).as_str())
                })
                && self
                    .severity
                    .is_none_or(|s| r.severity == crate::audit::Severity::from(s).as_str())
                && self
                    .outcome
                    .is_none_or(|o| r.outcome == crate::audit::Outcome::from(o).as_str())
        }
    }

    /// The live audit tail.
    #[derive(Default)]
    pub struct AuditSubscription;

    #[Subscription]
    impl AuditSubscription {
        /// The caller's tenant's audit records as they are committed, oldest first. With
        /// `afterSequence`, records after that position in the chain are sent first (resume
        /// after a reconnect without losing any); without it, the tail starts at the end.
        #[graphql(guard = "Require(Permission::AuditRead)")]
        async fn audit_events(
            &self,
            ctx: &Context<'_>,
            filter: Option<AuditEventFilter>,
            after_sequence: Option<i64>,
        ) -> async_graphql::Result<impl Stream<Item = AuditRecord> + use<>> {
            let p = principal(ctx)?;
            let a = app(ctx)?;
            if after_sequence.is_some_and(|s| s < 0) {
                return Err(crate::error::AppError::bad_input(
                    "afterSequence",
                    "must be 0 or more",
                )
                .into());
            }
            let from = match after_sequence {
                Some(s) => s,
                None => crate::audit::tail::head_seq(&a.db, p.tenant_id).await?,
            };
            let f = filter.unwrap_or_default();
            Ok(crate::audit::tail::follow(
                a.audit_tails.clone(),
                a.db.clone(),
                p.tenant_id,
                from,
                move |r| f.keeps(r),
                a.shutdown.child_token(),
            )
            .map(AuditRecord))
        }
    }
}
