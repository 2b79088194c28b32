//! Execution rules: starting (version pinning, idempotency, quotas), the transition
//! function, cancellation and retry. Every change publishes its events after commit.
//! Schedules: [`schedules`].

mod group;
pub mod schedules;

pub use group::GroupCommit;

use chrono::{Datelike as _, NaiveDate, NaiveDateTime};
use serde_json::Value;
use tracing::Instrument as _;

use super::model::{ExecutionId, ExecutionRow, ExecutionStatus, StepRunId, StepRunRow, StepStatus};
use super::store::{self, Enqueued, Guard, NewExecution, Patch, StepChange};
use crate::app::App;
use crate::audit::Origin;
use crate::auth::Principal;
use crate::db::ids::TenantId;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::rbac::Permission;
use crate::workflows::dag::Definition;
use crate::workflows::model::{WorkflowId, WorkflowRow, WorkflowVersionRow};

/// Largest execution input, bytes of JSON.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// How an execution is being started.
pub struct StartRequest {
    /// Pinned version.
    pub version: WorkflowVersionRow,
    /// Input JSON.
    pub input: Value,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// `user:<id>`, `apikey:<id>` or `schedule:<id>`.
    pub started_by: String,
    /// The user, when a user started it.
    pub started_by_user: Option<crate::tenancy::UserId>,
    /// The failed execution this retries.
    pub retry_of: Option<ExecutionId>,
    /// The schedule that fired it.
    pub schedule_id: Option<String>,
    /// Execution-level timeout (default from config).
    pub timeout_seconds: Option<i64>,
    /// Who starts it, for the audit record (`execution.started` / `execution.retried`).
    pub origin: crate::audit::Origin,
}

fn month_start(now: NaiveDateTime) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or(now)
}

