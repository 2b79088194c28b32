//! Capacity at a glance and the scaling rule: read models over the node registry, the
//! queue and the placements, computed here and wrapped by the GraphQL layer.

use std::collections::HashMap;

use super::model::{NodeRow, NodeStatus};
use super::service::wall_now;
use super::{store, view};
use crate::app::App;
use crate::db::ids::{TenantId, db_time};
use crate::error::AppResult;

/// Capacity at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Nodes per status, every status listed in declaration order.
    pub nodes_by_status: Vec<(NodeStatus, i64)>,
    /// GPUs on nodes that are not OFFLINE.
    pub gpus_total: i64,
    /// Their memory, MiB.
    pub gpu_memory_total_mb: i64,
    /// In use on them (NVML), MiB.
    pub gpu_memory_used_mb: i64,
    /// Reserved by steps and maintenance, MiB.
    pub gpu_memory_reserved_mb: i64,
    /// QUEUED executions (of `scope`, or all).
    pub queue_depth: i64,
    /// Age of the oldest of them, seconds (0 when none).
    pub oldest_queued_seconds: i64,
}

/// What the autoscaler should aim for.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// Live worker nodes (not draining, not OFFLINE).
    pub current_workers: i64,
    /// Recommended worker nodes.
    pub desired_workers: i64,
    /// Why.
    pub reason: String,
}

/// Computes the summary for `scope` (a tenant, or everything).
pub async fn summary(app: &App, scope: Option<TenantId>) -> AppResult<Summary> {
    let nodes = store::all_nodes(&app.db).await?;
    let res = store::all_reservations(&app.db).await?;
    let (depth, oldest) = store::queue_stats(&app.db, scope).await?;
    let now = wall_now();
    let mut counts: HashMap<NodeStatus, i64> = HashMap::new();
    let (mut gpus, mut total, mut used) = (0i64, 0i64, 0i64);
    for n in &nodes {
        let st = view(n, now, &app.config.cluster).1;
        *counts.entry(st).or_insert(0) += 1;
        if st != NodeStatus::Offline {
            for g in n.gpus() {
                gpus += 1;
                total += g.memory_total_mb as i64;
                used += g.memory_used_mb as i64;
            }
        }
    }
    let app_now = app.clock.now();
    Ok(Summary {
        nodes_by_status: NodeStatus::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect(),
        gpus_total: gpus,
        gpu_memory_total_mb: total,
        gpu_memory_used_mb: used,
        gpu_memory_reserved_mb: res.iter().map(|r| r.memory_mb).sum(),
        queue_depth: depth,
        oldest_queued_seconds: oldest
            .map(|o| (db_time(app_now) - o).num_seconds().max(0))
            .unwrap_or(0),
    })
}

/// The scaling rule: enough worker nodes for everything running and queued at the
/// current slots per node; one more when work has waited over a minute; one fewer when
/// under a third of the slots are busy and nothing waits. GPU work that no node can fit
/// is called out, since more of the same nodes would not help.
pub async fn recommend(app: &App) -> AppResult<Recommendation> {
    let nodes = store::all_nodes(&app.db).await?;
    let now = wall_now();
    let live: Vec<&NodeRow> = nodes
        .iter()
        .filter(|n| {
            let (_, st) = view(n, now, &app.config.cluster);
            n.worker_slots > 0 && !matches!(st, NodeStatus::Offline | NodeStatus::Draining)
        })
        .collect();
    let current = live.len() as i64;
    let slots: i64 = live.iter().map(|n| n.worker_slots).sum();
    let per_node = if current > 0 {
        (slots / current).max(1)
    } else {
        4
    };
    let (queued, oldest) = store::queue_stats(&app.db, None).await?;
    let running = store::running_total(&app.db).await?;
    let wait = oldest
        .map(|o| (db_time(app.clock.now()) - o).num_seconds().max(0))
        .unwrap_or(0);
    let demand = running + queued;
    let mut desired = ((demand + per_node - 1) / per_node).max(1);
    let mut reason = format!(
        "{running} running and {queued} queued executions at {per_node} per node need {desired} worker node(s)"
    );
    if queued > 0 && wait > 60 && desired <= current {
        desired = current + 1;
        reason =
            format!("{queued} execution(s) queued, the oldest for {wait} s: add a worker node");
    } else if queued == 0 && current > 1 && slots > 0 && running * 3 < slots {
        desired = desired.max(current - 1);
        reason = format!("{running} of {slots} slots busy and nothing queued: one node can go");
    }
    let unfit = store::open_placements(&app.db, db_time(app.clock.now()))
        .await?
        .into_iter()
        .filter(|(p, _)| {
            p.node_id.is_none()
                && p.waiting_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("no node can fit"))
        })
        .count();
    if unfit > 0 {
        reason.push_str(&format!(
            "; {unfit} execution(s) need more GPU memory than any node has: add larger GPU nodes"
        ));
    }
    Ok(Recommendation {
        current_workers: current,
        desired_workers: desired,
        reason,
    })
}
