//! The `cluster` query and its node listing.

use super::*;

/// Node filter.
#[derive(InputObject, Default)]
pub struct NodeFilter {
    /// Only this status.
    pub status: Option<NodeStatus>,
    /// Only this kind.
    pub kind: Option<ClusterNodeKind>,
    /// Only nodes with at least one GPU.
    pub has_gpus: Option<bool>,
}

/// The cluster.
pub struct Cluster;

#[Object]
impl Cluster {
    /// Every node (platform admins), ordered by id.
    #[graphql(complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)")]
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        filter: Option<NodeFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Conn<ClusterNode>> {
        let p = principal(ctx)?;
        require_platform(p)?;
        let page = Page::from_args(after, None, first, None)?;
        let a = app(ctx)?;
        let f = filter.unwrap_or_default();
        let all: Vec<ClusterNode> = store::all_nodes(&a.db)
            .await?
            .into_iter()
            .map(|r| ClusterNode::new(r, a))
            .filter(|n| f.status.is_none_or(|s| n.status == s.into()))
            .filter(|n| {
                f.kind
                    .is_none_or(|k| n.row.kind == crate::cluster::model::NodeKind::from(k).as_str())
            })
            .filter(|n| f.has_gpus.is_none_or(|g| g != n.row.gpus().is_empty()))
            .collect();
        let total = all.len() as i64;
        let rows: Vec<ClusterNode> = all
            .into_iter()
            .filter(|n| page.after.is_none_or(|after| uuid_of(&n.row.id) > after))
            .take(usize::try_from(page.limit + 1).unwrap_or(usize::MAX))
            .collect();
        Ok(page.finish(rows, total, |n| uuid_of(&n.row.id)))
    }

    /// One node (platform admins).
    async fn node(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ClusterNode> {
        let uuid = decode_expecting(&id, RelayKind::ClusterNode, "node")?;
        Ok(visible_node(ctx, uuid).await?)
    }

    /// Capacity and queue at a glance.
    async fn summary(&self, ctx: &Context<'_>) -> async_graphql::Result<ClusterSummary> {
        let p = principal(ctx)?;
        Ok(summary(app(ctx)?, scope_of(p)).await?)
    }

    /// GPU allocations: the caller's tenant's (every one, for platform admins).
    async fn allocations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<GpuAllocation>> {
        let p = principal(ctx)?;
        let a = app(ctx)?;
        let rows = if require_platform(p).is_ok() {
            store::all_reservations(&a.db).await?
        } else {
            store::tenant_reservations(&a.db, p.tenant_id).await?
        };
        let names: HashMap<String, String> = store::all_nodes(&a.db)
            .await?
            .into_iter()
            .map(|n| (n.id, n.name))
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name = names.get(&r.node_id).cloned();
                GpuAllocation::new(r, name)
            })
            .collect())
    }

    /// How many worker nodes the platform should run (platform admins).
    async fn scaling_recommendation(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ScalingRecommendation> {
        require_platform(principal(ctx)?)?;
        Ok(recommend(app(ctx)?).await?)
    }
}

pub(super) fn scope_of(p: &Principal) -> Option<crate::tenancy::TenantId> {
    if require_platform(p).is_ok() {
        None
    } else {
        Some(p.tenant_id)
    }
}

/// Cluster queries.
#[derive(Default)]
pub struct ClusterQuery;

#[Object]
impl ClusterQuery {
    /// The cluster: nodes and scaling for platform admins; the summary and own GPU
    /// allocations for tenant users.
    #[graphql(guard = "Require(Permission::ClusterRead)")]
    async fn cluster(&self) -> Cluster {
        Cluster
    }
}
