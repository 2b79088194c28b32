//! GraphQL types and fields for executions: queries, mutations and the two
//! subscriptions (`executionUpdated`, `executionEvents`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::Value;

use super::model::{
    EventKind, ExecutionEvent, ExecutionId, ExecutionRow, ExecutionStatus, StepRunRow, StepStatus,
};
use super::service::{self, StartRequest};
use super::store::{self, ListFilter};
use crate::app::App;
use crate::auth::{Principal, principal};
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::loaders::{Loaders, load_error};
use crate::graphql::relay::{Conn, NodeKind, Page, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};
use crate::tenancy::graphql::User;
use crate::workflows::graphql::{Workflow, sight, visible_workflow_row};
use crate::workflows::model::WorkflowId;
use crate::workflows::store::Sight;

/// Loads an execution the caller may see (its workflow is visible); else `NOT_FOUND`.
pub async fn visible_execution(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<Execution> {
    let p = principal(ctx)?;
    let row = service::find(app(ctx)?, p.tenant_id, ExecutionId(id)).await?;
    visible_workflow_row(ctx, row.workflow_id)
        .await
        .map_err(|_| AppError::not_found("execution"))?;
    if !p.permissions.contains(&Permission::ExecutionsRead) {
        return Err(AppError::forbidden(
            "this requires the executions.read permission",
        ));
    }
    Ok(Execution(row))
}

async fn execution_arg(ctx: &Context<'_>, id: &ID) -> AppResult<ExecutionRow> {
    let uuid = decode_expecting(id, NodeKind::Execution, "execution")?;
    let p = principal(ctx)?;
    let row = service::find(app(ctx)?, p.tenant_id, ExecutionId(uuid)).await?;
    visible_workflow_row(ctx, row.workflow_id)
        .await
        .map_err(|_| AppError::not_found("execution"))?;
    Ok(row)
}

fn json_of(s: Option<&str>) -> Option<Json<Value>> {
    s.and_then(|s| serde_json::from_str(s).ok()).map(Json)
}

/// One run of a workflow version.
pub struct Execution(pub ExecutionRow);

/// One step of an execution.
pub struct ExecutionStep(pub StepRunRow);

#[Object]
impl ExecutionStep {
    /// The step's id in the definition.
    async fn step_id(&self) -> &str {
        &self.0.step_id
    }
    /// Its kind.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Status.
    async fn status(&self) -> StepStatus {
        self.0.status
    }
    /// Attempts started (0 before the first).
    async fn attempt(&self) -> i64 {
        self.0.attempt
    }
    /// Start of the latest attempt.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.map(utc)
    }
    /// End.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.map(utc)
    }
    /// Output JSON (after success).
    async fn output(&self) -> Option<Json<Value>> {
        json_of(self.0.output.as_deref())
    }
    /// Latest error.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// LLM prompt tokens.
    async fn prompt_tokens(&self) -> i64 {
        self.0.prompt_tokens
    }
    /// LLM completion tokens.
    async fn completion_tokens(&self) -> i64 {
        self.0.completion_tokens
    }
    /// Cost in USD (from the configured price table).
    async fn cost_usd(&self) -> f64 {
        self.0.cost_usd
    }
}

