//! Execution queries (with the look-ahead prefetch of nested fields).

use super::*;

/// Execution queries.
#[derive(Default)]
pub struct ExecutionQuery;

pub(super) async fn visible_workflow_ids(
    ctx: &Context<'_>,
    p: &Principal,
) -> AppResult<Option<Vec<WorkflowId>>> {
    crate::workflows::service::visible_ids(app(ctx)?, p).await
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
                status: f.status.map(|s| {
                    super::super::model::ExecutionStatus::from(s)
                        .as_str()
                        .to_owned()
                }),
            },
            page.after.map(ExecutionId),
            page.limit,
        )
        .await?;
        prefetch(ctx, &rows).await?;
        Ok(page.finish(
            rows.into_iter().map(Execution::from).collect(),
            total,
            |e| e.key().0,
        ))
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
pub(super) async fn prefetch(ctx: &Context<'_>, rows: &[ExecutionRow]) -> AppResult<()> {
    let node = ctx.look_ahead().field("edges").field("node");
    let loaders = Loaders::of(ctx)?;
    if node.field("steps").exists() {
        loaders
            .steps()
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("workflow").exists() {
        loaders
            .workflows()
            .load_many(rows.iter().map(|r| r.workflow_id))
            .await
            .map_err(load_error)?;
    }
    if node.field("startedBy").exists() {
        loaders
            .users()
            .load_many(rows.iter().filter_map(|r| r.started_by_user))
            .await
            .map_err(load_error)?;
    }
    Ok(())
}
