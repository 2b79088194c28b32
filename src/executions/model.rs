//! Execution rows, statuses, and the one table of allowed status transitions.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::ids::TenantId;
use crate::db::ids::{WorkflowId, WorkflowVersionId};
use crate::db::schema::{execution_events, execution_steps, executions};

pub use crate::db::ids::{ExecutionId, StepRunId};

crate::db_enum! {
    /// Lifecycle of an execution.
    pub enum ExecutionStatus {
        /// Waiting for a worker.
        Queued => "QUEUED",
        /// A worker holds its lease and runs its steps.
        Running => "RUNNING",
        /// Every step finished (or was skipped by a condition).
        Succeeded => "SUCCEEDED",
        /// A step failed after its retries.
        Failed => "FAILED",
        /// Cancelled by a user.
        Cancelled => "CANCELLED",
        /// The execution-level timeout elapsed.
        TimedOut => "TIMED_OUT",
    }
}

impl ExecutionStatus {
    /// No transition leaves a terminal status.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The allowed transitions: QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED |
    /// TIMED_OUT, and QUEUED → CANCELLED. Nothing else.
    pub const fn may_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Queued, Self::Running | Self::Cancelled)
                | (
                    Self::Running,
                    Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
                )
        )
    }

    /// Statuses that may move to `to`.
    pub fn sources_of(to: Self) -> Vec<Self> {
        [Self::Queued, Self::Running]
            .into_iter()
            .filter(|s| s.may_become(to))
            .collect()
    }
}

crate::db_enum! {
    /// Lifecycle of one step of an execution.
    pub enum StepStatus {
        /// Its dependencies are not done yet.
        Pending => "PENDING",
        /// An attempt is running.
        Running => "RUNNING",
        /// An attempt failed; the next one starts after the backoff.
        Retrying => "RETRYING",
        /// Done; its output is available to later steps.
        Succeeded => "SUCCEEDED",
        /// Failed after its last attempt.
        Failed => "FAILED",
        /// Its last attempt exceeded `timeoutSeconds`.
        TimedOut => "TIMED_OUT",
        /// Not run: a condition chose the other branch, all its dependencies were skipped,
        /// or the execution ended before it could start.
        Skipped => "SKIPPED",
        /// Interrupted by cancellation or the execution timeout.
        Cancelled => "CANCELLED",
    }
}

impl StepStatus {
    /// Finished one way or another.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Skipped | Self::Cancelled
        )
    }
}

/// One row of `executions`: an execution and its queue entry.
#[derive(
    diesel::Queryable, diesel::Selectable, diesel::Insertable, diesel::QueryableByName, Debug, Clone,
)]
#[diesel(table_name = executions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ExecutionRow {
    /// Primary key (UUIDv7: also the queue order).
    pub id: ExecutionId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The pinned version's row.
    pub version_id: WorkflowVersionId,
    /// The pinned version's number.
    pub version: i64,
    /// Stored [`ExecutionStatus`].
    pub status: ExecutionStatus,
    /// JSON input.
    pub input: String,
    /// JSON output (the outputs of the steps nothing depends on).
    pub output: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Client-chosen key; the same key within 24 h returns this execution.
    pub idempotency_key: Option<String>,
    /// `user:<id>`, `apikey:<id>` or `schedule:<id>`.
    pub started_by: String,
    /// The user who started it, if a user did.
    pub started_by_user: Option<crate::tenancy::UserId>,
    /// The execution this one retries.
    pub retry_of: Option<ExecutionId>,
    /// The schedule that fired it.
    pub schedule_id: Option<String>,
    /// Execution-level timeout.
    pub timeout_seconds: i64,
    /// When the execution times out (set when it starts running).
    pub deadline_at: Option<NaiveDateTime>,
    /// The worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease lapses unless renewed.
    pub lease_expires_at: Option<NaiveDateTime>,
    /// How many times a worker claimed it (more than 1 after a crash or shutdown).
    pub claims: i64,
    /// Sequence number of the latest event.
    pub seq: i64,
    /// Prompt tokens over all steps.
    pub prompt_tokens: i64,
    /// Completion tokens over all steps.
    pub completion_tokens: i64,
    /// Cost over all steps, USD.
    pub cost_usd: f64,
    /// Enqueue time.
    pub created_at: NaiveDateTime,
    /// First start.
    pub started_at: Option<NaiveDateTime>,
    /// End.
    pub finished_at: Option<NaiveDateTime>,
    /// Last change.
    pub updated_at: NaiveDateTime,
    /// LLM calls of its steps whose model has no price: the cost is unknown.
    pub unpriced_calls: i64,
    /// The W3C trace context of the request that queued it (`traceparent[;tracestate]`),
    /// continued by the worker that runs it; `None` when traces are off.
    pub trace_context: Option<String>,
}

