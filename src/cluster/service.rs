//! Cluster rules for operators: only platform administrators with `cluster.manage` see
//! or change nodes (to everyone else they do not exist); a manual GPU reservation states
//! a reason and fits a GPU the cluster has; drain, reserve and release are audited in
//! the same transaction as the change. Node times are wall-clock time (heartbeats come
//! from other processes), not the app clock.

use chrono::{DateTime, Utc};

use super::model::{NodeRow, ReservationRow};
use super::store::{self, ManualRequest};
use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::auth::Principal;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::rbac::Permission;

/// Now, by the wall clock (nodes heartbeat in wall-clock time).
pub fn wall_now() -> DateTime<Utc> {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// Nodes are visible to platform admins only; to everyone else they do not exist.
pub fn require_platform(p: &Principal) -> AppResult<()> {
    if p.platform_admin && p.permissions.contains(&Permission::ClusterManage) {
        Ok(())
    } else {
        Err(AppError::forbidden(
            "nodes are visible to platform administrators (cluster.manage) only",
        )
        .with_detail("permission", "cluster.manage"))
    }
}

/// Stops a node from claiming new work (`draining`), or lets it claim again.
/// `CONFLICT` for an OFFLINE node.
pub async fn set_draining(
    app: &App,
    origin: &Origin,
    p: &Principal,
    node_id: &str,
    draining: bool,
) -> AppResult<NodeRow> {
    require_platform(p)?;
    let now = db_time(wall_now());
    let action = if draining {
        "node.drained"
    } else {
        "node.undrained"
    };
    let audit = Entry::change(origin, action, "node", node_id, None, now);
    let row = app
        .db
        .tx("", async |conn| {
            let row = store::set_draining(conn, node_id, draining, now).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(row)
        })
        .await?;
    if draining {
        tracing::info!(node = %row.id, name = %row.name, "node draining");
    }
    Ok(row)
}

/// A manual GPU reservation, as asked for.
pub struct Allocation<'a> {
    /// The node.
    pub node_id: &'a str,
    /// A specific GPU (default: best fit).
    pub gpu_index: Option<u32>,
    /// Memory to hold, MiB.
    pub memory_mb: u64,
    /// Why (shown to operators).
    pub reason: &'a str,
}

/// Reserves GPU memory by hand (maintenance). `BAD_USER_INPUT` when larger than any GPU
/// or without a reason, `CONFLICT` when the memory is taken or the node is OFFLINE.
pub async fn allocate(
    app: &App,
    origin: &Origin,
    p: &Principal,
    req: Allocation<'_>,
) -> AppResult<(ReservationRow, Option<String>)> {
    require_platform(p)?;
    if req.memory_mb == 0 {
        return Err(AppError::bad_input("memoryMb", "memoryMb must be positive"));
    }
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(AppError::bad_input(
            "reason",
            "give a reason of 1 to 500 characters",
        ));
    }
    // A request larger than every GPU in the cluster is a mistake, not a wait.
    let largest = store::all_nodes(&app.db)
        .await?
        .iter()
        .flat_map(|n| n.gpus().into_iter().map(|g| g.memory_total_mb))
        .max()
        .unwrap_or(0);
    if req.memory_mb > largest {
        return Err(AppError::bad_input(
            "memoryMb",
            format!(
                "{} MiB is more than any GPU in the cluster has (largest: {largest} MiB)",
                req.memory_mb
            ),
        ));
    }
    let now = db_time(wall_now());
    let by = p.actor_ref();
    let row = app
        .db
        .tx("", async |conn| {
            let r = store::reserve_manual(
                conn,
                &ManualRequest {
                    node_id: req.node_id,
                    gpu_index: req.gpu_index,
                    memory_mb: req.memory_mb,
                    reason,
                    by: &by,
                    now,
                },
            )
            .await?;
            let audit = Entry::change(
                origin,
                "gpu.allocated",
                "gpu_allocation",
                &r.id,
                Some(serde_json::json!({
                    "nodeId": r.node_id, "gpuIndex": r.gpu_index, "memoryMb": r.memory_mb,
                    "reason": r.reason,
                })),
                now,
            );
            crate::audit::append(conn, &audit).await?;
            Ok(r)
        })
        .await?;
    let name = store::find_node(&app.db, req.node_id)
        .await?
        .map(|n| n.name);
    Ok((row, name))
}

/// Releases a GPU reservation; `NOT_FOUND` when there is none.
pub async fn release(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: uuid::Uuid,
) -> AppResult<ReservationRow> {
    require_platform(p)?;
    let audit = Entry::change(
        origin,
        "gpu.released",
        "gpu_allocation",
        id,
        None,
        db_time(wall_now()),
    );
    app.db
        .tx("", async |conn| {
            let r = store::release_manual(conn, &id.to_string()).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(r)
        })
        .await
}
