//! Workflow mutations: create, update, publish, delete.

use super::*;

/// Workflow mutations.
#[derive(Default)]
pub struct WorkflowMutation;

#[Object]
impl WorkflowMutation {
    /// Creates a workflow with a validated draft definition.
    #[graphql(guard = "Require(Permission::WorkflowsCreate)")]
    async fn create_workflow(
        &self,
        ctx: &Context<'_>,
        input: CreateWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let new = service::NewWorkflow {
            definition: parse_definition(&input.definition.0)?,
            team_id: input.team_id.as_ref().map(team_id).transpose()?,
            name: input.name,
            description: input.description,
            tags: input.tags,
            environment: input.environment.into(),
            visibility: input.visibility.into(),
        };
        let row = service::create(app(ctx)?, &origin(ctx)?, principal(ctx)?, new).await?;
        Ok(WorkflowPayload {
            workflow: Workflow(row),
        })
    }

    /// Edits a workflow's draft and metadata.
    #[graphql(guard = "Require(Permission::WorkflowsUpdate)")]
    async fn update_workflow(
        &self,
        ctx: &Context<'_>,
        input: UpdateWorkflowInput,
    ) -> async_graphql::Result<WorkflowPayload> {
        let id = workflow_id(&input.workflow_id)?;
        let changes = service::WorkflowChanges {
            definition: input
                .definition
                .as_ref()
                .map(|d| parse_definition(&d.0))
                .transpose()?,
            team_id: input.team_id.as_ref().map(team_id).transpose()?,
            name: input.name,
            description: input.description,
            tags: input.tags,
            environment: input.environment.map(Into::into),
            visibility: input.visibility.map(Into::into),
        };
        let row = service::update(app(ctx)?, &origin(ctx)?, principal(ctx)?, id, changes).await?;
        Ok(WorkflowPayload {
            workflow: Workflow(row),
        })
    }

    /// Deletes a workflow and its versions.
    #[graphql(guard = "Require(Permission::WorkflowsDelete)")]
    async fn delete_workflow(
        &self,
        ctx: &Context<'_>,
        input: WorkflowIdInput,
    ) -> async_graphql::Result<DeleteWorkflowPayload> {
        let id = workflow_id(&input.workflow_id)?;
        service::delete(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
        Ok(DeleteWorkflowPayload {
            deleted_workflow_id: input.workflow_id,
        })
    }

    /// Publishes the current draft as the next immutable version.
    #[graphql(guard = "Require(Permission::WorkflowsPublish)")]
    async fn publish_workflow(
        &self,
        ctx: &Context<'_>,
        input: WorkflowIdInput,
    ) -> async_graphql::Result<PublishWorkflowPayload> {
        let id = workflow_id(&input.workflow_id)?;
        let (row, version) =
            service::publish(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
        Ok(PublishWorkflowPayload {
            workflow: Workflow(row),
            version: WorkflowVersion(version),
        })
    }
}

fn team_id(id: &ID) -> AppResult<crate::tenancy::teams::TeamId> {
    Ok(crate::tenancy::teams::TeamId(decode_expecting(
        id,
        NodeKind::Team,
        "team",
    )?))
}