/// What a list of executions shows: an execution without its input, output, error and
/// bookkeeping columns. `recentExecutions` selecting only fields answered from these
/// (see `Execution::HEAD_FIELDS`) reads 8 columns per row instead of 29.
#[derive(diesel::Queryable, diesel::Selectable, Debug, Clone, Copy)]
#[diesel(table_name = executions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ExecutionHead {
    /// Primary key.
    pub id: ExecutionId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The pinned version's number.
    pub version: i64,
    /// Stored [`ExecutionStatus`].
    pub status: ExecutionStatus,
    /// Sequence number of the latest event.
    pub seq: i64,
    /// Enqueue time.
    pub created_at: NaiveDateTime,
    /// First start.
    pub started_at: Option<NaiveDateTime>,
    /// End.
    pub finished_at: Option<NaiveDateTime>,
}

/// Where an execution stands, as a subscription's SNAPSHOT event tells it: 5 columns of
/// its row. Subscriptions start by reading up to 200 of these; whole rows made each start
/// allocate (and free) some 100 KiB.
#[derive(diesel::Queryable, diesel::Selectable, Debug, Clone)]
#[diesel(table_name = executions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ExecutionState {
    /// Primary key.
    pub id: ExecutionId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// Stored [`ExecutionStatus`].
    pub status: ExecutionStatus,
    /// Sequence number of the latest event.
    pub seq: i64,
    /// Latest error.
    pub error: Option<String>,
}

impl From<&ExecutionRow> for ExecutionState {
    fn from(r: &ExecutionRow) -> Self {
        Self {
            id: r.id,
            workflow_id: r.workflow_id,
            status: r.status,
            seq: r.seq,
            error: r.error.clone(),
        }
    }
}

impl From<&ExecutionRow> for ExecutionHead {
    fn from(r: &ExecutionRow) -> Self {
        Self {
            id: r.id,
            workflow_id: r.workflow_id,
            version: r.version,
            status: r.status,
            seq: r.seq,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// One row of `execution_steps`.
#[derive(
    diesel::Queryable, diesel::Selectable, diesel::Insertable, diesel::QueryableByName, Debug, Clone,
)]
#[diesel(table_name = execution_steps)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct StepRunRow {
    /// Primary key.
    pub id: StepRunId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The execution.
    pub execution_id: ExecutionId,
    /// The step's id in the definition.
    pub step_id: String,
    /// The step's kind.
    pub kind: String,
    /// Position in the definition.
    pub position: i64,
    /// Stored [`StepStatus`].
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempt: i64,
    /// Start of the latest attempt.
    pub started_at: Option<NaiveDateTime>,
    /// End.
    pub finished_at: Option<NaiveDateTime>,
    /// JSON output.
    pub output: Option<String>,
    /// Latest error.
    pub error: Option<String>,
    /// LLM prompt tokens.
    pub prompt_tokens: i64,
    /// LLM completion tokens.
    pub completion_tokens: i64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// LLM calls whose model has no price: the cost is unknown.
    pub unpriced_calls: i64,
}

/// One row of `execution_events`: the durable log behind subscriptions.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = execution_events)]
#[diesel(treat_none_as_default_value = false)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct EventRow {
    /// Primary key.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The execution.
    pub execution_id: ExecutionId,
    /// Per-execution sequence number, from 1 without gaps.
    pub seq: i64,
    /// The [`ExecutionEvent`] as JSON.
    pub payload: String,
    /// When.
    pub created_at: NaiveDateTime,
}

impl crate::events::BusEvent for ExecutionEvent {
    fn key(&self) -> (uuid::Uuid, i64) {
        (self.execution_id.0, self.seq)
    }

    fn wakes_workers(&self) -> bool {
        self.status == ExecutionStatus::Queued
    }
}

/// What happened.
#[derive(Copy, Clone, Eq, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// The current state, sent first to every subscriber (not stored).
    Snapshot,
    /// The execution changed status.
    StatusChanged,
    /// A step changed status.
    StepChanged,
}

/// One event of an execution, as stored, published on the bus, and streamed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionEvent {
    /// Owning tenant (subscribers of other tenants never see it).
    pub tenant_id: TenantId,
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its workflow.
    pub workflow_id: WorkflowId,
    /// Per-execution sequence number.
    pub seq: i64,
    /// What happened.
    pub kind: EventKind,
    /// The execution's status after the event.
    pub status: ExecutionStatus,
    /// The step, for step events.
    pub step_id: Option<String>,
    /// The step's new status.
    pub step_status: Option<StepStatus>,
    /// The step's attempt.
    pub attempt: Option<i64>,
    /// Error text, for failures.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}
