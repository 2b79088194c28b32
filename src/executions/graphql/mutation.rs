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
        let start = service::StartInput {
            workflow_id: WorkflowId(decode_expecting(
                &input.workflow_id,
                NodeKind::Workflow,
                "workflow",
            )?),
            version: input.version,
            input: input
                .input
                .map_or(Value::Object(Default::default()), |j| j.0),
            idempotency_key: input.idempotency_key,
            timeout_seconds: input.timeout_seconds,
        };
        crate::auth::limits::check_expensive(app(ctx)?, principal(ctx)?).await?;
        let (row, deduplicated) = service::start_for(
            app(ctx)?,
            &crate::graphql::origin(ctx)?,
            principal(ctx)?,
            start,
        )
        .await?;
        Ok(StartExecutionPayload {
            execution: Execution::from(row),
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
        let id = execution_id(&input.execution_id)?;
        let row = service::cancel_for(
            app(ctx)?,
            &crate::graphql::origin(ctx)?,
            principal(ctx)?,
            id,
        )
        .await?;
        Ok(ExecutionPayload {
            execution: Execution::from(row),
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
        let id = execution_id(&input.execution_id)?;
        let row = service::retry(
            app(ctx)?,
            &crate::graphql::origin(ctx)?,
            principal(ctx)?,
            id,
        )
        .await?;
        Ok(ExecutionPayload {
            execution: Execution::from(row),
        })
    }
}
