//! Inputs, filters and payloads of the execution fields.

use super::*;
use crate::graphql::enums::ExecutionStatus;

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

/// Filter of `executionEvents`.
#[derive(InputObject, Default)]
pub struct ExecutionEventsFilter {
    /// Only this workflow's executions.
    pub workflow_id: Option<ID>,
    /// Only events that leave an execution in this status.
    pub status: Option<ExecutionStatus>,
}
