//! `complianceReport(from, to)`: what happened in a tenant over a period, counted from
//! the trail with a handful of grouped queries (index `(tenant_id, created_at)`).

use std::collections::HashMap;

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::graphql::ChainVerification;
use crate::db::DbPool;
use crate::db::ids::{db_time, utc};
use crate::db::schema::{audit_actors, audit_log};
use crate::error::AppResult;
use crate::graphql::app;
use crate::graphql::relay::{NodeKind, to_global_id};
use crate::tenancy::TenantId;

/// How many actors `topActors` lists.
pub const TOP_ACTORS: usize = 10;

/// Events of one action.
#[derive(SimpleObject, Debug, Clone)]
pub struct ActionCount {
    /// The action (`workflow.created`, …).
    pub action: String,
    /// Records of it in the period.
    pub count: i64,
}

/// Events of one actor.
#[derive(SimpleObject, Debug, Clone)]
pub struct ActorCount {
    /// The actor's pseudonym (as in `AuditRecord.actorId`).
    pub actor_id: String,
    /// USER or API_KEY.
    pub actor_type: String,
    /// The user behind the pseudonym; null for API keys and erased people.
    pub user_id: Option<ID>,
    /// Records by this actor in the period.
    pub count: i64,
}

/// The counts behind a report.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Records per action, most frequent first.
    pub by_action: Vec<ActionCount>,
    /// Distinct actors (users and API keys).
    pub unique_actors: i64,
    /// Most active actors, most active first.
    pub top_actors: Vec<ActorCount>,
    /// CRITICAL records.
    pub critical: i64,
    /// FAILURE records.
    pub failures: i64,
}

impl Counts {
    fn of(&self, action: &str) -> i64 {
        self.by_action
            .iter()
            .find(|a| a.action == action)
            .map_or(0, |a| a.count)
    }
}

/// Counts `tenant`'s records created in `[from, to]`.
pub async fn compute(
    db: &DbPool,
    tenant: TenantId,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> AppResult<Counts> {
    let t = tenant.to_string();
    type Gathered = (
        Vec<(String, i64)>,
        Vec<(Option<String>, String, i64)>,
        i64,
        i64,
        Vec<(String, Option<String>)>,
    );
    let (by_action, actors, critical, failures, refs): Gathered =
        crate::db_run_tenant!(db, tenant, |conn| {
            let in_range = audit_log::tenant_id
                .eq(&t)
                .and(audit_log::created_at.ge(from))
                .and(audit_log::created_at.le(to));
            let by_action: Vec<(String, i64)> = audit_log::table
                .filter(in_range)
                .group_by(audit_log::action)
                .select((audit_log::action, diesel::dsl::count_star()))
                .load(conn)
                .await?;
            let actors: Vec<(Option<String>, String, i64)> = audit_log::table
                .filter(in_range)
                .filter(audit_log::actor_id.is_not_null())
                .group_by((audit_log::actor_id, audit_log::actor_type))
                .select((
                    audit_log::actor_id,
                    audit_log::actor_type,
                    diesel::dsl::count_star(),
                ))
                .load(conn)
                .await?;
            let critical: i64 = audit_log::table
                .filter(in_range)
                .filter(audit_log::severity.eq("CRITICAL"))
                .count()
                .get_result(conn)
                .await?;
            let failures: i64 = audit_log::table
                .filter(in_range)
                .filter(audit_log::outcome.eq("FAILURE"))
                .count()
                .get_result(conn)
                .await?;
            let mut top: Vec<&(Option<String>, String, i64)> = actors.iter().collect();
            top.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            let top_ids: Vec<String> = top
                .iter()
                .take(TOP_ACTORS)
                .filter_map(|a| a.0.clone())
                .collect();
            let refs: Vec<(String, Option<String>)> = audit_actors::table
                .filter(audit_actors::tenant_id.eq(&t))
                .filter(audit_actors::pseudonym.eq_any(&top_ids))
                .select((audit_actors::pseudonym, audit_actors::actor_ref))
                .load(conn)
                .await?;
            (by_action, actors, critical, failures, refs)
        });
    let refs: HashMap<String, Option<String>> = refs.into_iter().collect();
    let mut by_action: Vec<ActionCount> = by_action
        .into_iter()
        .map(|(action, count)| ActionCount { action, count })
        .collect();
    by_action.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.action.cmp(&b.action)));
    let unique_actors = i64::try_from(actors.len()).unwrap_or(i64::MAX);
    let mut actors = actors;
    actors.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let top_actors = actors
        .into_iter()
        .take(TOP_ACTORS)
        .map(|(id, actor_type, count)| {
            let id = id.unwrap_or_default();
            let user_id = refs
                .get(&id)
                .and_then(|r| r.as_deref())
                .and_then(|r| r.strip_prefix("user:"))
                .and_then(|u| uuid::Uuid::parse_str(u).ok())
                .map(|u| to_global_id(NodeKind::User, u));
            ActorCount {
                actor_id: id,
                actor_type,
                user_id,
                count,
            }
        })
        .collect();
    Ok(Counts {
        by_action,
        unique_actors,
        top_actors,
        critical,
        failures,
    })
}

