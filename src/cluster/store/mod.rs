//! Cluster queries, written once for both backends.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{
    GpuCapacity, NodeRow, NodeStatus, PlacementRow, ReservationRow, fit_gpus, reserved_by_gpu,
};
use crate::db::ids::{ExecutionId, TenantId};
use crate::db::schema::{
    execution_placements, executions, gpu_reservations, node_telemetry, nodes, tenants,
};
use crate::db::{Conn, DbPool};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::executions::model::ExecutionStatus;

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

mod registry;
mod reservations;
pub use registry::*;
pub use reservations::*;

/// Placements of unfinished executions with their status, oldest first (the placer
/// decides which need a node). A QUEUED execution a driver holds a live lease on at `now`
/// reads as RUNNING: it has started (its driver writes RUNNING only with its first
/// write, held back while it runs inline steps), so it stays on the node that runs it.
pub async fn open_placements(
    db: &DbPool,
    now: NaiveDateTime,
) -> AppResult<Vec<(PlacementRow, ExecutionStatus)>> {
    let rows: Vec<(PlacementRow, ExecutionStatus, Option<NaiveDateTime>)> =
        crate::db_run!(db, |conn| {
            execution_placements::table
                .inner_join(
                    executions::table.on(executions::id.eq(execution_placements::execution_id)),
                )
                .filter(
                    executions::status.eq_any([ExecutionStatus::Queued, ExecutionStatus::Running]),
                )
                .order(executions::created_at.asc())
                .select((
                    PlacementRow::as_select(),
                    executions::status,
                    executions::lease_expires_at,
                ))
                .load(conn)
                .await?
        });
    Ok(rows
        .into_iter()
        .map(|(p, status, lease)| {
            let started = status == ExecutionStatus::Queued && lease.is_some_and(|l| l >= now);
            (
                p,
                if started {
                    ExecutionStatus::Running
                } else {
                    status
                },
            )
        })
        .collect())
}

/// Moves a placement from `from` to `to` (compare-and-set, so concurrent placers agree).
pub async fn set_placement(
    db: &DbPool,
    execution: ExecutionId,
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

/// Queued executions by the plan of their tenant: `(plan, depth, oldest enqueue time)`
/// (for `/metrics`; plans are a fixed set, so the answer is a handful of rows).
pub async fn queue_by_plan(db: &DbPool) -> AppResult<Vec<(String, i64, Option<NaiveDateTime>)>> {
    Ok(crate::db_run!(db, |conn| {
        executions::table
            .inner_join(tenants::table.on(tenants::id.eq(executions::tenant_id)))
            .filter(executions::status.eq(ExecutionStatus::Queued))
            .group_by(tenants::plan)
            .select((
                tenants::plan,
                diesel::dsl::count_star(),
                diesel::dsl::min(executions::created_at),
            ))
            .load::<(String, i64, Option<NaiveDateTime>)>(conn)
            .await?
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