#[Object]
impl Execution {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::Execution, self.0.id.0)
    }
    /// Audit records about this execution, newest first (audit.read).
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)",
        guard = "crate::rbac::Require(crate::rbac::Permission::AuditRead)"
    )]
    async fn audit_trail(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<crate::graphql::relay::Conn<crate::audit::graphql::AuditRecord>>
    {
        crate::audit::graphql::trail(ctx, "execution", self.0.id.to_string(), None, first, after)
            .await
    }
    /// The workflow.
    async fn workflow(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Workflow>> {
        Ok(Loaders::of(ctx)?
            .workflows
            .load_one(self.0.workflow_id)
            .await
            .map_err(load_error)?
            .map(Workflow))
    }
    /// The pinned version number.
    async fn version(&self) -> i64 {
        self.0.version
    }
    /// Status.
    async fn status(&self) -> ExecutionStatus {
        self.0.status
    }
    /// Input JSON.
    async fn input(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.input).unwrap_or(Value::Null))
    }
    /// Output JSON: the outputs of the steps nothing depends on, by step id.
    async fn output(&self) -> Option<Json<Value>> {
        json_of(self.0.output.as_deref())
    }
    /// Why it failed, timed out or was cancelled.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The idempotency key it was started with.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// What started it: `user:<id>`, `apikey:<id>` or `schedule:<id>`.
    async fn trigger(&self) -> &str {
        &self.0.started_by
    }
    /// The user who started it (null for API keys and schedules).
    async fn started_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(uid) = self.0.started_by_user else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .users
            .load_one(uid)
            .await
            .map_err(load_error)?
            .map(User))
    }
    /// The execution this one retries.
    async fn retry_of(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Execution>> {
        let Some(id) = self.0.retry_of else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .executions
            .load_one(id)
            .await
            .map_err(load_error)?
            .map(Execution))
    }
    /// Per-step records, in definition order.
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ExecutionStep>> {
        Ok(Loaders::of(ctx)?
            .steps
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .map(ExecutionStep)
            .collect())
    }
    /// Sequence number of the latest event (subscribers use it to detect gaps).
    async fn sequence(&self) -> i64 {
        self.0.seq
    }
    /// Times a worker claimed it (more than 1 after a worker crash or shutdown).
    async fn claims(&self) -> i64 {
        self.0.claims
    }
    /// Execution-level timeout.
    async fn timeout_seconds(&self) -> i64 {
        self.0.timeout_seconds
    }
    /// Prompt tokens over all steps.
    async fn prompt_tokens(&self) -> i64 {
        self.0.prompt_tokens
    }
    /// Completion tokens over all steps.
    async fn completion_tokens(&self) -> i64 {
        self.0.completion_tokens
    }
    /// Cost over all steps, USD.
    async fn cost_usd(&self) -> f64 {
        self.0.cost_usd
    }
    /// Why a QUEUED execution has not started, or a RUNNING one's GPU step waits (null
    /// otherwise).
    async fn waiting_reason(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        let a = app(ctx)?;
        if matches!(
            self.0.status,
            ExecutionStatus::Queued | ExecutionStatus::Running
        ) {
            // GPU work: the placer's or the GPU reservation's reason.
            let placement =
                crate::cluster::store::placement(&a.db, self.0.tenant_id, &self.0.id.to_string())
                    .await?;
            if let Some(reason) = placement.and_then(|p| p.waiting_reason) {
                return Ok(Some(reason));
            }
        }
        if self.0.status != ExecutionStatus::Queued || self.0.lease_owner.is_some() {
            return Ok(None);
        }
        let tenant = crate::tenancy::store::find(&a.db, self.0.tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let running = store::running_count(&a.db, self.0.tenant_id).await?;
        Ok(Some(if running >= tenant.max_concurrent_executions {
            format!(
                "waiting for a concurrency slot: {running} of {} allowed executions are running (maxConcurrentExecutions)",
                tenant.max_concurrent_executions
            )
        } else {
            "waiting for a free worker".to_owned()
        }))
    }
    /// Enqueue time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// First start.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.map(utc)
    }
    /// End.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.map(utc)
    }
    /// From start to end, ms (null until both exist).
    async fn duration_ms(&self) -> Option<i64> {
        match (self.0.started_at, self.0.finished_at) {
            (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
            _ => None,
        }
    }
}

/// Execution statistics of a workflow over the last 30 days.
#[derive(SimpleObject, Default)]
pub struct WorkflowStats {
    /// Executions started.
    pub total: i64,
    /// Waiting.
    pub queued: i64,
    /// Running now.
    pub running: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Timed out.
    pub timed_out: i64,
    /// Succeeded / finished (null before any finished).
    pub success_rate: Option<f64>,
    /// Mean run time of finished executions, ms.
    pub mean_duration_ms: Option<f64>,
    /// 95th percentile run time of finished executions, ms.
    pub p95_duration_ms: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Cost, USD.
    pub cost_usd: f64,
}

