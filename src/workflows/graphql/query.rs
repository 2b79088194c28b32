//! Workflow queries (with the look-ahead prefetch of nested fields).

use super::*;
use crate::executions::graphql::Execution;

/// The `first` a `recentExecutions` selection asks for (variables resolved), or the
/// default when it gives none or one that is not a number.
fn requested_count(field: &async_graphql::SelectionField<'_>) -> i64 {
    let first = field.arguments().ok().and_then(|args| {
        args.into_iter()
            .find(|(name, _)| name.as_str() == "first")
            .map(|(_, v)| v)
    });
    match first {
        Some(async_graphql::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .unwrap_or(crate::graphql::loaders::RECENT_DEFAULT)
}

/// Loads, in one statement each, what the selected nested fields of a page will ask for.
pub(super) async fn prefetch(ctx: &Context<'_>, rows: &[WorkflowRow]) -> AppResult<()> {
    let node = ctx.look_ahead().field("edges").field("node");
    let loaders = Loaders::of(ctx)?;
    if node.field("owner").exists() {
        loaders
            .users()
            .load_many(rows.iter().filter_map(|r| r.owner_id))
            .await
            .map_err(load_error)?;
    }
    if node.field("team").exists() {
        let teams = rows.iter().filter_map(|r| r.team_id);
        loaders.teams().load_many(teams).await.map_err(load_error)?;
    }
    let inner = node.field("recentExecutions");
    if inner.exists() {
        // The counts the selections ask for (aliases may ask for several); one that is
        // out of range is left to the resolver, which says so.
        // Each selection is read whole or as heads, as its resolver will ask.
        let mut counts: Vec<(bool, i64)> = inner
            .selection_fields()
            .iter()
            .map(|f| (Execution::shows_head_only(f), requested_count(f)))
            .filter(|(_, n)| (1..=crate::graphql::loaders::RECENT_WINDOW).contains(n))
            .collect();
        counts.sort_unstable();
        counts.dedup();
        let (mut keys, mut head_keys) = (Vec::new(), Vec::new());
        for (heads, n) in &counts {
            let keys = if *heads { &mut head_keys } else { &mut keys };
            keys.extend(rows.iter().map(|r| (r.id, *n)));
        }
        let recent = loaders.recent().load_many(keys).await.map_err(load_error)?;
        let heads = loaders
            .recent_heads()
            .load_many(head_keys)
            .await
            .map_err(load_error)?;
        if inner.field("steps").exists() {
            let ids = recent.values().flatten().map(|e| e.id);
            let ids = ids.chain(heads.values().flatten().map(|h| h.id));
            loaders.steps().load_many(ids).await.map_err(load_error)?;
        }
        if inner.field("startedBy").exists() {
            loaders
                .users()
                .load_many(recent.values().flatten().filter_map(|e| e.started_by_user))
                .await
                .map_err(load_error)?;
        }
        if inner.field("workflow").exists() {
            loaders
                .workflows()
                .load_many(rows.iter().map(|r| r.id))
                .await
                .map_err(load_error)?;
        }
    }
    if node.field("stats").exists() {
        loaders
            .stats()
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("schedules").exists() {
        loaders
            .schedules()
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("versions").exists() {
        loaders
            .versions()
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    Ok(())
}

/// Workflow queries.
#[derive(Default)]
pub struct WorkflowQuery;

#[Object]
impl WorkflowQuery {
    /// Workflows the caller may see, filtered and ordered (default: newest first).
    #[graphql(
        complexity = "crate::graphql::relay::page_cost(first, last, child_complexity)",
        guard = "Require(Permission::WorkflowsRead)"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is a GraphQL argument of the field"
    )]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowFilter>,
        order_by: Option<WorkflowOrder>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<Conn<Workflow>> {
        let p = principal(ctx)?;
        let f = filter.unwrap_or_default();
        let filter = Filter {
            tag: f.tag.map(|t| t.trim().to_lowercase()),
            environment: f.environment.map(|e| {
                crate::workflows::model::Environment::from(e)
                    .as_str()
                    .to_owned()
            }),
            name_contains: f.name_contains,
        };
        let order = match order_by {
            None => Order::CreatedAt(false),
            Some(o) => {
                let asc = o.direction == OrderDirection::Asc;
                match o.field {
                    WorkflowOrderField::Name => Order::Name(asc),
                    WorkflowOrderField::CreatedAt => Order::CreatedAt(asc),
                    WorkflowOrderField::UpdatedAt => Order::UpdatedAt(asc),
                }
            }
        };
        let mut page = None;
        let (rows, total) = service::list(app(ctx)?, p, &filter, order, |total| {
            let pg = OffsetPage::from_args(after, before, first, last, total)?;
            page = Some(pg);
            Ok((pg.offset, pg.limit))
        })
        .await?;
        let page = page.ok_or_else(|| AppError::internal(anyhow::anyhow!("page not computed")))?;
        prefetch(ctx, &rows).await?;
        Ok(page.finish(rows.into_iter().map(Workflow).collect(), total))
    }

    /// One workflow by ID.
    #[graphql(guard = "Require(Permission::WorkflowsRead)")]
    async fn workflow(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Workflow> {
        Ok(visible_workflow(ctx, decode_expecting(&id, NodeKind::Workflow, "workflow")?).await?)
    }
}
