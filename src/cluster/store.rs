//! Cluster queries, written once for both backends.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{
    GpuCapacity, NodeRow, NodeStatus, PlacementRow, ReservationRow, fit_gpus, reserved_by_gpu,
};
use crate::db::DbPool;
use crate::db::schema::{
    execution_placements, executions, gpu_reservations, node_telemetry, nodes, tenants,
};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::executions::model::ExecutionStatus;
use crate::tenancy::TenantId;

/// One telemetry sample (also the columns of `node_telemetry`).
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = node_telemetry)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct SampleRow {
    /// UUIDv7.
    pub id: String,
    /// The node.
    pub node_id: String,
    /// When.
    pub at: NaiveDateTime,
    /// Score at that time.
    pub health_score: f64,
    /// CPU busy, percent.
    pub cpu_percent: f64,
    /// MiB.
    pub memory_used_mb: i64,
    /// Load.
    pub load1: f64,
    /// Executions running.
    pub in_flight: i64,
    /// Mean GPU utilization, percent.
    pub gpu_utilization: f64,
    /// GPU memory in use over all GPUs, MiB.
    pub gpu_memory_used_mb: i64,
    /// Hottest GPU, °C.
    pub gpu_temperature_c: f64,
}

/// Inserts this process's node row.
pub async fn register(db: &DbPool, row: &NodeRow) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::insert_into(nodes::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// What a heartbeat writes.
pub struct Beat {
    /// Status unless the node is draining.
    pub status: NodeStatus,
    /// Score.
    pub health_score: f64,
    /// The sample (also copied onto the node row).
    pub sample: SampleRow,
    /// Memory total, MiB.
    pub memory_total_mb: i64,
    /// Error rate.
    pub step_error_rate: f64,
    /// JSON of the GPU readings.
    pub gpus: String,
    /// Samples older than this are pruned.
    pub keep_after: NaiveDateTime,
}

/// Writes a heartbeat and its sample; returns the row after the write. A node the reaper
/// marked OFFLINE comes back with its new status (its released work stays released).
pub async fn heartbeat(db: &DbPool, id: &str, beat: Beat) -> AppResult<Option<NodeRow>> {
    crate::db_tx!(db, "", |conn| {
        let draining: Option<bool> = nodes::table
            .find(id)
            .select(nodes::draining)
            .first(conn)
            .await
            .optional()?;
        let Some(draining) = draining else {
            return Ok(None);
        };
        let status = if draining {
            NodeStatus::Draining
        } else {
            beat.status
        };
        let s = &beat.sample;
        let row = diesel::update(nodes::table.find(id))
            .set((
                nodes::last_heartbeat_at.eq(s.at),
                nodes::status.eq(status.as_str()),
                nodes::health_score.eq(beat.health_score),
                nodes::cpu_percent.eq(s.cpu_percent),
                nodes::memory_used_mb.eq(s.memory_used_mb),
                nodes::memory_total_mb.eq(beat.memory_total_mb),
                nodes::load1.eq(s.load1),
                nodes::in_flight.eq(s.in_flight),
                nodes::step_error_rate.eq(beat.step_error_rate),
                nodes::gpus.eq(&beat.gpus),
                nodes::offline_at.eq(None::<NaiveDateTime>),
                nodes::updated_at.eq(s.at),
            ))
            .returning(NodeRow::as_returning())
            .get_result(conn)
            .await?;
        diesel::insert_into(node_telemetry::table)
            .values(s)
            .execute(conn)
            .await?;
        diesel::delete(
            node_telemetry::table
                .filter(node_telemetry::node_id.eq(id))
                .filter(node_telemetry::at.lt(beat.keep_after)),
        )
        .execute(conn)
        .await?;
        Ok(Some(row))
    })
}

/// Marks nodes whose last heartbeat is older than `cutoff` OFFLINE, and in the same
/// transaction releases their GPU reservations, their executions' leases (so another
/// worker resumes them at once) and their GPU placements (so the placer picks another
/// node). Nodes OFFLINE since before `forget_before` are deleted. Returns the nodes
/// marked OFFLINE now.
pub async fn reap(
    db: &DbPool,
    now: NaiveDateTime,
    cutoff: NaiveDateTime,
    forget_before: NaiveDateTime,
) -> AppResult<Vec<NodeRow>> {
    crate::db_tx!(db, "", |conn| {
        let dead: Vec<NodeRow> = diesel::update(
            nodes::table
                .filter(nodes::status.ne(NodeStatus::Offline))
                .filter(nodes::last_heartbeat_at.lt(cutoff)),
        )
        .set((
            nodes::status.eq(NodeStatus::Offline),
            nodes::offline_at.eq(now),
            nodes::in_flight.eq(0),
            nodes::updated_at.eq(now),
        ))
        .returning(NodeRow::as_returning())
        .get_results(conn)
        .await?;
        for n in &dead {
            diesel::delete(gpu_reservations::table.filter(gpu_reservations::node_id.eq(&n.id)))
                .execute(conn)
                .await?;
            diesel::update(
                executions::table
                    .filter(executions::lease_owner.like(format!("{}:%", n.id)))
                    .filter(
                        executions::status
                            .eq_any([ExecutionStatus::Queued, ExecutionStatus::Running]),
                    ),
            )
            .set((
                executions::lease_owner.eq(None::<String>),
                executions::lease_expires_at.eq(None::<NaiveDateTime>),
            ))
            .execute(conn)
            .await?;
            diesel::update(
                execution_placements::table.filter(execution_placements::node_id.eq(&n.id)),
            )
            .set((
                execution_placements::node_id.eq(None::<String>),
                execution_placements::waiting_reason.eq(Some(format!(
                    "node {} went OFFLINE; being placed again",
                    n.name
                ))),
                execution_placements::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
        }
        diesel::delete(
            nodes::table
                .filter(nodes::status.eq(NodeStatus::Offline))
                .filter(nodes::offline_at.lt(forget_before)),
        )
        .execute(conn)
        .await?;
        Ok(dead)
    })
}

/// Every node, by id.
pub async fn all_nodes(db: &DbPool) -> AppResult<Vec<NodeRow>> {
    Ok(crate::db_run!(db, |conn| {
        nodes::table
            .order(nodes::id.asc())
            .select(NodeRow::as_select())
            .load(conn)
            .await?
    }))
}

/// One node.
pub async fn find_node(db: &DbPool, id: &str) -> AppResult<Option<NodeRow>> {
    Ok(crate::db_run!(db, |conn| {
        nodes::table
            .find(id)
            .select(NodeRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Recent samples of a node, oldest first.
pub async fn samples(db: &DbPool, id: &str, last: i64) -> AppResult<Vec<SampleRow>> {
    let mut rows: Vec<SampleRow> = crate::db_run!(db, |conn| {
        node_telemetry::table
            .filter(node_telemetry::node_id.eq(id))
            .order(node_telemetry::at.desc())
            .limit(last)
            .select(SampleRow::as_select())
            .load(conn)
            .await?
    });
    rows.reverse();
    Ok(rows)
}

/// Sets or clears a node's drain flag. `CONFLICT` for an OFFLINE node.
pub async fn set_draining(
    db: &DbPool,
    id: &str,
    draining: bool,
    now: NaiveDateTime,
    audit: &crate::audit::Entry,
) -> AppResult<NodeRow> {
    crate::db_tx!(db, "", |conn| {
        let row: NodeRow = nodes::table
            .find(id)
            .select(NodeRow::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or_else(|| AppError::not_found("node"))?;
        if row.status == NodeStatus::Offline {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!(
                    "node {} is OFFLINE; only live nodes can be drained or undrained",
                    row.name
                ),
            )
            .with_detail("status", NodeStatus::Offline.as_str()));
        }
        let status = if draining {
            NodeStatus::Draining
        } else {
            NodeStatus::of(row.health_score, false)
        };
        let row = diesel::update(nodes::table.find(id))
            .set((
                nodes::draining.eq(draining),
                nodes::status.eq(status.as_str()),
                nodes::updated_at.eq(now),
            ))
            .returning(NodeRow::as_returning())
            .get_result(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(row)
    })
}

/// Every reservation (platform view).
pub async fn all_reservations(db: &DbPool) -> AppResult<Vec<ReservationRow>> {
    Ok(crate::db_run!(db, |conn| {
        gpu_reservations::table
            .order(gpu_reservations::id.asc())
            .select(ReservationRow::as_select())
            .load(conn)
            .await?
    }))
}

/// A tenant's reservations.
pub async fn tenant_reservations(db: &DbPool, tenant: TenantId) -> AppResult<Vec<ReservationRow>> {
    let t = tenant.to_string();
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        gpu_reservations::table
            .filter(gpu_reservations::tenant_id.eq(&t))
            .order(gpu_reservations::id.asc())
            .select(ReservationRow::as_select())
            .load(conn)
            .await?
    }))
}

/// The placement row of an execution of `tenant`, if it needs GPUs.
pub async fn placement(
    db: &DbPool,
    tenant: TenantId,
    execution: &str,
) -> AppResult<Option<PlacementRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        execution_placements::table
            .find(execution)
            .select(PlacementRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// The lock that serializes reservations on one node: a no-op UPDATE of its row (a row
/// lock on PostgreSQL; SQLite's write transaction already serializes). `false` when the
/// node is gone or OFFLINE. A macro because the transaction body is expanded once per
/// backend with a different connection type.
macro_rules! lock_node {
    ($conn:expr, $id:expr) => {
        diesel::update(
            nodes::table.filter(nodes::id.eq($id).and(nodes::status.ne(NodeStatus::Offline))),
        )
        .set(nodes::updated_at.eq(nodes::updated_at))
        .execute($conn)
        .await?
            == 1
    };
}

/// GPUs of a node with what is reserved on each.
pub fn capacity(node: &NodeRow, reserved: &HashMap<(String, u32), u64>) -> Vec<GpuCapacity> {
    node.gpus()
        .iter()
        .map(|g| GpuCapacity {
            index: g.index,
            total_mb: g.memory_total_mb,
            reserved_mb: reserved
                .get(&(node.id.clone(), g.index))
                .copied()
                .unwrap_or(0),
        })
        .collect()
}

/// What a step asks for.
pub struct StepRequest<'a> {
    /// The node running it.
    pub node_id: &'a str,
    /// Tenant.
    pub tenant: TenantId,
    /// Execution.
    pub execution: &'a str,
    /// Step.
    pub step: &'a str,
    /// Per GPU, MiB.
    pub memory_mb: u64,
    /// GPUs.
    pub count: usize,
    /// When.
    pub now: NaiveDateTime,
}

/// Reserves GPU memory on the node for a step, best fit across its GPUs, within the
/// tenant's `maxGpuMemoryMb`. `Ok(Err(reason))` when it must wait (nothing written).
pub async fn reserve_for_step(
    db: &DbPool,
    req: &StepRequest<'_>,
) -> AppResult<Result<Vec<ReservationRow>, String>> {
    let tenant = req.tenant.to_string();
    crate::db_tx!(db, "", |conn| {
        if !(lock_node!(conn, req.node_id)) {
            return Ok(Err("this node is OFFLINE".to_owned()));
        }
        // Serialize reservations of one tenant across nodes (quota check).
        diesel::update(tenants::table.filter(tenants::id.eq(&tenant)))
            .set(tenants::max_gpu_memory_mb.eq(tenants::max_gpu_memory_mb))
            .execute(conn)
            .await?;
        diesel::delete(
            gpu_reservations::table
                .filter(gpu_reservations::execution_id.eq(req.execution))
                .filter(gpu_reservations::step_id.eq(req.step)),
        )
        .execute(conn)
        .await?;
        let node: NodeRow = nodes::table
            .find(req.node_id)
            .select(NodeRow::as_select())
            .first(conn)
            .await?;
        let quota: i64 = tenants::table
            .filter(tenants::id.eq(&tenant))
            .select(tenants::max_gpu_memory_mb)
            .first(conn)
            .await?;
        let held: Vec<i64> = gpu_reservations::table
            .filter(gpu_reservations::tenant_id.eq(&tenant))
            .select(gpu_reservations::memory_mb)
            .load(conn)
            .await?;
        let held: i64 = held.iter().sum();
        let need = (req.memory_mb as i64).saturating_mul(req.count as i64);
        if held + need > quota {
            return Ok(Err(format!(
                "waiting for GPU quota: the step needs {need} MiB and the tenant holds {held} of {quota} MiB (maxGpuMemoryMb)"
            )));
        }
        let on_node: Vec<ReservationRow> = gpu_reservations::table
            .filter(gpu_reservations::node_id.eq(req.node_id))
            .select(ReservationRow::as_select())
            .load(conn)
            .await?;
        let gpus = capacity(&node, &reserved_by_gpu(&on_node));
        let Some((indices, _)) = fit_gpus(&gpus, req.memory_mb, req.count) else {
            let free: Vec<String> = gpus.iter().map(|g| format!("{}", g.free_mb())).collect();
            return Ok(Err(format!(
                "waiting for GPU memory on node {}: the step needs {} GPU(s) with {} MiB free each; free now: [{}] MiB",
                node.name,
                req.count,
                req.memory_mb,
                free.join(", ")
            )));
        };
        let mut out = Vec::new();
        for i in indices {
            let r = ReservationRow {
                id: uuid::Uuid::now_v7().to_string(),
                node_id: req.node_id.to_owned(),
                gpu_index: i64::from(i),
                tenant_id: Some(tenant.clone()),
                execution_id: Some(req.execution.to_owned()),
                step_id: Some(req.step.to_owned()),
                memory_mb: req.memory_mb as i64,
                reason: None,
                created_by: "system".into(),
                created_at: req.now,
            };
            diesel::insert_into(gpu_reservations::table)
                .values(&r)
                .execute(conn)
                .await?;
            out.push(r);
        }
        diesel::update(execution_placements::table.find(req.execution))
            .set((
                execution_placements::waiting_reason.eq(None::<String>),
                execution_placements::updated_at.eq(req.now),
            ))
            .execute(conn)
            .await?;
        Ok(Ok(out))
    })
}

/// Records why a placed execution's step waits (shown as `waitingReason`).
pub async fn set_waiting(
    db: &DbPool,
    execution: &str,
    reason: Option<&str>,
    now: NaiveDateTime,
) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::update(execution_placements::table.find(execution))
            .set((
                execution_placements::waiting_reason.eq(reason),
                execution_placements::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Releases a step's reservations.
pub async fn release_step(db: &DbPool, execution: &str, step: &str) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::delete(
            gpu_reservations::table
                .filter(gpu_reservations::execution_id.eq(execution))
                .filter(gpu_reservations::step_id.eq(step)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Releases every reservation an execution holds (it ended, or moved to another node).
pub async fn release_execution(db: &DbPool, execution: &str) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::delete(
            gpu_reservations::table.filter(gpu_reservations::execution_id.eq(execution)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// A maintenance reservation by a platform admin.
pub struct ManualRequest<'a> {
    /// Node.
    pub node_id: &'a str,
    /// A specific GPU, or best fit.
    pub gpu_index: Option<u32>,
    /// MiB.
    pub memory_mb: u64,
    /// Why.
    pub reason: &'a str,
    /// The admin.
    pub by: &'a str,
    /// When.
    pub now: NaiveDateTime,
}

/// Reserves memory by hand. `NOT_FOUND` for an unknown node, `CONFLICT` for an OFFLINE
/// one or when the memory is taken, `BAD_USER_INPUT` when larger than the GPU.
pub async fn reserve_manual(
    db: &DbPool,
    req: &ManualRequest<'_>,
    audit: &crate::audit::Entry,
) -> AppResult<ReservationRow> {
    crate::db_tx!(db, "", |conn| {
        let node: NodeRow = nodes::table
            .find(req.node_id)
            .select(NodeRow::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or_else(|| AppError::not_found("node"))?;
        if !(lock_node!(conn, req.node_id)) {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!("node {} is OFFLINE", node.name),
            ));
        }
        let on_node: Vec<ReservationRow> = gpu_reservations::table
            .filter(gpu_reservations::node_id.eq(req.node_id))
            .select(ReservationRow::as_select())
            .load(conn)
            .await?;
        let gpus = capacity(&node, &reserved_by_gpu(&on_node));
        let candidates: Vec<GpuCapacity> = match req.gpu_index {
            Some(i) => {
                let g = gpus.iter().find(|g| g.index == i).cloned().ok_or_else(|| {
                    AppError::bad_input("gpuIndex", format!("node {} has no GPU {i}", node.name))
                })?;
                vec![g]
            }
            None => gpus.clone(),
        };
        let largest = candidates.iter().map(|g| g.total_mb).max().unwrap_or(0);
        if req.memory_mb > largest {
            return Err(AppError::bad_input(
                "memoryMb",
                format!(
                    "{} MiB is more than the largest GPU here ({largest} MiB)",
                    req.memory_mb
                ),
            ));
        }
        let Some((idx, _)) = fit_gpus(&candidates, req.memory_mb, 1) else {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!(
                    "no GPU on node {} has {} MiB unreserved now",
                    node.name, req.memory_mb
                ),
            ));
        };
        let r = ReservationRow {
            id: uuid::Uuid::now_v7().to_string(),
            node_id: node.id.clone(),
            gpu_index: i64::from(idx[0]),
            tenant_id: None,
            execution_id: None,
            step_id: None,
            memory_mb: req.memory_mb as i64,
            reason: Some(req.reason.to_owned()),
            created_by: req.by.to_owned(),
            created_at: req.now,
        };
        diesel::insert_into(gpu_reservations::table)
            .values(&r)
            .execute(conn)
            .await?;
        let mut audit = audit.clone();
        audit.resource_id = Some(r.id.clone());
        audit.changes = Some(serde_json::json!({
            "nodeId": r.node_id, "gpuIndex": r.gpu_index, "memoryMb": r.memory_mb, "reason": r.reason,
        }));
        crate::audit_append!(conn, &audit)?;
        Ok(r)
    })
}

/// Deletes a reservation; `NOT_FOUND` when there is none.
pub async fn release_manual(
    db: &DbPool,
    id: &str,
    audit: &crate::audit::Entry,
) -> AppResult<ReservationRow> {
    crate::db_tx!(db, "", |conn| {
        let r: ReservationRow = gpu_reservations::table
            .find(id)
            .select(ReservationRow::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or_else(|| AppError::not_found("GPU allocation"))?;
        diesel::delete(gpu_reservations::table.find(id))
            .execute(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(r)
    })
}

/// Placements of unfinished executions with their status, oldest first (the placer
/// decides which need a node).
pub async fn open_placements(db: &DbPool) -> AppResult<Vec<(PlacementRow, ExecutionStatus)>> {
    Ok(crate::db_run!(db, |conn| {
        execution_placements::table
            .inner_join(executions::table.on(executions::id.eq(execution_placements::execution_id)))
            .filter(executions::status.eq_any([ExecutionStatus::Queued, ExecutionStatus::Running]))
            .order(executions::created_at.asc())
            .select((PlacementRow::as_select(), executions::status))
            .load(conn)
            .await?
    }))
}

/// Moves a placement from `from` to `to` (compare-and-set, so concurrent placers agree).
pub async fn set_placement(
    db: &DbPool,
    execution: &str,
    from: Option<&str>,
    to: Option<&str>,
    reason: Option<&str>,
    now: NaiveDateTime,
) -> AppResult<bool> {
    let n = crate::db_run!(db, |conn| {
        let target =
            execution_placements::table.filter(execution_placements::execution_id.eq(execution));
        let set = (
            execution_placements::node_id.eq(to),
            execution_placements::waiting_reason.eq(reason),
            execution_placements::placed_at.eq(to.map(|_| now)),
            execution_placements::updated_at.eq(now),
        );
        match from {
            Some(f) => {
                diesel::update(target.filter(execution_placements::node_id.eq(f)))
                    .set(set)
                    .execute(conn)
                    .await?
            }
            None => {
                diesel::update(target.filter(execution_placements::node_id.is_null()))
                    .set(set)
                    .execute(conn)
                    .await?
            }
        }
    });
    Ok(n == 1)
}

/// GPU quota and current hold per tenant with open placements.
pub async fn tenant_gpu_state(
    db: &DbPool,
    tenants_of: &[String],
) -> AppResult<HashMap<String, (i64, i64)>> {
    if tenants_of.is_empty() {
        return Ok(HashMap::new());
    }
    type Held = Vec<(Option<String>, i64)>;
    let (quotas, held): (Vec<(String, i64)>, Held) = crate::db_run!(db, |conn| {
        let q = tenants::table
            .filter(tenants::id.eq_any(tenants_of))
            .select((tenants::id, tenants::max_gpu_memory_mb))
            .load(conn)
            .await?;
        let h = gpu_reservations::table
            .filter(gpu_reservations::tenant_id.eq_any(tenants_of))
            .select((gpu_reservations::tenant_id, gpu_reservations::memory_mb))
            .load(conn)
            .await?;
        (q, h)
    });
    let mut out: HashMap<String, (i64, i64)> =
        quotas.into_iter().map(|(t, q)| (t, (q, 0))).collect();
    for (t, mb) in held {
        if let Some(e) = t.and_then(|t| out.get_mut(&t)) {
            e.1 += mb;
        }
    }
    Ok(out)
}

/// Queue depth and the oldest queued execution's enqueue time, for one tenant or all.
pub async fn queue_stats(
    db: &DbPool,
    tenant: Option<TenantId>,
) -> AppResult<(i64, Option<NaiveDateTime>)> {
    let t = tenant.map(|t| t.to_string()).unwrap_or_default();
    Ok(crate::db_run_tenant!(db, t.as_str(), |conn| {
        let mut q = executions::table
            .filter(executions::status.eq(ExecutionStatus::Queued))
            .into_boxed();
        let mut o = executions::table
            .filter(executions::status.eq(ExecutionStatus::Queued))
            .into_boxed();
        if let Some(tid) = tenant {
            q = q.filter(executions::tenant_id.eq(tid));
            o = o.filter(executions::tenant_id.eq(tid));
        }
        let depth: i64 = q.count().get_result(conn).await?;
        let oldest: Option<NaiveDateTime> = o
            .select(diesel::dsl::min(executions::created_at))
            .first(conn)
            .await?;
        (depth, oldest)
    }))
}

/// RUNNING executions over the whole platform (scaling).
pub async fn running_total(db: &DbPool) -> AppResult<i64> {
    Ok(crate::db_run!(db, |conn| {
        executions::table
            .filter(executions::status.eq(ExecutionStatus::Running))
            .count()
            .get_result(conn)
            .await?
    }))
}
