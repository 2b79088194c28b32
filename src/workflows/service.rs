//! The workflow rules, for every caller (GraphQL, executions, schedules): who sees which
//! workflow, what a valid name, tag set and visibility are, the `maxWorkflows` quota, and
//! the audit record of every change, written in the change's own transaction.

use super::dag::Definition;
use super::model::{
    Environment, Visibility, WorkflowId, WorkflowRow, WorkflowVersionId, WorkflowVersionRow,
};
use super::store::{self, Sight};
use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::auth::Principal;
use crate::db::Conn;
use crate::db::ids::TenantId;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::rbac::Permission;
use crate::tenancy::features::Feature;
use crate::tenancy::teams::TeamId;

/// What a principal may see: user managers see every workflow of the tenant; others see
/// TENANT workflows, their own and their teams'.
pub fn sight(p: &Principal) -> Sight {
    if p.permissions.contains(&Permission::UsersManage) {
        Sight::All
    } else {
        Sight::Limited { user: p.user_id() }
    }
}

/// A new workflow, as the caller asked for it (the definition already validated).
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    /// Display name (trimmed; 1 to 200 characters).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Up to 20 tags.
    pub tags: Vec<String>,
    /// Where it runs.
    pub environment: Environment,
    /// Who sees it.
    pub visibility: Visibility,
    /// The owning team, for TEAM visibility.
    pub team_id: Option<TeamId>,
    /// The draft definition.
    pub definition: Definition,
}

/// Changes to a workflow's draft and metadata; `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct WorkflowChanges {
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
    /// New team (with TEAM visibility).
    pub team_id: Option<TeamId>,
    /// New draft definition.
    pub definition: Option<Definition>,
}

/// A workflow the caller may see, whatever its permissions; `NOT_FOUND` otherwise, so a
/// hidden workflow and a missing one look the same.
pub async fn visible(app: &App, p: &Principal, id: WorkflowId) -> AppResult<WorkflowRow> {
    app.db
        .read(p.tenant_id, async |conn| visible_on(conn, p, id).await)
        .await
}

/// [`visible`] on the caller's connection.
pub async fn visible_on(
    conn: &mut Conn<'_>,
    p: &Principal,
    id: WorkflowId,
) -> AppResult<WorkflowRow> {
    let row = store::find(conn, p.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("workflow"))?;
    if !store::can_see(conn, &sight(p), &row).await? {
        return Err(AppError::not_found("workflow"));
    }
    Ok(row)
}

/// A workflow the caller may read: [`visible`], then the `workflows.read` permission.
pub async fn get(app: &App, p: &Principal, id: WorkflowId) -> AppResult<WorkflowRow> {
    let row = visible(app, p, id).await?;
    if !p.permissions.contains(&Permission::WorkflowsRead) {
        return Err(AppError::forbidden(
            "this requires the workflows.read permission",
        ));
    }
    Ok(row)
}

/// A published version of a workflow the caller is already known to see (the latest
/// when `version` is `None`).
pub async fn version_of(
    app: &App,
    wf: &WorkflowRow,
    version: Option<i64>,
) -> AppResult<Option<WorkflowVersionRow>> {
    app.db
        .read(wf.tenant_id, async |conn| {
            store::find_version(conn, wf.tenant_id, wf.id, version).await
        })
        .await
}

/// A visible workflow and one of its published versions (the latest when `version` is
/// `None`): what an execution runs.
pub async fn runnable_version(
    app: &App,
    p: &Principal,
    id: WorkflowId,
    version: Option<i64>,
) -> AppResult<(WorkflowRow, WorkflowVersionRow)> {
    app.db
        .read(p.tenant_id, async |conn| {
            let wf = visible_on(conn, p, id).await?;
            let v = store::find_version(conn, p.tenant_id, wf.id, version)
                .await?
                .ok_or_else(|| match version {
                    Some(v) => {
                        AppError::bad_input("version", format!("the workflow has no version {v}"))
                    }
                    None => AppError::bad_input(
                        "workflowId",
                        "the workflow has no published version; publish it first",
                    ),
                })?;
            Ok((wf, v))
        })
        .await
}

/// One ordered, filtered page of the workflows the caller may see, and their total;
/// `window` turns the total into the page's offset and limit.
pub async fn list(
    app: &App,
    p: &Principal,
    filter: &store::Filter,
    order: store::Order,
    window: impl FnOnce(i64) -> AppResult<(i64, i64)> + Send,
) -> AppResult<(Vec<WorkflowRow>, i64)> {
    let sight = sight(p);
    app.db
        .read(p.tenant_id, async |conn| {
            store::list(conn, p.tenant_id, &sight, filter, order, window).await
        })
        .await
}