impl WorkflowStats {
    /// Computes the stats of one workflow's executions.
    pub fn of(rows: &[ExecutionRow]) -> Self {
        let mut s = Self::default();
        let mut durations = Vec::new();
        for r in rows {
            s.total += 1;
            match r.status {
                ExecutionStatus::Queued => s.queued += 1,
                ExecutionStatus::Running => s.running += 1,
                ExecutionStatus::Succeeded => s.succeeded += 1,
                ExecutionStatus::Failed => s.failed += 1,
                ExecutionStatus::Cancelled => s.cancelled += 1,
                ExecutionStatus::TimedOut => s.timed_out += 1,
            }
            s.prompt_tokens += r.prompt_tokens;
            s.completion_tokens += r.completion_tokens;
            s.cost_usd += r.cost_usd;
            if let (Some(a), Some(b)) = (r.started_at, r.finished_at) {
                #[expect(clippy::cast_precision_loss, reason = "durations in ms fit in f64")]
                durations.push((b - a).num_milliseconds() as f64);
            }
        }
        let finished = s.succeeded + s.failed + s.cancelled + s.timed_out;
        if finished > 0 {
            #[expect(clippy::cast_precision_loss, reason = "counts fit in f64")]
            let rate = s.succeeded as f64 / finished as f64;
            s.success_rate = Some(rate);
        }
        if !durations.is_empty() {
            durations.sort_by(f64::total_cmp);
            #[expect(clippy::cast_precision_loss, reason = "counts fit in f64")]
            let n = durations.len() as f64;
            s.mean_duration_ms = Some(durations.iter().sum::<f64>() / n);
            let idx = ((n * 0.95).ceil() as usize).clamp(1, durations.len()) - 1;
            s.p95_duration_ms = durations.get(idx).copied();
        }
        s
    }
}

/// Filters for `executions`.
#[derive(InputObject, Default)]
pub struct ExecutionFilter {
    /// Of this workflow.
    pub workflow_id: Option<ID>,
    /// In this status.
    pub status: Option<ExecutionStatus>,
}

/// Input of `startExecution`.
#[derive(InputObject)]
pub struct StartExecutionInput {
    /// The workflow.
    pub workflow_id: ID,
    /// The published version to run (default: the latest).
    pub version: Option<i64>,
    /// Input JSON, available to templates as `input`.
    pub input: Option<Json<Value>>,
    /// The same key within 24 hours returns the same execution instead of a new one.
    pub idempotency_key: Option<String>,
    /// Execution-level timeout (default from the server's configuration).
    pub timeout_seconds: Option<i64>,
}

/// Input of `cancelExecution` and `retryExecution`.
#[derive(InputObject)]
pub struct ExecutionIdInput {
    /// The execution's ID.
    pub execution_id: ID,
}

/// Result of `startExecution`.
#[derive(SimpleObject)]
pub struct StartExecutionPayload {
    /// The execution (new, or the one the idempotency key matched).
    pub execution: Execution,
    /// True when the idempotency key matched an existing execution.
    pub deduplicated: bool,
}

/// Result of `cancelExecution` and `retryExecution`.
#[derive(SimpleObject)]
pub struct ExecutionPayload {
    /// The execution after the change (for a retry: the new execution).
    pub execution: Execution,
}

/// Execution queries.
#[derive(Default)]
pub struct ExecutionQuery;

async fn visible_workflow_ids(
    ctx: &Context<'_>,
    p: &Principal,
) -> AppResult<Option<Vec<WorkflowId>>> {
    Ok(match sight(p) {
        Sight::All => None,
        s => Some(crate::workflows::store::visible_ids(&app(ctx)?.db, p.tenant_id, &s).await?),
    })
}

