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
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::graphql::origin(ctx)?,
            "node.drained",
            "node",
            &id,
            None,
            now,
        );
        let row = store::set_draining(&a.db, &id, true, now, &audit).await?;
        tracing::info!(node = %row.id, name = %row.name, "node draining");
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
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::graphql::origin(ctx)?,
            "node.undrained",
            "node",
            &id,
            None,
            now,
        );
        let row = store::set_draining(&a.db, &id, false, now, &audit).await?;
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
        if input.memory_mb == 0 {
            return Err(AppError::bad_input("memoryMb", "memoryMb must be positive").into());
        }
        let reason = input.reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(
                AppError::bad_input("reason", "give a reason of 1 to 500 characters").into(),
            );
        }
        let a = app(ctx)?;
        let p = principal(ctx)?;
        // A request larger than every GPU in the cluster is a mistake, not a wait.
        let largest = store::all_nodes(&a.db)
            .await?
            .iter()
            .flat_map(|n| n.gpus().into_iter().map(|g| g.memory_total_mb))
            .max()
            .unwrap_or(0);
        if input.memory_mb > largest {
            return Err(AppError::bad_input(
                "memoryMb",
                format!(
                    "{} MiB is more than any GPU in the cluster has (largest: {largest} MiB)",
                    input.memory_mb
                ),
            )
            .into());
        }
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::graphql::origin(ctx)?,
            "gpu.allocated",
            "gpu_allocation",
            "",
            None,
            now,
        );
        let row = store::reserve_manual(
            &a.db,
            &store::ManualRequest {
                node_id: &id,
                gpu_index: input.gpu_index,
                memory_mb: input.memory_mb,
                reason,
                by: &p.actor_ref(),
                now,
            },
            &audit,
        )
        .await?;
        let name = store::find_node(&a.db, &id).await?.map(|n| n.name);
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
        let a = app(ctx)?;
        let audit = crate::audit::Entry::change(
            &crate::graphql::origin(ctx)?,
            "gpu.released",
            "gpu_allocation",
            id,
            None,
            db_time(wall_now()),
        );
        let row = store::release_manual(&a.db, &id.to_string(), &audit).await?;
        Ok(ReleaseGpuPayload {
            allocation_id: input.allocation_id,
            memory_mb: row.memory_mb,
        })
    }
}
