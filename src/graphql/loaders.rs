//! Per-request DataLoaders, scoped to the caller's tenant, so nested reads issue one
//! batched statement per kind of object whatever the page size.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Context;
use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};

use crate::auth::Principal;
use crate::db::DbPool;
use crate::error::{AppError, AppResult};
use crate::tenancy::teams::{TeamId, TeamRow};
use crate::tenancy::{TenantId, UserId, UserRow};
use crate::workflows::model::{WorkflowId, WorkflowVersionRow};

/// A loader failure, shared by every waiting key.
#[derive(Clone, Debug)]
pub struct LoadError(Arc<String>);

fn failed(e: AppError) -> LoadError {
    // Logged once at the boundary; the detail stays in the log.
    let gql: async_graphql::Error = e.into();
    LoadError(Arc::new(gql.message))
}

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
        let rows = crate::workflows::store::versions_by_workflows(&self.db, self.tenant, keys)
            .await
            .map_err(failed)?;
        let mut out: HashMap<WorkflowId, Self::Value> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for r in rows {
            out.entry(r.workflow_id).or_default().push(r);
        }
        Ok(out)
    }
}

/// The loaders of one request (or websocket connection). They cache, so a list resolver
/// can prefetch what its rows will ask for (see `prefetch` in each domain) and the nested
/// resolvers' `load_one` calls are answered without further statements.
pub struct Loaders {
    /// Users by id.
    pub users: DataLoader<UserByIdLoader, HashMapCache>,
    /// Teams by id.
    pub teams: DataLoader<TeamByIdLoader, HashMapCache>,
    /// Versions by workflow.
    pub versions: DataLoader<VersionsByWorkflowLoader, HashMapCache>,
}

impl Loaders {
    /// Loaders scoped to the principal's tenant.
    pub fn for_principal(db: &DbPool, p: &Principal) -> Self {
        let tenant = p.tenant_id;
        Self {
            users: DataLoader::with_cache(
                UserByIdLoader {
                    db: db.clone(),
                    tenant,
                },
                tokio::spawn,
                HashMapCache::default(),
            ),
            teams: DataLoader::with_cache(
                TeamByIdLoader {
                    db: db.clone(),
                    tenant,
                },
                tokio::spawn,
                HashMapCache::default(),
            ),
            versions: DataLoader::with_cache(
                VersionsByWorkflowLoader {
                    db: db.clone(),
                    tenant,
                },
                tokio::spawn,
                HashMapCache::default(),
            ),
        }
    }

    /// The current request's loaders.
    pub fn of<'a>(ctx: &Context<'a>) -> AppResult<&'a Self> {
        ctx.data_opt::<Self>()
            .ok_or_else(|| AppError::unauthenticated("sign in to use this field"))
    }
}

/// Converts a loader failure into the API error.
pub fn load_error(e: LoadError) -> AppError {
    AppError::internal(anyhow::anyhow!("batched load failed: {}", e.0))
}
