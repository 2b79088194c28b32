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
        let app = app(ctx)?;
        let row = service::create(app, &origin(ctx)?, principal(ctx)?, new).await?;
        let warnings = match stored_definition(&row.definition) {
            Some(d) => definition_warnings(app, row.tenant_id, &d).await?,
            None => Vec::new(),
        };
        Ok(WorkflowPayload {
            workflow: Workflow(row),
            warnings,
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
        let app = app(ctx)?;
        let row = service::update(app, &origin(ctx)?, principal(ctx)?, id, changes).await?;
        let warnings = match stored_definition(&row.definition) {
            Some(d) => definition_warnings(app, row.tenant_id, &d).await?,
            None => Vec::new(),
        };
        Ok(WorkflowPayload {
            workflow: Workflow(row),
            warnings,
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
        let app = app(ctx)?;
        let (row, version) = service::publish(app, &origin(ctx)?, principal(ctx)?, id).await?;
        let warnings = match stored_definition(&version.definition) {
            Some(d) => definition_warnings(app, row.tenant_id, &d).await?,
            None => Vec::new(),
        };
        Ok(PublishWorkflowPayload {
            workflow: Workflow(row),
            version: WorkflowVersion(version),
            warnings,
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