/// A compliance report over a period of the caller's tenant.
pub struct ComplianceReport {
    /// The report's id (the `resourceId` of its `audit.report_generated` record).
    pub id: uuid::Uuid,
    /// The tenant.
    pub tenant: TenantId,
    /// Period start.
    pub from: NaiveDateTime,
    /// Period end.
    pub to: NaiveDateTime,
    /// When it was computed.
    pub generated_at: NaiveDateTime,
    /// What was counted.
    pub counts: Counts,
}

#[Object]
impl ComplianceReport {
    /// The report's id (the resource of its own `audit.report_generated` record).
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Period start (inclusive).
    async fn from(&self) -> DateTime<Utc> {
        utc(self.from)
    }
    /// Period end (inclusive).
    async fn to(&self) -> DateTime<Utc> {
        utc(self.to)
    }
    /// When the report was computed.
    async fn generated_at(&self) -> DateTime<Utc> {
        utc(self.generated_at)
    }
    /// Records in the period.
    async fn total_events(&self) -> i64 {
        self.counts.by_action.iter().map(|a| a.count).sum()
    }
    /// Records per action, most frequent first.
    async fn by_action(&self) -> &[ActionCount] {
        &self.counts.by_action
    }
    /// Distinct users and API keys that acted.
    async fn unique_actors(&self) -> i64 {
        self.counts.unique_actors
    }
    /// Most active actors, most active first (at most 10).
    async fn top_actors(&self) -> &[ActorCount] {
        &self.counts.top_actors
    }
    /// Failed sign-ins (`auth.login_failed`).
    async fn failed_logins(&self) -> i64 {
        self.counts.of("auth.login_failed")
    }
    /// Refused requests (`access.denied`).
    async fn access_denials(&self) -> i64 {
        self.counts.of("access.denied")
    }
    /// Refresh-token reuse alarms (`auth.refresh_reuse_detected`).
    async fn token_reuse_alarms(&self) -> i64 {
        self.counts.of("auth.refresh_reuse_detected")
    }
    /// CRITICAL records.
    async fn critical_events(&self) -> i64 {
        self.counts.critical
    }
    /// Records with outcome FAILURE.
    async fn failed_events(&self) -> i64 {
        self.counts.failures
    }
    /// Audit exports performed (`audit.exported`).
    async fn exports_performed(&self) -> i64 {
        self.counts.of("audit.exported")
    }
    /// Compliance reports run before this one in the period (`audit.report_generated`).
    async fn reports_generated(&self) -> i64 {
        self.counts.of("audit.report_generated")
    }
    /// Chain verification over the period (reads every record in it; select only when
    /// needed).
    async fn chain(&self, ctx: &Context<'_>) -> async_graphql::Result<ChainVerification> {
        let a = app(ctx)?;
        let v = super::verify(
            &a.db,
            &self.tenant.to_string(),
            Some(self.from),
            Some(self.to),
            &a.published
                .last(&self.tenant.to_string())
                .into_iter()
                .collect::<Vec<_>>(),
        )
        .await?;
        Ok(super::graphql::ChainVerification::new(v, None))
    }
}

/// Validates the period, counts, and records `audit.report_generated`.
pub async fn run(
    ctx: &Context<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> async_graphql::Result<ComplianceReport> {
    let p = crate::auth::principal(ctx)?;
    let a = app(ctx)?;
    if from > to {
        return Err(crate::error::AppError::bad_input("to", "must not be before `from`").into());
    }
    let (from, to) = (db_time(from), db_time(to));
    let counts = compute(&a.db, p.tenant_id, from, to).await?;
    let now = db_time(a.clock.now());
    let id = uuid::Uuid::now_v7();
    let entry = super::Entry::change(
        &crate::graphql::origin(ctx)?,
        "audit.report_generated",
        "compliance_report",
        id,
        Some(serde_json::json!({
            "from": utc(from).to_rfc3339(),
            "to": utc(to).to_rfc3339(),
        })),
        now,
    );
    super::record(&a.db, &entry).await?;
    Ok(ComplianceReport {
        id,
        tenant: p.tenant_id,
        from,
        to,
        generated_at: now,
        counts,
    })
}
