//! GraphQL object types of executions: Execution, ExecutionStep, WorkflowStats.

use super::*;

/// One run of a workflow version: its head (what a list shows) and, when it was read
/// whole, its row. Shared: a request's loaders hand the same row to every field that
/// shows it without copying it. A field the head does not answer reads the row through
/// the request's by-id loader when it was not read whole (a list read heads only when
/// its selection asked for nothing more: [`Execution::shows_head_only`]).
pub struct Execution {
    head: ExecutionHead,
    row: Option<Arc<ExecutionRow>>,
}

impl From<Arc<ExecutionRow>> for Execution {
    fn from(row: Arc<ExecutionRow>) -> Self {
        Self {
            head: ExecutionHead::from(&*row),
            row: Some(row),
        }
    }
}

impl From<ExecutionRow> for Execution {
    fn from(row: ExecutionRow) -> Self {
        Self::from(Arc::new(row))
    }
}

impl From<ExecutionHead> for Execution {
    fn from(head: ExecutionHead) -> Self {
        Self { head, row: None }
    }
}

impl Execution {
    /// The fields the head answers: a selection of executions asking for no others is
    /// read as heads. Keep in step with the resolvers below (a field missing here only
    /// costs the whole row; one listed wrongly would read the row once per execution).
    pub const HEAD_FIELDS: [&str; 12] = [
        "__typename",
        "id",
        "status",
        "version",
        "sequence",
        "createdAt",
        "startedAt",
        "finishedAt",
        "durationMs",
        "workflow",
        "steps",
        "auditTrail",
    ];

    /// Whether a field returning executions selects only what their heads answer
    /// (fragments included; a `@skip`ped field counts as selected).
    pub fn shows_head_only(field: &async_graphql::SelectionField<'_>) -> bool {
        field
            .selection_set()
            .all(|f| Self::HEAD_FIELDS.contains(&f.name()))
    }

    /// The execution's id.
    pub fn key(&self) -> ExecutionId {
        self.head.id
    }

    /// The whole row: at hand, or read through the request's loader.
    async fn row(&self, ctx: &Context<'_>) -> async_graphql::Result<Arc<ExecutionRow>> {
        if let Some(row) = &self.row {
            return Ok(row.clone());
        }
        Loaders::of(ctx)?
            .executions()
            .load_one(self.head.id)
            .await
            .map_err(load_error)?
            .map(Arc::new)
            .ok_or_else(|| AppError::not_found("execution").into())
    }
}

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
    async fn status(&self) -> crate::graphql::enums::StepStatus {
        self.0.status.into()
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
    /// Cost in USD (from the configured price table); null when a call's model has no
    /// price (`AGENTPLANE_LLM_PRICES`), so the cost is unknown rather than $0.
    async fn cost_usd(&self) -> Option<f64> {
        (self.0.unpriced_calls == 0).then_some(self.0.cost_usd)
    }
}

