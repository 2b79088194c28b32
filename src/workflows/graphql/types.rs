//! GraphQL object types of workflows: Workflow and WorkflowVersion.

use super::*;

/// A workflow: an editable draft plus its published versions.
pub struct Workflow(pub WorkflowRow);

/// A published, immutable version.
pub struct WorkflowVersion(pub WorkflowVersionRow);

#[Object]
impl WorkflowVersion {
    /// 1, 2, 3, …
    async fn version(&self) -> i64 {
        self.0.version
    }
    /// The definition as published.
    async fn definition(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.definition).unwrap_or_default())
    }
    /// Who published it (`user:<id>` or `apikey:<id>`).
    async fn published_by(&self) -> &str {
        &self.0.published_by
    }
    /// When.
    async fn published_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
}

#[Object]
impl Workflow {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::Workflow, self.0.id.0)
    }
    /// Audit records about this workflow, newest first (audit.read).
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
        crate::audit::graphql::trail(ctx, "workflow", self.0.id.to_string(), None, first, after)
            .await
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Free text.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Tags.
    async fn tags(&self) -> Vec<String> {
        serde_json::from_str(&self.0.tags).unwrap_or_default()
    }
    /// Where it is meant to run.
    async fn environment(&self) -> crate::graphql::enums::Environment {
        self.0.environment.into()
    }
    /// Who may see it.
    async fn visibility(&self) -> crate::graphql::enums::Visibility {
        self.0.visibility.into()
    }
    /// The owning user (null when an API key created it).
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(uid) = self.0.owner_id else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .users()
            .load_one(uid)
            .await
            .map_err(load_error)?
            .map(User))
    }
    /// The team, for TEAM visibility.
    async fn team(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::tenancy::graphql::Team>> {
        let Some(team) = self.0.team_id else {
            return Ok(None);
        };
        if !principal(ctx)?.permissions.contains(&Permission::TeamsRead) {
            return Ok(None);
        }
        Ok(Loaders::of(ctx)?
            .teams()
            .load_one(team)
            .await
            .map_err(load_error)?
            .map(crate::tenancy::graphql::Team))
    }
    /// The draft definition (validated).
    async fn definition(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.definition).unwrap_or_default())
    }
    /// Newest published version number (null before the first publish).
    async fn latest_version(&self) -> Option<i64> {
        (self.0.latest_version > 0).then_some(self.0.latest_version)
    }
    /// Published versions, newest first.
    async fn versions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkflowVersion>> {
        Ok(Loaders::of(ctx)?
            .versions()
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .map(WorkflowVersion)
            .collect())
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        utc(self.0.updated_at)
    }
    /// The newest executions, newest first (`first`: 1–20; empty without
    /// `executions.read`).
    async fn recent_executions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "crate::graphql::loaders::RECENT_DEFAULT as i32")] first: i32,
    ) -> async_graphql::Result<crate::graphql::List<crate::executions::graphql::Execution>> {
        let max = crate::graphql::loaders::RECENT_WINDOW;
        if !(1..=max).contains(&i64::from(first)) {
            return Err(AppError::bad_input("first", format!("first must be 1 to {max}")).into());
        }
        if !principal(ctx)?
            .permissions
            .contains(&Permission::ExecutionsRead)
        {
            return Ok(crate::graphql::List(Vec::new()));
        }
        use crate::executions::graphql::Execution;
        let loaders = Loaders::of(ctx)?;
        let key = (self.0.id, i64::from(first));
        macro_rules! newest {
            ($loader:expr) => {
                $loader
                    .load_one(key)
                    .await
                    .map_err(load_error)?
                    .unwrap_or_default()
                    .into_iter()
                    .map(Execution::from)
                    .collect()
            };
        }
        // A list showing no more than heads reads 8 columns a row, not the whole row.
        Ok(crate::graphql::List(
            if Execution::shows_head_only(&ctx.field()) {
                newest!(loaders.recent_heads())
            } else {
                newest!(loaders.recent())
            },
        ))
    }
    /// Execution statistics over the last 30 days (null without `executions.read`).
    async fn stats(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::executions::graphql::WorkflowStats>> {
        if !principal(ctx)?
            .permissions
            .contains(&Permission::ExecutionsRead)
        {
            return Ok(None);
        }
        let rows = Loaders::of(ctx)?
            .stats()
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default();
        Ok(Some(crate::executions::graphql::WorkflowStats::of(&rows)))
    }
    /// Schedules that start this workflow.
    async fn schedules(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::executions::graphql::Schedule>> {
        Ok(Loaders::of(ctx)?
            .schedules()
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .map(crate::executions::graphql::Schedule)
            .collect())
    }
}
