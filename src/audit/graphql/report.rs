//! `complianceReport` over GraphQL: the report object and its counts.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::ChainVerification;
use crate::audit::report::Report;
use crate::db::ids::utc;
use crate::graphql::app;
use crate::graphql::relay::{NodeKind, to_global_id};

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

/// A compliance report over a period of the caller's tenant.
pub struct ComplianceReport(pub Report);

#[Object]
impl ComplianceReport {
    /// The report's id (the resource of its own `audit.report_generated` record).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Period start (inclusive).
    async fn from(&self) -> DateTime<Utc> {
        utc(self.0.from)
    }
    /// Period end (inclusive).
    async fn to(&self) -> DateTime<Utc> {
        utc(self.0.to)
    }
    /// When the report was computed.
    async fn generated_at(&self) -> DateTime<Utc> {
        utc(self.0.generated_at)
    }
    /// Records in the period.
    async fn total_events(&self) -> i64 {
        self.0.counts.by_action.iter().map(|a| a.count).sum()
    }
    /// Records per action, most frequent first.
    async fn by_action(&self) -> Vec<ActionCount> {
        self.0
            .counts
            .by_action
            .iter()
            .map(|a| ActionCount {
                action: a.action.clone(),
                count: a.count,
            })
            .collect()
    }
    /// Distinct users and API keys that acted.
    async fn unique_actors(&self) -> i64 {
        self.0.counts.unique_actors
    }
    /// Most active actors, most active first (at most 10).
    async fn top_actors(&self) -> Vec<ActorCount> {
        self.0
            .counts
            .top_actors
            .iter()
            .map(|a| ActorCount {
                actor_id: a.actor_id.clone(),
                actor_type: a.actor_type.clone(),
                user_id: a.user_id.map(|u| to_global_id(NodeKind::User, u)),
                count: a.count,
            })
            .collect()
    }
    /// Failed sign-ins (`auth.login_failed`).
    async fn failed_logins(&self) -> i64 {
        self.0.counts.of("auth.login_failed")
    }
    /// Refused requests (`access.denied`).
    async fn access_denials(&self) -> i64 {
        self.0.counts.of("access.denied")
    }
    /// Refresh-token reuse alarms (`auth.refresh_reuse_detected`).
    async fn token_reuse_alarms(&self) -> i64 {
        self.0.counts.of("auth.refresh_reuse_detected")
    }
    /// CRITICAL records.
    async fn critical_events(&self) -> i64 {
        self.0.counts.critical
    }
    /// Records with outcome FAILURE.
    async fn failed_events(&self) -> i64 {
        self.0.counts.failures
    }
    /// Audit exports performed (`audit.exported`).
    async fn exports_performed(&self) -> i64 {
        self.0.counts.of("audit.exported")
    }
    /// Compliance reports run before this one in the period (`audit.report_generated`).
    async fn reports_generated(&self) -> i64 {
        self.0.counts.of("audit.report_generated")
    }
    /// Chain verification over the period (reads every record in it; select only when
    /// needed).
    async fn chain(&self, ctx: &Context<'_>) -> async_graphql::Result<ChainVerification> {
        let a = app(ctx)?;
        let v = crate::audit::verify(
            &a.db,
            &self.0.tenant.to_string(),
            Some(self.0.from),
            Some(self.0.to),
            &a.published
                .last(&self.0.tenant.to_string())
                .into_iter()
                .collect::<Vec<_>>(),
        )
        .await?;
        Ok(ChainVerification::new(v, None))
    }
}