/// Enqueues an execution of `wf` at `req.version`. Returns the execution and whether it
/// already existed (same idempotency key within 24 h).
pub async fn start(
    app: &App,
    wf: &WorkflowRow,
    req: StartRequest,
) -> AppResult<(ExecutionRow, bool)> {
    let input_text = req.input.to_string();
    if input_text.len() > MAX_INPUT_BYTES {
        return Err(AppError::bad_input(
            "input",
            format!("the input is larger than {MAX_INPUT_BYTES} bytes"),
        ));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 200 {
            return Err(AppError::bad_input(
                "idempotencyKey",
                "the idempotency key must be 1 to 200 characters",
            ));
        }
    }
    let timeout = req.timeout_seconds.unwrap_or_else(|| {
        i64::try_from(app.config.engine.execution_timeout.as_secs()).unwrap_or(3600)
    });
    if !(1..=7 * 86_400).contains(&timeout) {
        return Err(AppError::bad_input(
            "timeoutSeconds",
            "the timeout must be between 1 second and 7 days",
        ));
    }
    let def: Definition =
        serde_json::from_str(&req.version.definition).map_err(AppError::internal)?;
    let tenant = crate::tenancy::store::find(&app.db, wf.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    crate::auth::check_tenant_active(&tenant)?;
    // Flags may have been turned off since the version was published.
    crate::workflows::service::check_features(&tenant, &def)?;
    if req.schedule_id.is_some() {
        crate::tenancy::features::require(&tenant, crate::tenancy::features::Feature::Schedules)?;
    }
    let now = db_time(app.clock.now());
    let id = ExecutionId::new();
    let span = tracing::info_span!(
        "execution.enqueue",
        execution = %id,
        workflow = %wf.id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::record_ids(&span);
    let row = ExecutionRow {
        trace_context: crate::telemetry::inject(&span),
        id,
        tenant_id: wf.tenant_id,
        workflow_id: wf.id,
        version_id: req.version.id,
        version: req.version.version,
        status: ExecutionStatus::Queued,
        input: input_text,
        output: None,
        error: None,
        idempotency_key: req.idempotency_key,
        started_by: req.started_by,
        started_by_user: req.started_by_user,
        retry_of: req.retry_of,
        schedule_id: req.schedule_id,
        timeout_seconds: timeout,
        deadline_at: None,
        lease_owner: None,
        lease_expires_at: None,
        claims: 0,
        seq: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_usd: 0.0,
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
        unpriced_calls: 0,
    };
    let steps = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepRunRow {
            id: StepRunId::new(),
            tenant_id: wf.tenant_id,
            execution_id: id,
            step_id: s.id.clone(),
            kind: s.kind.clone(),
            position: i64::try_from(i).unwrap_or(0),
            status: StepStatus::Pending,
            attempt: 0,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            unpriced_calls: 0,
        })
        .collect();
    // The largest GPU need of any one step decides where the execution may run.
    let gpu = def
        .steps
        .iter()
        .filter_map(|s| s.resources.as_ref())
        .filter(|r| r.gpu_count > 0)
        .map(|r| (r.gpu_memory_mb, r.gpu_count))
        .max_by_key(|(mb, n)| (mb.saturating_mul(u64::from(*n)), *n));
    let placement = gpu.map(|(mb, n)| crate::cluster::model::PlacementRow {
        execution_id: id,
        tenant_id: wf.tenant_id,
        gpu_memory_mb: i64::try_from(mb).unwrap_or(i64::MAX),
        gpu_count: i64::from(n),
        node_id: None,
        waiting_reason: Some("waiting for the placer to choose a GPU node".into()),
        placed_at: None,
        updated_at: now,
    });
    if let Some((mb, n)) = gpu {
        let need = mb.saturating_mul(u64::from(n));
        if need > u64::try_from(tenant.max_gpu_memory_mb).unwrap_or(0) {
            return Err(AppError::new(
                crate::error::ErrorCode::QuotaExceeded,
                format!(
                    "a step needs {need} MiB of GPU memory and the plan allows {} MiB at once",
                    tenant.max_gpu_memory_mb
                ),
            )
            .with_detail("quota", "maxGpuMemoryMb"));
        }
    }
    let audit = crate::audit::Entry::change(
        &req.origin,
        if row.retry_of.is_some() {
            "execution.retried"
        } else {
            "execution.started"
        },
        "execution",
        id,
        Some(serde_json::json!({
            "workflowId": wf.id.to_string(),
            "version": row.version,
            "retryOf": row.retry_of,
            "scheduleId": row.schedule_id,
        })),
        now,
    );
    let new = NewExecution {
        row,
        steps,
        placement,
        audit,
        max_per_month: tenant.max_executions_per_month,
        month_start: month_start(now),
    };
    let envelope = |e: &super::model::ExecutionEvent| app.bus.pg_envelope(e);
    let key_for_retry = new.row.idempotency_key.clone();
    let tenant = new.row.tenant_id;
    let result = match app
        .db
        .tx(tenant, async |conn| {
            store::enqueue(conn, new, now, &envelope).await
        })
        .instrument(span.clone())
        .await
    {
        Ok(r) => r,
        // Two concurrent starts with one key: the loser returns the winner's execution.
        Err(e) if e.code() == crate::error::ErrorCode::Conflict && key_for_retry.is_some() => {
            let key = key_for_retry.unwrap_or_default();
            let existing = store::find_by_key(&app.db, wf.tenant_id, &key)
                .await?
                .ok_or(e)?;
            if existing.workflow_id != wf.id {
                return Err(store::key_used_elsewhere());
            }
            return Ok((existing, true));
        }
        Err(e) => return Err(e),
    };
    match result {
        Enqueued::Existing(row) => Ok((*row, true)),
        Enqueued::Created(row, ev) => {
            log_event(&ev, Some(&row));
            app.bus.publish(*ev);
            app.bus.queue_wake.notify_one();
            Ok((*row, false))
        }
    }
}

/// One INFO line per lifecycle change, after it committed, so an operator can follow work
/// in the log: execution, workflow, tenant, status (and for a finished execution its
/// duration; for a step its id, status and attempt).
fn log_event(ev: &super::model::ExecutionEvent, row: Option<&ExecutionRow>) {
    use super::model::EventKind;
    match ev.kind {
        EventKind::StepChanged => tracing::info!(
            execution = %ev.execution_id,
            workflow = %ev.workflow_id,
            tenant = %ev.tenant_id,
            step = ev.step_id.as_deref().unwrap_or(""),
            step_status = ev.step_status.map_or("", |s| s.as_str()),
            attempt = ev.attempt.unwrap_or(0),
            error = ev.error.as_deref(),
            "step {}",
            ev.step_status.map_or("changed", |s| s.as_str())
        ),
        _ => {
            record_metrics(ev, row);
            let duration_ms = row.filter(|_| ev.status.is_terminal()).map(|r| {
                let end = r.finished_at.unwrap_or(r.updated_at);
                (end - r.started_at.unwrap_or(r.created_at)).num_milliseconds()
            });
            tracing::info!(
                execution = %ev.execution_id,
                workflow = %ev.workflow_id,
                tenant = %ev.tenant_id,
                status = ev.status.as_str(),
                duration_ms,
                error = ev.error.as_deref(),
                "execution {}",
                ev.status.as_str()
            );
        }
    }
}

/// Counts a committed status change in `/metrics`.
fn record_metrics(ev: &super::model::ExecutionEvent, row: Option<&ExecutionRow>) {
    use super::model::ExecutionStatus as S;
    let Some(r) = row else { return };
    match ev.status {
        S::Queued => crate::metrics::execution_enqueued(if r.schedule_id.is_some() {
            "schedule"
        } else if r.retry_of.is_some() {
            "retry"
        } else {
            "api"
        }),
        S::Running if r.claims <= 1 => {
            if let Some(s) = r.started_at {
                crate::metrics::execution_started((s - r.created_at).to_std().unwrap_or_default());
            }
        }
        st if st.is_terminal() => {
            let ran = r
                .started_at
                .zip(r.finished_at)
                .and_then(|(s, f)| (f - s).to_std().ok());
            crate::metrics::execution_finished(st.as_str(), ran);
        }
        _ => {}
    }
}

/// THE transition function: every status change of an execution goes through here (the
/// engine's and the users'). Returns the updated row, or `None` when the transition no
/// longer applies (the execution moved on, or the worker lost its lease).
pub async fn transition(
    app: &App,
    id: ExecutionId,
    to: ExecutionStatus,
    guard: Guard<'_>,
    patch: Patch,
) -> AppResult<Option<ExecutionRow>> {
    let now = db_time(app.clock.now());
    let envelope = |e: &super::model::ExecutionEvent| app.bus.pg_envelope(e);
    let Some((row, events)) = app
        .db
        .tx("", async |conn| {
            store::transition(conn, id, to, guard, patch, now, &envelope).await
        })
        .await?
    else {
        return Ok(None);
    };
    for ev in events {
        log_event(&ev, Some(&row));
        app.bus.publish(ev);
    }
    Ok(Some(row))
}

/// Records a step change under the worker's lease and publishes it; `false` when the
/// lease is lost.
pub async fn record_step(
    app: &App,
    id: ExecutionId,
    owner: &str,
    change: &StepChange,
) -> AppResult<bool> {
    let now = db_time(app.clock.now());
    let envelope = |e: &super::model::ExecutionEvent| app.bus.pg_envelope(e);
    match app
        .db
        .tx("", async |conn| {
            store::record_step(conn, id, owner, change, now, &envelope).await
        })
        .await?
    {
        Some(ev) => {
            log_event(&ev, None);
            if change.finished_at.is_some() {
                tracing::info!(
                    execution = %ev.execution_id,
                    step = %change.step_id,
                    prompt_tokens = change.prompt_tokens,
                    completion_tokens = change.completion_tokens,
                    cost_usd = change.cost_usd,
                    "step usage"
                );
            }
            app.bus.publish(ev);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The next claim a driver asks for in its last transaction: the claim's fencing token,
/// this node, and the lease's start and end.
pub struct NextClaim<'a> {
    /// The new claim's lease owner (unique per claim).
    pub owner: &'a str,
    /// The claiming node.
    pub node: &'a str,
    /// Now.
    pub now: chrono::NaiveDateTime,
    /// When the lease lapses unless renewed.
    pub until: chrono::NaiveDateTime,
}

/// Applies a driver's held-back writes in one transaction under its lease and publishes
/// their events; then, when `next` is given and the writes were applied, claims the next
/// runnable execution in the same transaction (SQLite only: see [`store::claim_in_tx`]).
/// `(applied, claimed)`: `applied` is `false` when the lease is lost or the execution
/// moved on (nothing written).
pub async fn apply_then_claim(
    app: &App,
    id: ExecutionId,
    owner: &str,
    writes: &[store::Write],
    next: Option<NextClaim<'_>>,
) -> AppResult<(bool, Option<ExecutionRow>)> {
    let envelope = |e: &super::model::ExecutionEvent| app.bus.pg_envelope(e);
    let done = app
        .db
        .tx("", async |conn| {
            apply_in_tx(conn, &envelope, id, owner, writes, next.as_ref()).await
        })
        .await?;
    Ok(publish_applied(app, done))
}

/// A driver's part of its last transaction: its writes under its lease, then, when they
/// applied and `next` is given, the next claim. `None` when the writes were refused.
async fn apply_in_tx(
    conn: &mut crate::db::Conn<'_>,
    envelope: &(dyn Fn(&super::model::ExecutionEvent) -> String + Sync),
    id: ExecutionId,
    owner: &str,
    writes: &[store::Write],
    next: Option<&NextClaim<'_>>,
) -> AppResult<Option<(store::Applied, Option<ExecutionRow>)>> {
    let Some(applied) = store::apply(conn, id, owner, writes, envelope).await? else {
        return Ok(None);
    };
    let claimed = match next {
        // A claim that fails must not undo the writes: the worker claims on its own next.
        Some(n) => store::claim_in_tx(conn, n.owner, n.node, n.now, n.until)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = ?e, "claiming the next execution failed");
                None
            }),
        None => None,
    };
    Ok(Some((applied, claimed)))
}