#[Object]
impl ExecutionQuery {
    /// Executions of workflows the caller may see, newest first.
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)",
        guard = "Require(Permission::ExecutionsRead)"
    )]
    async fn executions(
        &self,
        ctx: &Context<'_>,
        filter: Option<ExecutionFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Conn<Execution>> {
        let p = principal(ctx)?;
        let f = filter.unwrap_or_default();
        let mut workflows = visible_workflow_ids(ctx, p).await?;
        if let Some(w) = &f.workflow_id {
            let wid = WorkflowId(decode_expecting(w, NodeKind::Workflow, "workflow")?);
            workflows = Some(match workflows {
                Some(v) => v.into_iter().filter(|x| *x == wid).collect(),
                None => vec![wid],
            });
        }
        let page = Page::from_args(after, None, first, None)?;
        let (rows, total) = store::list(
            &app(ctx)?.db,
            p.tenant_id,
            &ListFilter {
                workflows,
                status: f.status.map(|s| s.as_str().to_owned()),
            },
            page.after.map(ExecutionId),
            page.limit,
        )
        .await?;
        prefetch(ctx, &rows).await?;
        Ok(
            page.finish(rows.into_iter().map(Execution).collect(), total, |e| {
                e.0.id.0
            }),
        )
    }

    /// One execution by ID.
    #[graphql(guard = "Require(Permission::ExecutionsRead)")]
    async fn execution(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Execution> {
        Ok(visible_execution(
            ctx,
            decode_expecting(&id, NodeKind::Execution, "execution")?,
        )
        .await?)
    }
}

/// Loads in one statement each what the page's nested fields will ask for.
async fn prefetch(ctx: &Context<'_>, rows: &[ExecutionRow]) -> AppResult<()> {
    let node = ctx.look_ahead().field("edges").field("node");
    let loaders = Loaders::of(ctx)?;
    if node.field("steps").exists() {
        loaders
            .steps
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("workflow").exists() {
        loaders
            .workflows
            .load_many(rows.iter().map(|r| r.workflow_id))
            .await
            .map_err(load_error)?;
    }
    if node.field("startedBy").exists() {
        loaders
            .users
            .load_many(rows.iter().filter_map(|r| r.started_by_user))
            .await
            .map_err(load_error)?;
    }
    Ok(())
}

/// Execution mutations.
#[derive(Default)]
pub struct ExecutionMutation;

#[Object]
impl ExecutionMutation {
    /// Enqueues an execution of a published workflow version. With an idempotency key
    /// used in the last 24 hours, returns that execution instead.
    #[graphql(guard = "Require(Permission::WorkflowsExecute)")]
    async fn start_execution(
        &self,
        ctx: &Context<'_>,
        input: StartExecutionInput,
    ) -> async_graphql::Result<StartExecutionPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let wid = WorkflowId(decode_expecting(
            &input.workflow_id,
            NodeKind::Workflow,
            "workflow",
        )?);
        let wf = visible_workflow_row(ctx, wid).await?;
        let version =
            crate::workflows::store::find_version(&a.db, p.tenant_id, wf.id, input.version)
                .await?
                .ok_or_else(|| match input.version {
                    Some(v) => {
                        AppError::bad_input("version", format!("the workflow has no version {v}"))
                    }
                    None => AppError::bad_input(
                        "workflowId",
                        "the workflow has no published version; publish it first",
                    ),
                })?;
        let (row, deduplicated) = service::start(
            a,
            &wf,
            StartRequest {
                version,
                input: input
                    .input
                    .map_or(Value::Object(Default::default()), |j| j.0),
                idempotency_key: input.idempotency_key,
                started_by: p.actor_ref(),
                started_by_user: p.user_id(),
                retry_of: None,
                schedule_id: None,
                timeout_seconds: input.timeout_seconds,
                origin: crate::audit::graphql::origin(ctx)?,
            },
        )
        .await?;
        Ok(StartExecutionPayload {
            execution: Execution(row),
            deduplicated,
        })
    }

    /// Cancels a QUEUED or RUNNING execution; running steps are interrupted.
    #[graphql(guard = "Require(Permission::ExecutionsCancel)")]
    async fn cancel_execution(
        &self,
        ctx: &Context<'_>,
        input: ExecutionIdInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let row = execution_arg(ctx, &input.execution_id).await?;
        let p = principal(ctx)?;
        let origin = crate::audit::graphql::origin(ctx)?;
        let row = service::cancel(app(ctx)?, &row, &p.actor_ref(), &origin).await?;
        Ok(ExecutionPayload {
            execution: Execution(row),
        })
    }

    /// Starts a new execution with the same version and input as a FAILED, TIMED_OUT or
    /// CANCELLED one, linked to it through `retryOf`.
    #[graphql(guard = "Require(Permission::WorkflowsExecute)")]
    async fn retry_execution(
        &self,
        ctx: &Context<'_>,
        input: ExecutionIdInput,
    ) -> async_graphql::Result<ExecutionPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let old = execution_arg(ctx, &input.execution_id).await?;
        if !matches!(
            old.status,
            ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Cancelled
        ) {
            return Err(AppError::conflict(format!(
                "only FAILED, TIMED_OUT or CANCELLED executions can be retried (this one is {})",
                old.status
            ))
            .into());
        }
        let wf = visible_workflow_row(ctx, old.workflow_id).await?;
        let version =
            crate::workflows::store::find_version(&a.db, p.tenant_id, wf.id, Some(old.version))
                .await?
                .ok_or_else(|| AppError::not_found("workflow version"))?;
        let (row, _) = service::start(
            a,
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
                origin: crate::audit::graphql::origin(ctx)?,
            },
        )
        .await?;
        Ok(ExecutionPayload {
            execution: Execution(row),
        })
    }
}