/// Ids of the workflows the caller may see; `None` when it sees every workflow of its
/// tenant (filters executions by their workflow).
pub async fn visible_ids(app: &App, p: &Principal) -> AppResult<Option<Vec<WorkflowId>>> {
    match sight(p) {
        Sight::All => Ok(None),
        s => {
            app.db
                .read(p.tenant_id, async |conn| {
                    store::visible_ids(conn, p.tenant_id, &s).await.map(Some)
                })
                .await
        }
    }
}

/// Whether a workflow of `tenant` exists and is visible under `sight` (live streams that
/// meet a workflow created after they began).
pub async fn is_visible(
    app: &App,
    tenant: TenantId,
    sight: &Sight,
    id: WorkflowId,
) -> AppResult<bool> {
    app.db
        .read(tenant, async |conn| {
            match store::find(conn, tenant, id).await? {
                Some(row) => store::can_see(conn, sight, &row).await,
                None => Ok(false),
            }
        })
        .await
}

/// A workflow of `tenant` and its latest published version, for work the platform
/// starts on the tenant's behalf (schedules).
pub async fn latest_published(
    app: &App,
    tenant: TenantId,
    id: WorkflowId,
) -> AppResult<(WorkflowRow, WorkflowVersionRow)> {
    app.db
        .read(tenant, async |conn| {
            let wf = store::find(conn, tenant, id)
                .await?
                .ok_or_else(|| AppError::not_found("workflow"))?;
            let version = store::find_version(conn, tenant, id, None)
                .await?
                .ok_or_else(|| {
                    AppError::bad_input("workflowId", "the workflow has no published version")
                })?;
            Ok((wf, version))
        })
        .await
}

/// A published version by id, in any tenant (the engine, which runs every tenant's work).
pub async fn version_by_id(app: &App, id: WorkflowVersionId) -> AppResult<WorkflowVersionRow> {
    app.db
        .run(async |conn| store::find_version_any(conn, id).await)
        .await?
        .ok_or_else(|| AppError::not_found("workflow version"))
}