/// After the commit of [`apply_in_tx`]: publishes the applied writes' events and gives
/// the driver's answer, `(applied, claimed)`.
fn publish_applied(
    app: &App,
    done: Option<(store::Applied, Option<ExecutionRow>)>,
) -> (bool, Option<ExecutionRow>) {
    let Some((applied, claimed)) = done else {
        return (false, None);
    };
    for (ev, row) in applied {
        log_event(&ev, row.as_ref());
        app.bus.publish(ev);
    }
    (true, claimed)
}

/// Cancels a QUEUED or RUNNING execution; running steps are interrupted (the worker
/// holding it hears the CANCELLED event, in this process or through the relay).
pub async fn cancel(
    app: &App,
    row: &ExecutionRow,
    by: &str,
    origin: &crate::audit::Origin,
) -> AppResult<ExecutionRow> {
    if row.status.is_terminal() {
        return Err(AppError::conflict(format!(
            "the execution already ended ({})",
            row.status
        )));
    }
    match transition(
        app,
        row.id,
        ExecutionStatus::Cancelled,
        Guard::Any,
        Patch {
            error: Some(format!("cancelled by {by}")),
            audit: Some(crate::audit::Entry::change(
                origin,
                "execution.cancelled",
                "execution",
                row.id,
                Some(
                    serde_json::json!({ "status": { "before": row.status, "after": ExecutionStatus::Cancelled } }),
                ),
                db_time(app.clock.now()),
            )),
            ..Patch::default()
        },
    )
    .await?
    {
        Some(r) => Ok(r),
        None => Err(AppError::conflict(
            "the execution ended before it could be cancelled",
        )),
    }
}

