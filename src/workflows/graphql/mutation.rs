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
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let name = check_name(&input.name)?;
        let tags = check_tags(&input.tags)?;
        let definition = parse_definition(&input.definition.0)?;
        if input.visibility == Visibility::Private && p.user_id().is_none() {
            return Err(AppError::bad_input(
                "visibility",
                "an API key cannot own a PRIVATE workflow",
            )
            .into());
        }
        let team_id = team_for(ctx, input.visibility, input.team_id.as_ref()).await?;
        let tenant = crate::tenancy::store::find(&a.db, p.tenant_id)
            .await?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let now = db_time(a.clock.now());
        let row = WorkflowRow {
            id: WorkflowId::new(),
            tenant_id: p.tenant_id,
            name,
            description: input.description.trim().to_owned(),
            tags,
            environment: input.environment,
            visibility: input.visibility,
            owner_id: p.user_id(),
            created_by: p.actor_ref(),
            team_id,
            definition,
            latest_version: 0,
            created_at: now,
            updated_at: now,
        };
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "workflow.created",
            "workflow",
            row.id,
            Some(serde_json::json!({ "after": audit_view(&row) })),
            now,
        );
        store::insert(&a.db, &row, tenant.max_workflows, &audit).await?;
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
        let a = app(ctx)?;
        let mut row = workflow_arg(ctx, &input.workflow_id).await?;
        let before = audit_view(&row);
        if let Some(n) = &input.name {
            row.name = check_name(n)?;
        }
        if let Some(d) = &input.description {
            row.description = d.trim().to_owned();
        }
        if let Some(t) = &input.tags {
            row.tags = check_tags(t)?;
        }
        if let Some(e) = input.environment {
            row.environment = e;
        }
        if let Some(d) = &input.definition {
            row.definition = parse_definition(&d.0)?;
        }
        if input.visibility.is_some() || input.team_id.is_some() {
            let vis = input
                .visibility
                .or(Some(row.visibility))
                .unwrap_or(Visibility::Private);
            if vis == Visibility::Private && row.owner_id.is_none() {
                return Err(AppError::bad_input(
                    "visibility",
                    "a workflow without an owning user cannot be PRIVATE",
                )
                .into());
            }
            row.team_id = match input.team_id.as_ref() {
                Some(t) => team_for(ctx, vis, Some(t)).await?,
                None if vis == Visibility::Team => row
                    .team_id
                    .clone()
                    .ok_or_else(|| AppError::bad_input("teamId", "TEAM visibility needs a team"))?
                    .into(),
                None => row.team_id.clone(),
            };
            row.visibility = vis;
        }
        row.updated_at = db_time(a.clock.now());
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "workflow.updated",
            "workflow",
            row.id,
            Some(crate::audit::diff(&before, &audit_view(&row))),
            row.updated_at,
        );
        store::update(&a.db, &row, &audit).await?;
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
        let row = workflow_arg(ctx, &input.workflow_id).await?;
        let a = app(ctx)?;
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "workflow.deleted",
            "workflow",
            row.id,
            Some(serde_json::json!({ "before": audit_view(&row) })),
            db_time(a.clock.now()),
        );
        store::delete(&a.db, row.tenant_id, row.id, &audit).await?;
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
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let mut row = workflow_arg(ctx, &input.workflow_id).await?;
        let version = WorkflowVersionRow {
            id: WorkflowVersionId::new(),
            tenant_id: row.tenant_id,
            workflow_id: row.id,
            version: row.latest_version + 1,
            definition: row.definition.clone(),
            published_by: p.actor_ref(),
            created_at: db_time(a.clock.now()),
        };
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "workflow.published",
            "workflow",
            row.id,
            Some(serde_json::json!({ "version": version.version })),
            version.created_at,
        );
        store::publish(&a.db, &row, &version, &audit).await?;
        row.latest_version = version.version;
        Ok(PublishWorkflowPayload {
            workflow: Workflow(row),
            version: WorkflowVersion(version),
        })
    }
}