/// Creates a workflow with a draft definition. The quota is counted in the insert's
/// transaction, after the tenant's audit-chain lock: N concurrent creations at quota − 1
/// let exactly one through.
pub async fn create(
    app: &App,
    origin: &Origin,
    p: &Principal,
    new: NewWorkflow,
) -> AppResult<WorkflowRow> {
    let name = check_name(&new.name)?;
    let tags = check_tags(&new.tags)?;
    if new.visibility == Visibility::Private && p.user_id().is_none() {
        return Err(AppError::bad_input(
            "visibility",
            "an API key cannot own a PRIVATE workflow",
        ));
    }
    let team_id = team_for(app, p, new.visibility, new.team_id).await?;
    let tenant = crate::tenancy::store::find(&app.db, p.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let now = db_time(app.clock.now());
    let row = WorkflowRow {
        id: WorkflowId::new(),
        tenant_id: p.tenant_id,
        name,
        description: new.description.trim().to_owned(),
        tags,
        environment: new.environment,
        visibility: new.visibility,
        owner_id: p.user_id(),
        created_by: p.actor_ref(),
        team_id,
        definition: definition_text(&new.definition)?,
        latest_version: 0,
        created_at: now,
        updated_at: now,
    };
    let audit = Entry::change(
        origin,
        "workflow.created",
        "workflow",
        row.id,
        Some(serde_json::json!({ "after": audit_view(&row) })),
        now,
    );
    app.db
        .tx(row.tenant_id, async |conn| {
            // The tenant's audit-chain lock first: concurrent creations in the tenant
            // count one after the other, so the quota holds however many arrive at once.
            crate::audit::append(conn, &audit).await?;
            if store::count(conn, row.tenant_id).await? >= tenant.max_workflows {
                return Err(AppError::quota_exceeded(
                    "maxWorkflows",
                    tenant.max_workflows,
                    "workflows",
                ));
            }
            store::insert(conn, &row).await
        })
        .await?;
    Ok(row)
}

/// Edits a visible workflow's draft and metadata.
pub async fn update(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: WorkflowId,
    changes: WorkflowChanges,
) -> AppResult<WorkflowRow> {
    let mut row = visible(app, p, id).await?;
    let before = audit_view(&row);
    if let Some(n) = &changes.name {
        row.name = check_name(n)?;
    }
    if let Some(d) = &changes.description {
        row.description = d.trim().to_owned();
    }
    if let Some(t) = &changes.tags {
        row.tags = check_tags(t)?;
    }
    if let Some(e) = changes.environment {
        row.environment = e;
    }
    if let Some(d) = &changes.definition {
        row.definition = definition_text(d)?;
    }
    if changes.visibility.is_some() || changes.team_id.is_some() {
        let vis = changes.visibility.unwrap_or(row.visibility);
        if vis == Visibility::Private && row.owner_id.is_none() {
            return Err(AppError::bad_input(
                "visibility",
                "a workflow without an owning user cannot be PRIVATE",
            ));
        }
        row.team_id = match changes.team_id {
            Some(t) => team_for(app, p, vis, Some(t)).await?,
            None if vis == Visibility::Team => Some(
                row.team_id
                    .ok_or_else(|| AppError::bad_input("teamId", "TEAM visibility needs a team"))?,
            ),
            None => row.team_id,
        };
        row.visibility = vis;
    }
    row.updated_at = db_time(app.clock.now());
    let audit = Entry::change(
        origin,
        "workflow.updated",
        "workflow",
        row.id,
        Some(crate::audit::diff(&before, &audit_view(&row))),
        row.updated_at,
    );
    app.db
        .tx(row.tenant_id, async |conn| {
            store::update(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Deletes a visible workflow and its versions; returns what was deleted.
pub async fn delete(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: WorkflowId,
) -> AppResult<WorkflowRow> {
    let row = visible(app, p, id).await?;
    let audit = Entry::change(
        origin,
        "workflow.deleted",
        "workflow",
        row.id,
        Some(serde_json::json!({ "before": audit_view(&row) })),
        db_time(app.clock.now()),
    );
    app.db
        .tx(row.tenant_id, async |conn| {
            store::delete(conn, row.tenant_id, row.id).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Publishes a visible workflow's draft as its next immutable version. A concurrent
/// publish of the same workflow loses with `CONFLICT`; the version row, the bump and the
/// audit record commit together or not at all.
pub async fn publish(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: WorkflowId,
) -> AppResult<(WorkflowRow, WorkflowVersionRow)> {
    let mut row = visible(app, p, id).await?;
    // What the version will run must be enabled for the tenant.
    let tenant = crate::tenancy::store::find(&app.db, row.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let def: crate::workflows::dag::Definition =
        serde_json::from_str(&row.definition).map_err(AppError::internal)?;
    check_features(&tenant, &def)?;
    let version = WorkflowVersionRow {
        id: WorkflowVersionId::new(),
        tenant_id: row.tenant_id,
        workflow_id: row.id,
        version: row.latest_version + 1,
        definition: row.definition.clone(),
        published_by: p.actor_ref(),
        created_at: db_time(app.clock.now()),
    };
    let audit = Entry::change(
        origin,
        "workflow.published",
        "workflow",
        row.id,
        Some(serde_json::json!({ "version": version.version })),
        version.created_at,
    );
    app.db
        .tx(row.tenant_id, async |conn| {
            if !store::add_version(conn, &version).await? {
                return Err(AppError::conflict(
                    "the workflow was published concurrently; retry",
                ));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    row.latest_version = version.version;
    Ok((row, version))
}

/// The gated features a definition uses (`tenancy::features`): `llm` steps, steps that
/// reserve GPUs.
pub fn features_used(def: &crate::workflows::dag::Definition) -> Vec<Feature> {
    let mut out = Vec::new();
    if def.steps.iter().any(|s| s.kind == "llm") {
        out.push(Feature::LlmSteps);
    }
    if def.steps.iter().any(|s| {
        s.resources
            .as_ref()
            .is_some_and(|r| r.gpu_count > 0 || r.gpu_memory_mb > 0)
    }) {
        out.push(Feature::GpuSteps);
    }
    out
}

/// Refuses a definition that uses a feature `tenant` does not have on.
pub fn check_features(
    tenant: &crate::tenancy::TenantRow,
    def: &crate::workflows::dag::Definition,
) -> AppResult<()> {
    features_used(def)
        .into_iter()
        .try_for_each(|f| crate::tenancy::features::require(tenant, f))
}

/// The team of a TEAM workflow, which the caller must be able to see; other visibilities
/// take no team.
async fn team_for(
    app: &App,
    p: &Principal,
    visibility: Visibility,
    team: Option<TeamId>,
) -> AppResult<Option<TeamId>> {
    match (visibility, team) {
        (Visibility::Team, None) => Err(AppError::bad_input(
            "teamId",
            "TEAM visibility needs a team",
        )),
        (_, None) => Ok(None),
        (_, Some(id)) => {
            let t = crate::tenancy::service::teams::get(app, p.tenant_id, id).await?;
            if !p.permissions.contains(&Permission::TeamsRead) {
                return Err(AppError::forbidden(
                    "this requires the teams.read permission",
                ));
            }
            Ok(Some(t.id))
        }
    }
}

fn definition_text(def: &Definition) -> AppResult<String> {
    serde_json::to_string(def).map_err(AppError::internal)
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

/// What the audit trail keeps of a workflow (the definition by digest, not in full).
fn audit_view(row: &WorkflowRow) -> serde_json::Value {
    serde_json::json!({
        "name": row.name,
        "description": row.description,
        "tags": row.tags,
        "environment": row.environment,
        "visibility": row.visibility,
        "teamId": row.team_id,
        "definitionSha256": crate::seal::sha256_hex(&row.definition),
    })
}
