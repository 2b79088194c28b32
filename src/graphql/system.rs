//! System fields: the public `serverInfo` and the `heartbeat` subscription that dashboards
//! use to tell a live connection from a dead one.

use std::time::Duration;

use async_graphql::{Context, Enum, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::IntervalStream;

use crate::db::Backend;
use crate::error::AppError;

/// The storage engine the server runs on.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum StorageBackend {
    /// Embedded SQLite (single node).
    Sqlite,
    /// PostgreSQL (production, scale-out).
    Postgresql,
}

impl From<Backend> for StorageBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Sqlite => Self::Sqlite,
            Backend::Postgres => Self::Postgresql,
        }
    }
}

/// Facts about the running server.
#[derive(SimpleObject, Debug)]
pub struct ServerInfo {
    /// The agentplane version.
    pub version: String,
    /// The storage engine in use.
    pub backend: StorageBackend,
    /// Whole seconds since the process started serving.
    pub uptime_seconds: i64,
}

/// How bad a health check is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum HealthLevel {
    /// Nothing to do.
    Ok,
    /// Look soon (the alert would be a warning).
    Warning,
    /// Act now (the alert would page).
    Critical,
}

impl From<crate::health::Level> for HealthLevel {
    fn from(l: crate::health::Level) -> Self {
        match l {
            crate::health::Level::Ok => Self::Ok,
            crate::health::Level::Warning => Self::Warning,
            crate::health::Level::Critical => Self::Critical,
        }
    }
}

/// One condition the Prometheus alert rules watch, as seen now.
#[derive(SimpleObject, Debug)]
pub struct HealthCheck {
    /// The alert rule it mirrors (`deploy/observability/alerts.yml`), e.g.
    /// `AgentplaneNodeOffline`.
    pub name: String,
    /// Its level now.
    pub status: HealthLevel,
    /// What was seen, in words.
    pub detail: String,
}

/// The platform's health: what the alerts watch, without Prometheus.
#[derive(SimpleObject, Debug)]
pub struct SystemHealth {
    /// The worst level of any check.
    pub status: HealthLevel,
    /// When it was computed.
    pub checked_at: DateTime<Utc>,
    /// Each check, in a fixed order.
    pub checks: Vec<HealthCheck>,
}

/// One heartbeat on a subscription.
#[derive(SimpleObject, Debug, Clone)]
pub struct Heartbeat {
    /// Server time when the beat was sent.
    pub at: DateTime<Utc>,
    /// Whole seconds since the process started serving.
    pub uptime_seconds: i64,
}

/// Public system queries.
#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// Version, storage backend and uptime. Public.
    async fn server_info(&self, ctx: &Context<'_>) -> async_graphql::Result<ServerInfo> {
        let app = super::app(ctx)?;
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: app.db.backend().into(),
            uptime_seconds: i64::try_from(app.started_at.elapsed().as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// The platform's health (platform admins): nodes, GPU memory, queue age, recent
    /// failure rate and LLM spend, audit verification and the database pool, each named
    /// after the alert rule that watches it in Prometheus.
    async fn system_health(&self, ctx: &Context<'_>) -> async_graphql::Result<SystemHealth> {
        crate::cluster::service::require_platform(super::principal(ctx)?)?;
        let r = crate::health::report(super::app(ctx)?).await?;
        Ok(SystemHealth {
            status: r.level.into(),
            checked_at: r.checked_at.and_utc(),
            checks: r
                .checks
                .into_iter()
                .map(|c| HealthCheck {
                    name: c.name.to_owned(),
                    status: c.level.into(),
                    detail: c.detail,
                })
                .collect(),
        })
    }
}

/// System subscriptions.
#[derive(Default)]
pub struct SystemSubscription;

#[Subscription]
impl SystemSubscription {
    /// A beat every `intervalSeconds` (1–300), the first at once; lets a dashboard tell
    /// a live connection from a dead one. Any signed-in caller (websockets authenticate
    /// in `connection_init`, so no subscription is anonymous).
    async fn heartbeat(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] interval_seconds: i32,
    ) -> async_graphql::Result<impl Stream<Item = Heartbeat> + use<>> {
        if !(1..=300).contains(&interval_seconds) {
            return Err(AppError::bad_input(
                "intervalSeconds",
                "`intervalSeconds` must be between 1 and 300",
            )
            .into());
        }
        let started = super::app(ctx)?.started_at;
        let period = Duration::from_secs(u64::try_from(interval_seconds).unwrap_or(10));
        Ok(
            IntervalStream::new(tokio::time::interval(period)).map(move |_| Heartbeat {
                at: Utc::now(),
                uptime_seconds: i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX),
            }),
        )
    }
}
