//! Nodes: registration, heartbeats and telemetry samples, the reaper, draining.

use super::*;

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
pub async fn heartbeat(
    conn: &mut crate::db::Conn<'_>,
    id: &str,
    beat: Beat,
) -> AppResult<Option<NodeRow>> {
    crate::on_conn!(conn, |conn| {
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
    conn: &mut crate::db::Conn<'_>,
    now: NaiveDateTime,
    cutoff: NaiveDateTime,
    forget_before: NaiveDateTime,
) -> AppResult<Vec<NodeRow>> {
    crate::on_conn!(conn, |conn| {
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
    conn: &mut Conn<'_>,
    id: &str,
    draining: bool,
    now: NaiveDateTime,
) -> AppResult<NodeRow> {
    Ok(crate::on_conn!(conn, |conn| {
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
        diesel::update(nodes::table.find(id))
            .set((
                nodes::draining.eq(draining),
                nodes::status.eq(status.as_str()),
                nodes::updated_at.eq(now),
            ))
            .returning(NodeRow::as_returning())
            .get_result(conn)
            .await?
    }))
}