/// An execution the caller may see (its workflow is visible to it); `NOT_FOUND`
/// otherwise, whether it is missing, in another tenant or behind a hidden workflow.
pub async fn visible(app: &App, p: &Principal, id: ExecutionId) -> AppResult<ExecutionRow> {
    Ok(visible_with_workflow(app, p, id).await?.0)
}

/// [`visible`], with the workflow it proved visible.
async fn visible_with_workflow(
    app: &App,
    p: &Principal,
    id: ExecutionId,
) -> AppResult<(ExecutionRow, WorkflowRow)> {
    let row = find(app, p.tenant_id, id).await?;
    let wf = crate::workflows::service::visible(app, p, row.workflow_id)
        .await
        .map_err(|e| match e.code() {
            ErrorCode::NotFound => AppError::not_found("execution"),
            _ => e,
        })?;
    Ok((row, wf))
}

/// An execution the caller may read: [`visible`], then `executions.read`.
pub async fn get(app: &App, p: &Principal, id: ExecutionId) -> AppResult<ExecutionRow> {
    let row = visible(app, p, id).await?;
    if !p.permissions.contains(&Permission::ExecutionsRead) {
        return Err(AppError::forbidden(
            "this requires the executions.read permission",
        ));
    }
    Ok(row)
}

/// What a caller asks for when it starts an execution.
pub struct StartInput {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The version to pin (the latest published when `None`).
    pub version: Option<i64>,
    /// Input JSON.
    pub input: Value,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Execution-level timeout (default from config).
    pub timeout_seconds: Option<i64>,
}

