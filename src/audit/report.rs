//! `complianceReport(from, to)`: what happened in a tenant over a period, counted from
//! the trail with a handful of grouped queries (index `(tenant_id, created_at)`).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::app::App;
use crate::audit::Origin;
use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::ids::{db_time, utc};
use crate::db::schema::{audit_actors, audit_log};
use crate::error::AppError;
use crate::error::AppResult;

/// How many actors `topActors` lists.
pub const TOP_ACTORS: usize = 10;

/// Events of one action.
#[derive(Debug, Clone)]
pub struct ActionCount {
    /// The action (`workflow.created`, …).
    pub action: String,
    /// Records of it in the period.
    pub count: i64,
}

/// Events of one actor.
#[derive(Debug, Clone)]
pub struct ActorCount {
    /// The actor's pseudonym (as in `AuditRecord.actorId`).
    pub actor_id: String,
    /// USER or API_KEY.
    pub actor_type: String,
    /// The user behind the pseudonym; none for API keys and erased people.
    pub user_id: Option<uuid::Uuid>,
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
    /// Records of one action.
    pub fn of(&self, action: &str) -> i64 {
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
                .filter(audit_log::severity.eq(super::Severity::Critical.as_str()))
                .count()
                .get_result(conn)
                .await?;
            let failures: i64 = audit_log::table
                .filter(in_range)
                .filter(audit_log::outcome.eq(super::Outcome::Failure.as_str()))
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
                .and_then(|u| uuid::Uuid::parse_str(u).ok());
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

/// A compliance report over a period of one tenant.
#[derive(Debug, Clone)]
pub struct Report {
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

/// Validates the period, counts `tenant`'s trail in it, and records
/// `audit.report_generated` (running a report is itself an audited event).
pub async fn generate(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> AppResult<Report> {
    if from > to {
        return Err(AppError::bad_input("to", "must not be before `from`"));
    }
    let (from, to) = (db_time(from), db_time(to));
    let counts = compute(&app.db, tenant, from, to).await?;
    let now = db_time(app.clock.now());
    let id = uuid::Uuid::now_v7();
    let entry = super::Entry::change(
        origin,
        "audit.report_generated",
        "compliance_report",
        id,
        Some(serde_json::json!({
            "from": utc(from).to_rfc3339(),
            "to": utc(to).to_rfc3339(),
        })),
        now,
    );
    super::record(&app.db, &entry).await?;
    Ok(Report {
        id,
        tenant,
        from,
        to,
        generated_at: now,
        counts,
    })
}