/// One event of an execution's life, as streamed to subscribers.
pub struct ExecutionUpdate(pub ExecutionEvent);

#[Object]
impl ExecutionUpdate {
    /// Per-execution sequence number: consecutive from the snapshot on, so a client can
    /// tell it missed nothing.
    async fn sequence(&self) -> i64 {
        self.0.seq
    }
    /// SNAPSHOT first, then STATUS_CHANGED and STEP_CHANGED.
    async fn kind(&self) -> EventKind {
        self.0.kind
    }
    /// The execution's ID.
    async fn execution_id(&self) -> ID {
        to_global_id(NodeKind::Execution, self.0.execution_id.0)
    }
    /// Its workflow's ID.
    async fn workflow_id(&self) -> ID {
        to_global_id(NodeKind::Workflow, self.0.workflow_id.0)
    }
    /// The execution's status after this event.
    async fn status(&self) -> ExecutionStatus {
        self.0.status
    }
    /// The step, for STEP_CHANGED.
    async fn step_id(&self) -> Option<&str> {
        self.0.step_id.as_deref()
    }
    /// The step's new status.
    async fn step_status(&self) -> Option<StepStatus> {
        self.0.step_status
    }
    /// The step's attempt.
    async fn attempt(&self) -> Option<i64> {
        self.0.attempt
    }
    /// Error text of a failure.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// When.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// The execution as it is now (read when the client asks).
    async fn execution(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Execution>> {
        let p = principal(ctx)?;
        Ok(store::find(&app(ctx)?.db, p.tenant_id, self.0.execution_id)
            .await?
            .map(Execution))
    }
}

fn snapshot_of(row: &ExecutionRow, at: DateTime<Utc>) -> ExecutionEvent {
    ExecutionEvent {
        tenant_id: row.tenant_id,
        execution_id: row.id,
        workflow_id: row.workflow_id,
        seq: row.seq,
        kind: EventKind::Snapshot,
        status: row.status,
        step_id: None,
        step_status: None,
        attempt: None,
        error: row.error.clone(),
        at,
    }
}

/// Filter of `executionEvents`.
#[derive(InputObject, Default)]
pub struct ExecutionEventsFilter {
    /// Only this workflow's executions.
    pub workflow_id: Option<ID>,
    /// Only events that leave an execution in this status.
    pub status: Option<ExecutionStatus>,
}

/// Execution subscriptions.
#[derive(Default)]
pub struct ExecutionSubscription;

#[Subscription]
impl ExecutionSubscription {
    /// Every status change and step event of one execution: first a SNAPSHOT with the
    /// current sequence number, then each event in order without gaps (events missed by a
    /// slow client are re-read from the event log). Ends after the terminal event.
    #[graphql(guard = "Require(Permission::ExecutionsRead)")]
    async fn execution_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = ExecutionUpdate> + use<>> {
        let a: Arc<App> = app(ctx)?.clone();
        let p = principal(ctx)?.clone();
        let uuid = decode_expecting(&id, NodeKind::Execution, "execution")?;
        // Subscribe before reading the snapshot, so nothing falls between the two.
        let mut rx = a.bus.subscribe();
        let mut resync = a.bus.resync.subscribe();
        let row = visible_execution(ctx, uuid).await?.0;
        let tenant = p.tenant_id;
        let exec_id = row.id;
        Ok(async_stream::stream! {
            let mut last = row.seq;
            let done = row.status.is_terminal();
            yield ExecutionUpdate(snapshot_of(&row, a.clock.now()));
            if done {
                return;
            }
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    changed = resync.changed() => {
                        if changed.is_err() { return; }
                        // Notifications from other processes may have been lost.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(0))
                    }
                };
                let ev = match received {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: read what we missed from the log.
                        let Ok(missed) = store::events_after(&a.db, tenant, exec_id, last).await else { return };
                        let mut finished = false;
                        for ev in missed {
                            last = ev.seq;
                            finished = ev.kind == EventKind::StatusChanged && ev.status.is_terminal();
                            yield ExecutionUpdate(ev);
                        }
                        if finished { return; }
                        continue;
                    }
                    Err(_) => return,
                };
                if ev.tenant_id != tenant || ev.execution_id != exec_id || ev.seq <= last {
                    continue;
                }
                if ev.seq > last + 1 {
                    // A gap (e.g. an event relayed late from another process): fill it.
                    let Ok(missed) = store::events_after(&a.db, tenant, exec_id, last).await else { return };
                    for m in missed.into_iter().filter(|m| m.seq < ev.seq) {
                        yield ExecutionUpdate(m);
                    }
                }
                last = ev.seq;
                let finished = ev.kind == EventKind::StatusChanged && ev.status.is_terminal();
                yield ExecutionUpdate((*ev).clone());
                if finished {
                    return;
                }
            }
        })
    }

    /// Every event of every execution the caller may read in its tenant, optionally
    /// narrowed to one workflow or to events leaving a given status. Per execution,
    /// events arrive once each and in sequence order, without holes: a gap (an event
    /// relayed late or lost with a dropped connection) is filled from the stored log, and
    /// so is everything a slow subscriber missed. Starts with a SNAPSHOT of each QUEUED or
    /// RUNNING execution that matches, or, with `since`, replays the stored events
    /// written at or after that time instead (a reconnecting dashboard passes the `at` of
    /// the last event it received and drops repeats by `executionId` + `sequence`).
    #[graphql(guard = "Require(Permission::ExecutionsRead)")]
    async fn execution_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<ExecutionEventsFilter>,
        since: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<impl Stream<Item = ExecutionUpdate> + use<>> {
        let a: Arc<App> = app(ctx)?.clone();
        let p = principal(ctx)?.clone();
        let f = filter.unwrap_or_default();
        let wf_filter = f
            .workflow_id
            .as_ref()
            .map(|w| decode_expecting(w, NodeKind::Workflow, "workflow").map(WorkflowId))
            .transpose()?;
        if let Some(w) = wf_filter {
            visible_workflow_row(ctx, w).await?;
        }
        let mut rx = a.bus.subscribe();
        let mut resync = a.bus.resync.subscribe();
        let started = crate::db::ids::db_time(a.clock.now());
        let visible: Option<Vec<WorkflowId>> = visible_workflow_ids(ctx, &p).await?;
        let mut active = Vec::new();
        let mut replay = Vec::new();
        if let Some(t) = since {
            replay =
                store::tenant_events_since(&a.db, p.tenant_id, crate::db::ids::db_time(t)).await?;
        } else {
            for status in [ExecutionStatus::Queued, ExecutionStatus::Running] {
                let (rows, _) = store::list(
                    &a.db,
                    p.tenant_id,
                    &ListFilter {
                        workflows: match (wf_filter, &visible) {
                            (Some(w), _) => Some(vec![w]),
                            (None, v) => v.clone(),
                        },
                        status: Some(status.as_str().to_owned()),
                    },
                    None,
                    100,
                )
                .await?;
                active.extend(rows);
            }
            // An execution that moved from QUEUED to RUNNING between the two reads is in
            // both: keep its newer state only.
            active.sort_by(|a, b| a.id.cmp(&b.id).then(b.seq.cmp(&a.seq)));
            active.dedup_by_key(|r| r.id);
        }
        let tenant = p.tenant_id;
        let status_filter = f.status;
        let sight = sight(&p);
        Ok(async_stream::stream! {
            let now = a.clock.now();
            let mut seqs = SeqTracker::default();
            for row in &active {
                seqs.advance(row.id, row.seq);
                yield ExecutionUpdate(snapshot_of(row, now));
            }
            // Visibility per workflow, decided once per stream.
            let mut seen: HashMap<WorkflowId, bool> = HashMap::new();
            if let Some(v) = &visible {
                for w in v { seen.insert(*w, true); }
            }
            // Catch-up reads start a little before the last one, for events whose
            // transaction committed later than its timestamp.
            let slack = chrono::Duration::seconds(30);
            let mut synced_at = started;
            let mut batch = replay;
            loop {
                for ev in std::mem::take(&mut batch) {
                    if !seqs.advance(ev.execution_id, ev.seq) {
                        continue;
                    }
                    if wf_filter.is_some_and(|w| w != ev.workflow_id)
                        || status_filter.is_some_and(|s| s != ev.status)
                    {
                        continue;
                    }
                    let ok = match seen.get(&ev.workflow_id) {
                        Some(v) => *v,
                        None => {
                            // A workflow created after the stream began.
                            let ok = match crate::workflows::store::find(&a.db, tenant, ev.workflow_id).await {
                                Ok(Some(row)) => crate::workflows::store::can_see(&a.db, &sight, &row).await.unwrap_or(false),
                                _ => false,
                            };
                            seen.insert(ev.workflow_id, ok);
                            ok
                        }
                    };
                    if ok {
                        yield ExecutionUpdate(ev);
                    }
                }
                let catch_up = tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) if ev.tenant_id != tenant => continue,
                        Ok(ev) => match seqs.last(ev.execution_id) {
                            Some(l) if ev.seq <= l => continue,
                            Some(l) if ev.seq == l + 1 => {
                                batch.push((*ev).clone());
                                continue;
                            }
                            // A gap, or an execution new to this stream: read its events
                            // from the log, in order, up to this one.
                            known => {
                                match store::events_after(&a.db, tenant, ev.execution_id, known.unwrap_or(0)).await {
                                    Ok(missed) => batch = missed,
                                    Err(e) => {
                                        tracing::warn!(error = ?e, "reading missed events failed");
                                        batch.push((*ev).clone());
                                    }
                                }
                                continue;
                            }
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    changed = resync.changed() => {
                        if changed.is_err() { return; }
                        true
                    }
                };
                if catch_up {
                    // Fell behind, or notifications from other processes may be lost:
                    // everything since the last catch-up is in the log.
                    let from = synced_at - slack;
                    synced_at = crate::db::ids::db_time(a.clock.now());
                    match store::tenant_events_since(&a.db, tenant, from).await {
                        Ok(events) => batch = events,
                        Err(e) => tracing::warn!(error = ?e, "catching up from the event log failed"),
                    }
                }
            }
        })
    }
}

/// The last sequence number a stream delivered (or skipped) per execution; forgets the
/// oldest finished executions past a bound so a long-lived stream stays small.
#[derive(Default)]
struct SeqTracker {
    last: HashMap<ExecutionId, i64>,
    order: std::collections::VecDeque<ExecutionId>,
}

impl SeqTracker {
    const KEPT: usize = 20_000;

    fn last(&self, id: ExecutionId) -> Option<i64> {
        self.last.get(&id).copied()
    }

    /// Records `seq` for `id`; `false` when it was already delivered.
    fn advance(&mut self, id: ExecutionId, seq: i64) -> bool {
        match self.last.get_mut(&id) {
            Some(l) if *l >= seq => false,
            Some(l) => {
                *l = seq;
                true
            }
            None => {
                self.last.insert(id, seq);
                self.order.push_back(id);
                while self.order.len() > Self::KEPT {
                    if let Some(old) = self.order.pop_front() {
                        self.last.remove(&old);
                    }
                }
                true
            }
        }
    }
}
