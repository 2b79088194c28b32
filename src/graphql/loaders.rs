//! Per-request DataLoaders, scoped to the caller's tenant, so nested reads issue one
//! batched statement per kind of object whatever the page size.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_graphql::Context;
use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};

use crate::auth::Principal;
use crate::clock::Clock;
use crate::db::DbPool;
use crate::error::{AppError, AppResult};
use crate::executions::model::{ExecutionHead, ExecutionId, ExecutionRow, StepRunRow};
use crate::executions::schedules::ScheduleRow;
use crate::tenancy::teams::{TeamId, TeamRow};
use crate::tenancy::{TenantId, UserId, UserRow};
use crate::workflows::model::{WorkflowId, WorkflowRow, WorkflowVersionRow};

/// A loader failure, shared by every waiting key: its code and client-safe message (an
/// outage stays `UNAVAILABLE` with its retry hint, not `INTERNAL`).
#[derive(Clone, Debug)]
pub struct LoadError {
    code: crate::error::ErrorCode,
    message: Arc<str>,
}

fn failed(e: AppError) -> LoadError {
    let code = e.code();
    // Internal causes are logged once here; the detail stays in the log.
    let gql: async_graphql::Error = e.into();
    LoadError {
        code,
        message: Arc::from(gql.message.as_str()),
    }
}

/// What a request's loaders are built from: its database, its caller's tenant and the
/// clock.
#[derive(Clone)]
struct Scope {
    db: DbPool,
    tenant: TenantId,
    clock: Arc<dyn Clock>,
}

/// A loader built from its request's [`Scope`].
trait FromScope {
    fn from_scope(scope: &Scope) -> Self;
}

/// Loaders that need only the database and the tenant.
macro_rules! scoped {
    ($($name:ident),* $(,)?) => {$(
        impl FromScope for $name {
            fn from_scope(scope: &Scope) -> Self {
                Self {
                    db: scope.db.clone(),
                    tenant: scope.tenant,
                }
            }
        }
    )*};
}
scoped!(UserByIdLoader, TeamByIdLoader, VersionsByWorkflowLoader);

/// Users by id.
pub struct UserByIdLoader {
    db: DbPool,
    tenant: TenantId,
}

impl Loader<UserId> for UserByIdLoader {
    type Value = UserRow;
    type Error = LoadError;

    async fn load(&self, keys: &[UserId]) -> Result<HashMap<UserId, UserRow>, LoadError> {
        let rows = crate::tenancy::store::users_by_ids(&self.db, self.tenant, keys)
            .await
            .map_err(failed)?;
        Ok(rows.into_iter().map(|u| (u.id, u)).collect())
    }
}

/// Teams by id.
pub struct TeamByIdLoader {
    db: DbPool,
    tenant: TenantId,
}

impl Loader<TeamId> for TeamByIdLoader {
    type Value = TeamRow;
    type Error = LoadError;

    async fn load(&self, keys: &[TeamId]) -> Result<HashMap<TeamId, TeamRow>, LoadError> {
        let rows = crate::tenancy::teams::teams_by_ids(&self.db, self.tenant, keys)
            .await
            .map_err(failed)?;
        Ok(rows.into_iter().map(|t| (t.id, t)).collect())
    }
}

/// Published versions by workflow, newest first.
pub struct VersionsByWorkflowLoader {
    db: DbPool,
    tenant: TenantId,
}

impl Loader<WorkflowId> for VersionsByWorkflowLoader {
    type Value = Vec<WorkflowVersionRow>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[WorkflowId],
    ) -> Result<HashMap<WorkflowId, Self::Value>, LoadError> {
        let tenant = self.tenant;
        let rows = self
            .db
            .read(tenant, async |conn| {
                crate::workflows::store::versions_by_workflows(conn, tenant, keys).await
            })
            .await
            .map_err(failed)?;
        Ok(group(keys, rows, |r| r.workflow_id))
    }
}

