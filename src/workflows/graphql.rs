//! GraphQL types and fields for workflows.

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::dag::{Definition, DefinitionError};
use super::model::{
    Environment, Visibility, WorkflowId, WorkflowRow, WorkflowVersionId, WorkflowVersionRow,
};
use super::store::{self, Filter, Order, Sight};
use crate::auth::{Principal, principal};
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::graphql::app;
use crate::graphql::loaders::{Loaders, load_error};
use crate::graphql::relay::{Conn, NodeKind, OffsetPage, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};
use crate::tenancy::graphql::User;

/// What a principal may see.
pub(crate) fn sight(p: &Principal) -> Sight {
    if p.permissions.contains(&Permission::UsersManage) {
        Sight::All
    } else {
        Sight::Limited { user: p.user_id() }
    }
}

/// Loads a workflow the caller may see; anything else is `NOT_FOUND`.
pub async fn visible_workflow(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<Workflow> {
    let p = principal(ctx)?;
    let a = app(ctx)?;
    let row = store::find(&a.db, p.tenant_id, WorkflowId(id))
        .await?
        .ok_or_else(|| AppError::not_found("workflow"))?;
    if !store::can_see(&a.db, &sight(p), &row).await? {
        return Err(AppError::not_found("workflow"));
    }
    if !p.permissions.contains(&Permission::WorkflowsRead) {
        return Err(AppError::forbidden(
            "this requires the workflows.read permission",
        ));
    }
    Ok(Workflow(row))
}

/// A workflow the caller may see (any permission); anything else is `NOT_FOUND`.
pub async fn visible_workflow_row(ctx: &Context<'_>, id: WorkflowId) -> AppResult<WorkflowRow> {
    let p = principal(ctx)?;
    let a = app(ctx)?;
    let row = store::find(&a.db, p.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("workflow"))?;
    if !store::can_see(&a.db, &sight(p), &row).await? {
        return Err(AppError::not_found("workflow"));
    }
    Ok(row)
}

async fn workflow_arg(ctx: &Context<'_>, id: &ID) -> AppResult<WorkflowRow> {
    let uuid = decode_expecting(id, NodeKind::Workflow, "workflow")?;
    let p = principal(ctx)?;
    let a = app(ctx)?;
    let row = store::find(&a.db, p.tenant_id, WorkflowId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("workflow"))?;
    if !store::can_see(&a.db, &sight(p), &row).await? {
        return Err(AppError::not_found("workflow"));
    }
    Ok(row)
}

fn definition_error(errors: &[DefinitionError]) -> AppError {
    let first = errors.first();
    let message = first.map_or_else(
        || "invalid definition".to_owned(),
        |e| match &e.step {
            Some(s) => format!("step {s:?}: {}: {}", e.field, e.message),
            None => format!("{}: {}", e.field, e.message),
        },
    );
    let list: Vec<async_graphql::Value> = errors
        .iter()
        .map(|e| {
            let mut m = async_graphql::indexmap::IndexMap::new();
            m.insert(
                async_graphql::Name::new("step"),
                e.step
                    .clone()
                    .map_or(async_graphql::Value::Null, Into::into),
            );
            m.insert(
                async_graphql::Name::new("field"),
                format!("definition.{}", e.field).into(),
            );
            m.insert(
                async_graphql::Name::new("message"),
                e.message.clone().into(),
            );
            async_graphql::Value::Object(m)
        })
        .collect();
    let mut err = AppError::new(ErrorCode::BadUserInput, message).with_detail("errors", list);
    if let Some(f) = first {
        err = err.with_detail("field", format!("definition.{}", f.field));
        if let Some(s) = &f.step {
            err = err.with_detail("step", s.clone());
        }
    }
    err
}

fn parse_definition(raw: &Value) -> AppResult<String> {
    let def = Definition::parse(raw).map_err(|e| definition_error(&e))?;
    serde_json::to_string(&def).map_err(AppError::internal)
}

fn check_tags(tags: &[String]) -> AppResult<String> {
    if tags.len() > 20 {
        return Err(AppError::bad_input("tags", "at most 20 tags"));
    }
    let mut out = Vec::new();
    for t in tags {
        let t = t.trim().to_lowercase();
        if t.is_empty()
            || t.len() > 40
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(AppError::bad_input(
                "tags",
                format!("{t:?} is not a tag (1–40 of a-z 0-9 - _ . :)"),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    serde_json::to_string(&out).map_err(AppError::internal)
}

fn check_name(name: &str) -> AppResult<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > 200 {
        return Err(AppError::bad_input(
            "name",
            "the name must be 1 to 200 characters",
        ));
    }
    Ok(n.to_owned())
}

/// Resolves the team for TEAM visibility; other visibilities take no team.
async fn team_for(
    ctx: &Context<'_>,
    visibility: Visibility,
    team: Option<&ID>,
) -> AppResult<Option<String>> {
    match (visibility, team) {
        (Visibility::Team, None) => Err(AppError::bad_input(
            "teamId",
            "TEAM visibility needs a team",
        )),
        (_, None) => Ok(None),
        (_, Some(id)) => {
            crate::tenancy::teams::visible_team(ctx, decode_expecting(id, NodeKind::Team, "team")?)
                .await
                .map(|t| Some(t.0.id.to_string()))
        }
    }
}

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
        guard = "crate::rbac::Require(crate::rbac::Permission::AuditRead)"
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
    async fn environment(&self) -> Environment {
        self.0.environment
    }
    /// Who may see it.
    async fn visibility(&self) -> Visibility {
        self.0.visibility
    }
    /// The owning user (null when an API key created it).
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Some(uid) = self.0.owner_id else {
            return Ok(None);
        };
        Ok(Loaders::of(ctx)?
            .users
            .load_one(uid)
            .await
            .map_err(load_error)?
            .map(User))
    }
    /// The team, for TEAM visibility.
    async fn team(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::tenancy::teams::Team>> {
        let Some(t) = &self.0.team_id else {
            return Ok(None);
        };
        let Ok(uuid) = uuid::Uuid::parse_str(t) else {
            return Ok(None);
        };
        if !principal(ctx)?.permissions.contains(&Permission::TeamsRead) {
            return Ok(None);
        }
        Ok(Loaders::of(ctx)?
            .teams
            .load_one(crate::tenancy::teams::TeamId(uuid))
            .await
            .map_err(load_error)?
            .map(crate::tenancy::teams::Team))
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
            .versions
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
        #[graphql(default = 10)] first: i32,
    ) -> async_graphql::Result<Vec<crate::executions::graphql::Execution>> {
        let max = crate::graphql::loaders::RECENT_WINDOW;
        if !(1..=max).contains(&i64::from(first)) {
            return Err(AppError::bad_input("first", format!("first must be 1 to {max}")).into());
        }
        if !principal(ctx)?
            .permissions
            .contains(&Permission::ExecutionsRead)
        {
            return Ok(Vec::new());
        }
        Ok(Loaders::of(ctx)?
            .recent
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .take(usize::try_from(first).unwrap_or(10))
            .map(crate::executions::graphql::Execution)
            .collect())
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
            .stats
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
    ) -> async_graphql::Result<Vec<crate::executions::schedules::Schedule>> {
        Ok(Loaders::of(ctx)?
            .schedules
            .load_one(self.0.id)
            .await
            .map_err(load_error)?
            .unwrap_or_default()
            .into_iter()
            .map(crate::executions::schedules::Schedule)
            .collect())
    }
}

/// Filters for `workflows`.
#[derive(InputObject, Default)]
pub struct WorkflowFilter {
    /// Has this tag.
    pub tag: Option<String>,
    /// In this environment.
    pub environment: Option<Environment>,
    /// Name contains this (case-insensitive).
    pub name_contains: Option<String>,
}

/// Sort field for `workflows`.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum WorkflowOrderField {
    /// By name.
    Name,
    /// By creation time.
    CreatedAt,
    /// By last change.
    UpdatedAt,
}

/// Sort direction.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum OrderDirection {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// Ordering of `workflows`.
#[derive(InputObject)]
pub struct WorkflowOrder {
    /// Field.
    pub field: WorkflowOrderField,
    /// Direction.
    #[graphql(default_with = "OrderDirection::Asc")]
    pub direction: OrderDirection,
}

/// Input of `createWorkflow`.
#[derive(InputObject)]
pub struct CreateWorkflowInput {
    /// Display name.
    pub name: String,
    /// Free text.
    #[graphql(default)]
    pub description: String,
    /// Tags (a-z 0-9 - _ . :).
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Where it is meant to run.
    #[graphql(default_with = "Environment::Development")]
    pub environment: Environment,
    /// Who may see it.
    #[graphql(default_with = "Visibility::Tenant")]
    pub visibility: Visibility,
    /// The team, for TEAM visibility.
    pub team_id: Option<ID>,
    /// `{ "steps": [ { id, kind, config, dependsOn, retry, timeoutSeconds, resources } ] }`.
    pub definition: Json<Value>,
}

/// Input of `updateWorkflow` (drafts only; versions are immutable).
#[derive(InputObject)]
pub struct UpdateWorkflowInput {
    /// The workflow's ID.
    pub workflow_id: ID,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New environment.
    pub environment: Option<Environment>,
    /// New visibility.
    pub visibility: Option<Visibility>,
    /// New team.
    pub team_id: Option<ID>,
    /// New draft definition.
    pub definition: Option<Json<Value>>,
}

/// Input of `deleteWorkflow` and `publishWorkflow`.
#[derive(InputObject)]
pub struct WorkflowIdInput {
    /// The workflow's ID.
    pub workflow_id: ID,
}

/// Result of workflow changes.
#[derive(SimpleObject)]
pub struct WorkflowPayload {
    /// The workflow after the change.
    pub workflow: Workflow,
}

/// Result of `publishWorkflow`.
#[derive(SimpleObject)]
pub struct PublishWorkflowPayload {
    /// The workflow.
    pub workflow: Workflow,
    /// The new version.
    pub version: WorkflowVersion,
}

/// Result of `deleteWorkflow`.
#[derive(SimpleObject)]
pub struct DeleteWorkflowPayload {
    /// The deleted workflow's ID.
    pub deleted_workflow_id: ID,
}

/// Loads, in one statement each, what the selected nested fields of a page will ask for.
async fn prefetch(ctx: &Context<'_>, rows: &[WorkflowRow]) -> AppResult<()> {
    let node = ctx.look_ahead().field("edges").field("node");
    let loaders = Loaders::of(ctx)?;
    if node.field("owner").exists() {
        loaders
            .users
            .load_many(rows.iter().filter_map(|r| r.owner_id))
            .await
            .map_err(load_error)?;
    }
    if node.field("team").exists() {
        let teams = rows
            .iter()
            .filter_map(|r| r.team_id.as_deref())
            .filter_map(|t| uuid::Uuid::parse_str(t).ok())
            .map(crate::tenancy::teams::TeamId);
        loaders.teams.load_many(teams).await.map_err(load_error)?;
    }
    if node.field("recentExecutions").exists() {
        let recent = loaders
            .recent
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
        let execs: Vec<_> = recent.values().flatten().collect();
        let inner = node.field("recentExecutions");
        if inner.field("steps").exists() {
            loaders
                .steps
                .load_many(execs.iter().map(|e| e.id))
                .await
                .map_err(load_error)?;
        }
        if inner.field("startedBy").exists() {
            loaders
                .users
                .load_many(execs.iter().filter_map(|e| e.started_by_user))
                .await
                .map_err(load_error)?;
        }
        if inner.field("workflow").exists() {
            loaders
                .workflows
                .load_many(rows.iter().map(|r| r.id))
                .await
                .map_err(load_error)?;
        }
    }
    if node.field("stats").exists() {
        loaders
            .stats
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("schedules").exists() {
        loaders
            .schedules
            .load_many(rows.iter().map(|r| r.id))
            .await
            .map_err(load_error)?;
    }
    if node.field("versions").exists() {
        loaders
            .versions
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
            environment: f.environment.map(|e| e.as_str().to_owned()),
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
        let (rows, total) = store::list(
            &app(ctx)?.db,
            p.tenant_id,
            &sight(p),
            &filter,
            order,
            |total| {
                let pg = OffsetPage::from_args(after, before, first, last, total)?;
                page = Some(pg);
                Ok((pg.offset, pg.limit))
            },
        )
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

/// What the audit trail keeps of a workflow (the definition by digest, not in full).
fn audit_view(row: &WorkflowRow) -> serde_json::Value {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(row.definition.as_bytes());
    serde_json::json!({
        "name": row.name,
        "description": row.description,
        "tags": row.tags,
        "environment": row.environment,
        "visibility": row.visibility,
        "teamId": row.team_id,
        "definitionSha256": digest.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    })
}
