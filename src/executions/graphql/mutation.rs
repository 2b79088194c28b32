//! Execution mutations: start, cancel, retry.

use super::*;

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
