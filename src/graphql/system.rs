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