/// Starts an execution of a workflow the caller may see, pinned to a published version.
/// Returns the execution and whether it already existed (same idempotency key).
pub async fn start_for(
    app: &App,
    origin: &Origin,
    p: &Principal,
    input: StartInput,
) -> AppResult<(ExecutionRow, bool)> {
    let (wf, version) =
        crate::workflows::service::runnable_version(app, p, input.workflow_id, input.version)
            .await?;
    start(
        app,
        &wf,
        StartRequest {
            version,
            input: input.input,
            idempotency_key: input.idempotency_key,
            started_by: p.actor_ref(),
            started_by_user: p.user_id(),
            retry_of: None,
            schedule_id: None,
            timeout_seconds: input.timeout_seconds,
            origin: origin.clone(),
        },
    )
    .await
}

/// Cancels an execution the caller may see (see [`cancel`]).
pub async fn cancel_for(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: ExecutionId,
) -> AppResult<ExecutionRow> {
    let row = visible(app, p, id).await?;
    cancel(app, &row, &p.actor_ref(), origin).await
}

/// Starts a new execution with the same version, input and timeout as a FAILED,
/// TIMED_OUT or CANCELLED one the caller may see, linked to it through `retryOf`.
pub async fn retry(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: ExecutionId,
) -> AppResult<ExecutionRow> {
    let (old, wf) = visible_with_workflow(app, p, id).await?;
    if !matches!(
        old.status,
        ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Cancelled
    ) {
        return Err(AppError::conflict(format!(
            "only FAILED, TIMED_OUT or CANCELLED executions can be retried (this one is {})",
            old.status
        )));
    }
    let version = crate::workflows::service::version_of(app, &wf, Some(old.version))
        .await?
        .ok_or_else(|| AppError::not_found("workflow version"))?;
    let (row, _) = start(
        app,
        &wf,
        StartRequest {
            version,
            input: serde_json::from_str(&old.input).unwrap_or(Value::Null),
            idempotency_key: None,
            started_by: p.actor_ref(),
            started_by_user: p.user_id(),
            retry_of: Some(old.id),
            schedule_id: None,
            timeout_seconds: Some(old.timeout_seconds),
            origin: origin.clone(),
        },
    )
    .await?;
    Ok(row)
}

/// Loads an execution of `tenant`, or `NOT_FOUND`.
pub async fn find(app: &App, tenant: TenantId, id: ExecutionId) -> AppResult<ExecutionRow> {
    store::find(&app.db, tenant, id)
        .await?
        .ok_or_else(|| AppError::not_found("execution"))
}
