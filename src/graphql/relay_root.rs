//! `node(id:)` and `nodes(ids:)`: fetch any object by global ID, tenant-checked.

use async_graphql::{Context, ID, Interface, Object};

use super::relay::{NodeKind, decode_global_id};
use crate::error::{AppError, AppResult};
use crate::tenancy::UserId;
use crate::tenancy::graphql::Tenant;
use crate::tenancy::graphql::User;

/// An object with a globally unique, opaque ID.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "Opaque global ID."))]
pub enum Node {
    /// An organization.
    Tenant(Tenant),
    /// A user.
    User(User),
    /// A team.
    Team(crate::tenancy::graphql::Team),
    /// A workflow.
    Workflow(crate::workflows::graphql::Workflow),
    /// An execution.
    Execution(crate::executions::graphql::Execution),
    /// A cluster node (platform admins only).
    ClusterNode(crate::cluster::graphql::ClusterNode),
}

/// Relay root fields.
#[derive(Default)]
pub struct RelayQuery;

/// Most IDs accepted by one `nodes` call.
const MAX_NODES: usize = 100;

async fn load(ctx: &Context<'_>, id: &ID) -> AppResult<Node> {
    let (kind, uuid) = decode_global_id(id)?;
    let app = super::app(ctx)?;
    match kind {
        NodeKind::Tenant => crate::tenancy::graphql::visible_tenant(ctx, app, uuid)
            .await
            .map(Node::Tenant),
        NodeKind::User => {
            let p = crate::graphql::principal(ctx)?;
            let user = crate::tenancy::store::find_user(&app.db, p.tenant_id, UserId(uuid))
                .await?
                .ok_or_else(|| AppError::not_found("user"))?;
            if p.user_id() != Some(user.id)
                && !p.permissions.contains(&crate::rbac::Permission::UsersRead)
            {
                return Err(AppError::forbidden(
                    "this requires the users.read permission",
                ));
            }
            Ok(Node::User(User(user)))
        }
        NodeKind::Team => crate::tenancy::graphql::visible_team(ctx, uuid)
            .await
            .map(Node::Team),
        NodeKind::Workflow => crate::workflows::graphql::visible_workflow(ctx, uuid)
            .await
            .map(Node::Workflow),
        NodeKind::Execution => crate::executions::graphql::visible_execution(ctx, uuid)
            .await
            .map(Node::Execution),
        NodeKind::ClusterNode => crate::cluster::graphql::visible_node(ctx, uuid)
            .await
            .map(Node::ClusterNode),
        // Reachable through their own fields, not through `node`.
        NodeKind::Role
        | NodeKind::ApiKey
        | NodeKind::Session
        | NodeKind::Schedule
        | NodeKind::GpuAllocation
        | NodeKind::TrustedDocument => Err(AppError::not_found("object")),
    }
}

#[Object]
impl RelayQuery {
    /// Fetches any object by its global ID. Objects the caller may not see are `NOT_FOUND`,
    /// exactly like missing ones.
    #[graphql(guard = "crate::graphql::guards::SignedIn")]
    async fn node(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Node> {
        Ok(load(ctx, &id).await?)
    }

    /// Fetches several objects by global ID, in order; a missing or hidden one is `null`.
    #[graphql(guard = "crate::graphql::guards::SignedIn")]
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        ids: Vec<ID>,
    ) -> async_graphql::Result<Vec<Option<Node>>> {
        if ids.len() > MAX_NODES {
            return Err(
                AppError::bad_input("ids", format!("at most {MAX_NODES} ids per call")).into(),
            );
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            match load(ctx, id).await {
                Ok(n) => out.push(Some(n)),
                Err(e) if e.code() == crate::error::ErrorCode::NotFound => out.push(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}
