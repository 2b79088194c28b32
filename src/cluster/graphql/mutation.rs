//! Cluster mutations: drain/undrain nodes, allocate and release GPU memory.

use super::*;

/// `drainNode` / `undrainNode` input.
#[derive(InputObject)]
pub struct NodeIdInput {
    /// The node.
    pub node_id: ID,
}

/// Result of `drainNode` / `undrainNode`.
#[derive(SimpleObject)]
pub struct NodePayload {
    /// The node after the change.
    pub node: ClusterNode,
}

/// `allocateGpu` input.
#[derive(InputObject)]
pub struct AllocateGpuInput {
    /// The node.
    pub node_id: ID,
    /// A specific GPU (default: best fit).
    pub gpu_index: Option<u32>,
    /// Memory to hold, MiB.
    pub memory_mb: u64,
    /// Why (shown to operators).
    pub reason: String,
}

/// Result of `allocateGpu`.
#[derive(SimpleObject)]
pub struct AllocateGpuPayload {
    /// The reservation.
    pub allocation: GpuAllocation,
}

/// `releaseGpu` input.
#[derive(InputObject)]
pub struct ReleaseGpuInput {
    /// The reservation.
    pub allocation_id: ID,
}

/// Result of `releaseGpu`.
#[derive(SimpleObject)]
pub struct ReleaseGpuPayload {
    /// The released reservation's ID.
    pub allocation_id: ID,
    /// Memory freed, MiB.
    pub memory_mb: i64,
}

/// Cluster mutations (platform admins).
#[derive(Default)]
pub struct ClusterMutation;

pub(super) async fn node_arg(ctx: &Context<'_>, id: &ID) -> AppResult<String> {
    require_platform(principal(ctx)?)?;
    Ok(decode_expecting(id, RelayKind::ClusterNode, "node")?.to_string())
}

#[Object]
impl ClusterMutation {
    /// Stops a node from claiming new work; it finishes what it runs. `CONFLICT` for an
    /// OFFLINE node.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn drain_node(
        &self,
        ctx: &Context<'_>,
        input: NodeIdInput,
    ) -> async_graphql::Result<NodePayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        let a = app(ctx)?;
        let row = service::set_draining(a, &origin(ctx)?, principal(ctx)?, &id, true).await?;
        Ok(NodePayload {
            node: ClusterNode::new(row, a),
        })
    }

    /// Lets a drained node claim work again.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn undrain_node(
        &self,
        ctx: &Context<'_>,
        input: NodeIdInput,
    ) -> async_graphql::Result<NodePayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        let a = app(ctx)?;
        let row = service::set_draining(a, &origin(ctx)?, principal(ctx)?, &id, false).await?;
        Ok(NodePayload {
            node: ClusterNode::new(row, a),
        })
    }

    /// Reserves GPU memory by hand (maintenance). `BAD_USER_INPUT` when larger than the
    /// GPU, `CONFLICT` when the memory is taken or the node is OFFLINE.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn allocate_gpu(
        &self,
        ctx: &Context<'_>,
        input: AllocateGpuInput,
    ) -> async_graphql::Result<AllocateGpuPayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        let (row, name) = service::allocate(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?,
            service::Allocation {
                node_id: &id,
                gpu_index: input.gpu_index,
                memory_mb: input.memory_mb,
                reason: &input.reason,
            },
        )
        .await?;
        Ok(AllocateGpuPayload {
            allocation: GpuAllocation::new(row, name),
        })
    }

    /// Releases a GPU reservation.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn release_gpu(
        &self,
        ctx: &Context<'_>,
        input: ReleaseGpuInput,
    ) -> async_graphql::Result<ReleaseGpuPayload> {
        require_platform(principal(ctx)?)?;
        let id = decode_expecting(
            &input.allocation_id,
            RelayKind::GpuAllocation,
            "GPU allocation",
        )?;
        let row = service::release(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
        Ok(ReleaseGpuPayload {
            allocation_id: input.allocation_id,
            memory_mb: row.memory_mb,
        })
    }
}
