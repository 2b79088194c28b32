//! GPU memory reservations: per step and manual, with their quota checks.

use super::*;

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
    pub execution: ExecutionId,
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
    conn: &mut crate::db::Conn<'_>,
    req: &StepRequest<'_>,
) -> AppResult<Result<Vec<ReservationRow>, String>> {
    let tenant = req.tenant.to_string();
    crate::on_conn!(conn, |conn| {
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
                tenant_id: Some(req.tenant),
                execution_id: Some(req.execution),
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
    execution: ExecutionId,
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
pub async fn release_step(db: &DbPool, execution: ExecutionId, step: &str) -> AppResult<()> {
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
pub async fn release_execution(db: &DbPool, execution: ExecutionId) -> AppResult<()> {
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
    conn: &mut Conn<'_>,
    req: &ManualRequest<'_>,
) -> AppResult<ReservationRow> {
    crate::on_conn!(conn, |conn| {
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
        Ok(r)
    })
}

/// Deletes a reservation; `NOT_FOUND` when there is none.
pub async fn release_manual(conn: &mut Conn<'_>, id: &str) -> AppResult<ReservationRow> {
    crate::on_conn!(conn, |conn| {
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
        Ok(r)
    })
}

/// GPU quota and current hold per tenant with open placements.
pub async fn tenant_gpu_state(
    db: &DbPool,
    tenants_of: &[TenantId],
) -> AppResult<HashMap<TenantId, (i64, i64)>> {
    if tenants_of.is_empty() {
        return Ok(HashMap::new());
    }
    type Held = Vec<(Option<TenantId>, i64)>;
    let (quotas, held): (Vec<(TenantId, i64)>, Held) = crate::db_run!(db, |conn| {
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
    let mut out: HashMap<TenantId, (i64, i64)> =
        quotas.into_iter().map(|(t, q)| (t, (q, 0))).collect();
    for (t, mb) in held {
        if let Some(e) = t.and_then(|t| out.get_mut(&t)) {
            e.1 += mb;
        }
    }
    Ok(out)
}