#[Object]
impl Execution {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::Execution, self.head.id.0)
    }
    /// Audit records about this execution, newest first (audit.read).
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)",
        guard = "crate::graphql::guards::Require(crate::rbac::Permission::AuditRead)"
    )]
    async fn audit_trail(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<crate::graphql::relay::Conn<crate::audit::graphql::AuditRecord>>
    {
        crate::audit::graphql::trail(
            ctx,
            "execution",
            self.head.id.to_string(),
            None,
            first,
            after,
        )
        .await
    }
    /// The workflow.
    async fn workflow(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Workflow>> {
        Ok(Loaders::of(ctx)?
            .workflows()
            .load_one(self.head.workflow_id)
            .await
            .map_err(load_error)?
            .map(Workflow))
    }
    /// The pinned version number.
    async fn version(&self) -> i64 {
        self.head.version
    }
    /// Status.
    async fn status(&self) -> crate::graphql::enums::ExecutionStatus {
        self.head.status.into()
    }
    /// Input JSON.
    async fn input(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        let row = self.row(ctx).await?;
        Ok(Json(
            serde_json::from_str(&row.input).unwrap_or(Value::Null),
        ))
    }
    /// Output JSON: the outputs of the steps nothing depends on, by step id.
    async fn output(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Json<Value>>> {
        Ok(json_of(self.row(ctx).await?.output.as_deref()))
    }
    /// Why it failed, timed out or was cancelled.
    async fn error(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.row(ctx).await?.error.clone())
    }
    /// The idempotency key it was started with.
    async fn idempotency_key(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(self.row(ctx).await?.idempotency_key.clone())
    }
    /// What started it: `user:<uuid>`, `apikey:<uuid>` or `schedule:<uuid>` (the
    /// global ID of the same object is `triggerId`).
    async fn trigger(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.row(ctx).await?.started_by.clone())
    }
    /// The global ID of the user, API key or schedule that started it.
    async fn trigger_id(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ID>> {
        Ok(crate::graphql::relay::global_id_of_ref(
            &self.row(ctx).await?.started_by,
        ))
    }
    /// The user who started it (null for API keys and schedules).
    async fn started_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(uid) = self.row(ctx).await?.started_by_user else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .users()
            .load_one(uid)
            .await
            .map_err(load_error)?
            .map(User))
    }
    /// The execution this one retries.
    async fn retry_of(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Execution>> {
        let Some(id) = self.row(ctx).await?.retry_of else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .executions()
            .load_one(id)
            .await
            .map_err(load_error)?
            .map(Execution::from))
    }
    /// Per-step records, in definition order.
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ExecutionStep>> {
        Ok(Loaders::of(ctx)?
            .steps()
            .load_one(self.head.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .map(ExecutionStep)
            .collect())
    }
    /// Sequence number of the latest event (subscribers use it to detect gaps).
    async fn sequence(&self) -> i64 {
        self.head.seq
    }
    /// Times a worker claimed it (more than 1 after a worker crash or shutdown).
    async fn claims(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.row(ctx).await?.claims)
    }
    /// Execution-level timeout.
    async fn timeout_seconds(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.row(ctx).await?.timeout_seconds)
    }
    /// Prompt tokens over all steps.
    async fn prompt_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.row(ctx).await?.prompt_tokens)
    }
    /// Completion tokens over all steps.
    async fn completion_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.row(ctx).await?.completion_tokens)
    }
    /// Cost over all steps, USD; null when any LLM call's model has no price (the
    /// total is unknown, not $0).
    async fn cost_usd(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<f64>> {
        let row = self.row(ctx).await?;
        Ok((row.unpriced_calls == 0).then_some(row.cost_usd))
    }
    /// Why a QUEUED execution has not started, or a RUNNING one's GPU step waits (null
    /// otherwise).
    async fn waiting_reason(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        let a = app(ctx)?;
        if !matches!(
            self.head.status,
            ExecutionStatus::Queued | ExecutionStatus::Running
        ) {
            return Ok(None);
        }
        let row = self.row(ctx).await?;
        let tenant_id = row.tenant_id;
        // GPU work: the placer's or the GPU reservation's reason.
        let placement =
            crate::cluster::store::placement(&a.db, tenant_id, &self.head.id.to_string()).await?;
        if let Some(reason) = placement.and_then(|p| p.waiting_reason) {
            return Ok(Some(reason));
        }
        if self.head.status != ExecutionStatus::Queued || row.lease_owner.is_some() {
            return Ok(None);
        }
        let tenant = crate::tenancy::store::find(&a.db, tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let running =
            store::running_count(&a.db, tenant_id, crate::db::ids::db_time(a.clock.now())).await?;
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
        utc(self.head.created_at)
    }
    /// First start.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.head.started_at.map(utc)
    }
    /// End.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.head.finished_at.map(utc)
    }
    /// From start to end, ms (null until both exist).
    async fn duration_ms(&self) -> Option<i64> {
        match (self.head.started_at, self.head.finished_at) {
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
    /// Cost of the priced LLM calls, USD (calls to a model without a price are not in
    /// it; their executions show a null `costUsd`).
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