/// Declares a loader that groups rows returned by one store call under a key.
macro_rules! grouped_loader {
    ($(#[$m:meta])* $name:ident, $key:ty => $val:ty, |$db:ident, $tenant:ident, $keys:ident| $fetch:expr, |$row:ident| $key_of:expr) => {
        $(#[$m])*
        pub struct $name {
            db: DbPool,
            tenant: TenantId,
        }

        scoped!($name);

        impl Loader<$key> for $name {
            type Value = Vec<$val>;
            type Error = LoadError;

            async fn load(&self, $keys: &[$key]) -> Result<HashMap<$key, Self::Value>, LoadError> {
                let ($db, $tenant) = (&self.db, self.tenant);
                let rows: Vec<$val> = $fetch.await.map_err(failed)?;
                Ok(group($keys, rows, |$row| $key_of))
            }
        }
    };
}

/// Rows grouped under their key; every asked key is present (empty when it has none).
fn group<K, V>(keys: &[K], rows: Vec<V>, key_of: impl Fn(&V) -> K) -> HashMap<K, Vec<V>>
where
    K: Copy + Eq + std::hash::Hash,
{
    let mut out: HashMap<K, Vec<V>> = keys.iter().map(|k| (*k, Vec::new())).collect();
    for r in rows {
        out.entry(key_of(&r)).or_default().push(r);
    }
    out
}

/// Declares a loader of single rows by id.
macro_rules! by_id_loader {
    ($(#[$m:meta])* $name:ident, $key:ty => $val:ty, |$db:ident, $tenant:ident, $keys:ident| $fetch:expr) => {
        $(#[$m])*
        pub struct $name {
            db: DbPool,
            tenant: TenantId,
        }

        scoped!($name);

        impl Loader<$key> for $name {
            type Value = $val;
            type Error = LoadError;

            async fn load(&self, $keys: &[$key]) -> Result<HashMap<$key, $val>, LoadError> {
                let ($db, $tenant) = (&self.db, self.tenant);
                let rows: Vec<$val> = $fetch.await.map_err(failed)?;
                Ok(rows.into_iter().map(|r| (r.id, r)).collect())
            }
        }
    };
}

by_id_loader!(
    /// Workflows by id.
    WorkflowByIdLoader, WorkflowId => WorkflowRow,
    |db, tenant, keys| db.read(tenant, async |conn| {
        crate::workflows::store::by_ids(conn, tenant, keys).await
    })
);
by_id_loader!(
    /// Executions by id.
    ExecutionByIdLoader, ExecutionId => ExecutionRow,
    |db, tenant, keys| crate::executions::store::by_ids(db, tenant, keys)
);
grouped_loader!(
    /// Step records by execution, in definition order.
    StepsByExecutionLoader, ExecutionId => StepRunRow,
    |db, tenant, keys| crate::executions::store::steps_by_executions(db, tenant, keys),
    |r| r.execution_id
);
/// Defines a loader of the newest `n` executions of each workflow, newest first, keyed
/// by (workflow, `n`): a page asks for exactly the rows it shows, whatever the history,
/// in one statement per distinct `n` (one, unless aliases ask for different counts).
macro_rules! recent_loader {
    ($(#[$doc:meta])* $name:ident => $value:ty, $read:path, $wrap:expr) => {
        $(#[$doc])*
        pub struct $name {
            db: DbPool,
            tenant: TenantId,
        }

        scoped!($name);

        impl Loader<(WorkflowId, i64)> for $name {
            type Value = Vec<$value>;
            type Error = LoadError;

            async fn load(
                &self,
                keys: &[(WorkflowId, i64)],
            ) -> Result<HashMap<(WorkflowId, i64), Self::Value>, LoadError> {
                let mut by_n: std::collections::BTreeMap<i64, Vec<WorkflowId>> =
                    Default::default();
                for (id, n) in keys {
                    by_n.entry(*n).or_default().push(*id);
                }
                let mut out = HashMap::with_capacity(keys.len());
                for (n, ids) in by_n {
                    let rows = $read(&self.db, self.tenant, &ids, n)
                        .await
                        .map_err(failed)?
                        .into_iter()
                        .map($wrap)
                        .collect();
                    for (id, rows) in group(&ids, rows, |r| r.workflow_id) {
                        out.insert((id, n), rows);
                    }
                }
                Ok(out)
            }
        }
    };
}
recent_loader!(
    /// Whole rows of the newest executions by workflow.
    RecentExecutionsLoader => Arc<ExecutionRow>,
    crate::executions::store::recent_by_workflows,
    Arc::new
);
recent_loader!(
    /// Heads (what a list shows) of the newest executions by workflow.
    RecentHeadsLoader => ExecutionHead,
    crate::executions::store::recent_heads_by_workflows,
    std::convert::identity
);
grouped_loader!(
    /// Schedules by workflow.
    SchedulesByWorkflowLoader, WorkflowId => ScheduleRow,
    |db, tenant, keys| crate::executions::schedules::by_workflows(db, tenant, keys),
    |r| r.workflow_id
);
/// Executions of the last 30 days by workflow (for stats), "now" read from the app's
/// clock at each load (a websocket's loaders live as long as the connection).
pub struct StatsRowsLoader {
    db: DbPool,
    tenant: TenantId,
    clock: Arc<dyn Clock>,
}

impl FromScope for StatsRowsLoader {
    fn from_scope(scope: &Scope) -> Self {
        Self {
            db: scope.db.clone(),
            tenant: scope.tenant,
            clock: scope.clock.clone(),
        }
    }
}

impl Loader<WorkflowId> for StatsRowsLoader {
    type Value = Vec<ExecutionRow>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[WorkflowId],
    ) -> Result<HashMap<WorkflowId, Self::Value>, LoadError> {
        let since = crate::db::ids::db_time(self.clock.now() - chrono::Duration::days(STATS_DAYS));
        let rows = crate::executions::store::finished_since(&self.db, self.tenant, keys, since)
            .await
            .map_err(failed)?;
        Ok(group(keys, rows, |r| r.workflow_id))
    }
}

/// How many days of executions workflow statistics cover.
pub const STATS_DAYS: i64 = 30;

/// Most executions `recentExecutions` returns per workflow.
pub const RECENT_WINDOW: i64 = 20;

/// What `recentExecutions` returns when `first` is not given.
pub const RECENT_DEFAULT: i64 = 10;

/// Declares [`Loaders`]: one lazily built loader per field, and its accessor.
macro_rules! loaders {
    ($($(#[$doc:meta])* $name:ident: $loader:ty,)*) => {
        /// The loaders of one request (or websocket connection). They cache, so a list
        /// resolver can prefetch what its rows will ask for (see `prefetch` in each
        /// domain) and the nested resolvers' `load_one` calls are answered without further
        /// statements. Each is built the first time it is asked for: a subscription keeps
        /// its request's loaders as long as it runs, and most subscriptions use one or
        /// two of them, if any.
        pub struct Loaders {
            scope: Scope,
            $($name: OnceLock<Box<DataLoader<$loader, HashMapCache>>>,)*
        }

        impl Loaders {
            fn with_scope(scope: Scope) -> Self {
                Self {
                    scope,
                    $($name: OnceLock::new(),)*
                }
            }

            $(
                $(#[$doc])*
                pub fn $name(&self) -> &DataLoader<$loader, HashMapCache> {
                    self.$name
                        .get_or_init(|| Box::new(cached(<$loader>::from_scope(&self.scope))))
                }
            )*
        }
    };
}

loaders! {
    /// Users by id.
    users: UserByIdLoader,
    /// Teams by id.
    teams: TeamByIdLoader,
    /// Versions by workflow.
    versions: VersionsByWorkflowLoader,
    /// Workflows by id.
    workflows: WorkflowByIdLoader,
    /// Executions by id.
    executions: ExecutionByIdLoader,
    /// Steps by execution.
    steps: StepsByExecutionLoader,
    /// Recent executions by workflow.
    recent: RecentExecutionsLoader,
    /// Recent executions' heads by workflow (a list that shows no more).
    recent_heads: RecentHeadsLoader,
    /// Schedules by workflow.
    schedules: SchedulesByWorkflowLoader,
    /// Stats rows by workflow.
    stats: StatsRowsLoader,
}

impl Loaders {
    /// Forgets what was read of executions and their steps. A subscription resolves
    /// every event with the loaders of its one request, so an event that reads the
    /// execution "as it is now" must not be answered from an earlier event's read.
    pub fn forget_executions(&self) {
        if let Some(executions) = self.executions.get() {
            executions.clear::<ExecutionId>();
        }
        if let Some(steps) = self.steps.get() {
            steps.clear::<ExecutionId>();
        }
    }

    /// Loaders scoped to the principal's tenant (none is built yet).
    pub fn for_principal(db: &DbPool, clock: &Arc<dyn Clock>, p: &Principal) -> Self {
        Self::with_scope(Scope {
            db: db.clone(),
            tenant: p.tenant_id,
            clock: clock.clone(),
        })
    }

    /// The current request's loaders.
    pub fn of<'a>(ctx: &Context<'a>) -> AppResult<&'a Self> {
        ctx.data_opt::<Self>()
            .ok_or_else(|| AppError::unauthenticated("sign in to use this field"))
    }
}

fn cached<L: Send + Sync + 'static>(loader: L) -> DataLoader<L, HashMapCache> {
    DataLoader::with_cache(loader, tokio::spawn, HashMapCache::default())
}

/// Converts a loader failure into the API error, with the code it failed with.
pub fn load_error(e: LoadError) -> AppError {
    use crate::error::ErrorCode;
    match e.code {
        ErrorCode::Internal => {
            AppError::internal(anyhow::anyhow!("batched load failed: {}", e.message))
        }
        ErrorCode::Unavailable => AppError::new(ErrorCode::Unavailable, e.message.to_string())
            .with_detail("retryAfterSeconds", crate::error::RETRY_AFTER_SECONDS),
        code => AppError::new(code, e.message.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn load_errors_keep_their_code() {
        let outage = load_error(failed(AppError::unavailable(
            "the database is unreachable",
            anyhow::anyhow!("connection refused"),
        )));
        assert_eq!(outage.code(), ErrorCode::Unavailable);
        assert!(outage.message().contains("unreachable"));
        let gone = load_error(failed(AppError::not_found("user")));
        assert_eq!(gone.code(), ErrorCode::NotFound);
    }
}
