//! Workflow queries, written once for both backends and scoped to a tenant. Every
//! function takes the caller's connection ([`Conn`]) and opens no transaction: the
//! service ([`super::service`]) decides what commits together.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{Visibility, WorkflowId, WorkflowRow, WorkflowVersionId, WorkflowVersionRow};
use crate::db::Conn;
use crate::db::ids::{TenantId, UserId};
use crate::db::schema::{team_members, workflow_versions, workflows};
use crate::error::AppResult;
use crate::on_conn;
use crate::tenancy::teams::TeamId;

diesel::define_sql_function!(
    /// SQL `lower()`, the same on SQLite and PostgreSQL.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text
);

/// What a caller may see: everything, or TENANT workflows plus its own and its teams'.
#[derive(Debug, Clone)]
pub enum Sight {
    /// User managers see every workflow of the tenant.
    All,
    /// Others see TENANT workflows, their own, and their teams'.
    Limited {
        /// The caller's user id (none for API keys).
        user: Option<UserId>,
    },
}

/// Filters for `workflows`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Has this tag.
    pub tag: Option<String>,
    /// In this environment (stored form).
    pub environment: Option<String>,
    /// Name contains this, case-insensitively.
    pub name_contains: Option<String>,
}

/// Sort order for `workflows`.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// By name.
    Name(bool),
    /// By creation time.
    CreatedAt(bool),
    /// By last change.
    UpdatedAt(bool),
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Ids of the teams a user belongs to.
async fn teams_of(conn: &mut Conn<'_>, tenant: TenantId, user: UserId) -> AppResult<Vec<TeamId>> {
    Ok(on_conn!(conn, |conn| {
        team_members::table
            .filter(team_members::tenant_id.eq(tenant))
            .filter(team_members::user_id.eq(user))
            .select(team_members::team_id)
            .load::<TeamId>(conn)
            .await?
    }))
}

/// Whether `row` is visible under `sight`.
pub async fn can_see(conn: &mut Conn<'_>, sight: &Sight, row: &WorkflowRow) -> AppResult<bool> {
    Ok(match sight {
        Sight::All => true,
        Sight::Limited { user } => {
            row.visibility == Visibility::Tenant
                || (user.is_some() && row.owner_id == *user)
                || match (user, &row.team_id, row.visibility) {
                    (Some(u), Some(team), Visibility::Team) => {
                        teams_of(conn, row.tenant_id, *u).await?.contains(team)
                    }
                    _ => false,
                }
        }
    })
}

/// Inserts a workflow.
pub async fn insert(conn: &mut Conn<'_>, row: &WorkflowRow) -> AppResult<()> {
    on_conn!(conn, |conn| {
        diesel::insert_into(workflows::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Loads a workflow of `tenant`.
pub async fn find(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: WorkflowId,
) -> AppResult<Option<WorkflowRow>> {
    Ok(on_conn!(conn, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .filter(workflows::id.eq(id))
            .select(WorkflowRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// The oldest workflow of `tenant` with exactly this name (the demo finds its own).
pub async fn find_by_name(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    name: &str,
) -> AppResult<Option<WorkflowRow>> {
    Ok(on_conn!(conn, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .filter(workflows::name.eq(name))
            .order(workflows::created_at.asc())
            .select(WorkflowRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Writes a workflow's editable columns.
pub async fn update(conn: &mut Conn<'_>, row: &WorkflowRow) -> AppResult<()> {
    on_conn!(conn, |conn| {
        diesel::update(
            workflows::table
                .filter(workflows::tenant_id.eq(row.tenant_id))
                .filter(workflows::id.eq(row.id)),
        )
        .set((
            workflows::name.eq(&row.name),
            workflows::description.eq(&row.description),
            workflows::tags.eq(&row.tags),
            workflows::environment.eq(&row.environment),
            workflows::visibility.eq(&row.visibility),
            workflows::team_id.eq(&row.team_id),
            workflows::definition.eq(&row.definition),
            workflows::updated_at.eq(row.updated_at),
        ))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Deletes a workflow and its versions.
pub async fn delete(conn: &mut Conn<'_>, tenant: TenantId, id: WorkflowId) -> AppResult<()> {
    on_conn!(conn, |conn| {
        diesel::delete(
            workflow_versions::table
                .filter(workflow_versions::tenant_id.eq(tenant))
                .filter(workflow_versions::workflow_id.eq(id)),
        )
        .execute(conn)
        .await?;
        diesel::delete(
            workflows::table
                .filter(workflows::tenant_id.eq(tenant))
                .filter(workflows::id.eq(id)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Counts a tenant's workflows (quota).
pub async fn count(conn: &mut Conn<'_>, tenant: TenantId) -> AppResult<i64> {
    Ok(on_conn!(conn, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .count()
            .get_result(conn)
            .await?
    }))
}

/// One ordered, filtered page of visible workflows, and the total.
pub async fn list(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    sight: &Sight,
    filter: &Filter,
    order: Order,
    window: impl FnOnce(i64) -> AppResult<(i64, i64)> + Send,
) -> AppResult<(Vec<WorkflowRow>, i64)> {
    let teams = match sight {
        Sight::Limited { user: Some(u) } => teams_of(conn, tenant, *u).await?,
        _ => Vec::new(),
    };
    Ok(on_conn!(conn, |conn| {
        // Boxed queries are backend-specific: build inside the per-backend body.
        let build = || {
            let mut q = workflows::table
                .filter(workflows::tenant_id.eq(tenant))
                .into_boxed();
            if let Sight::Limited { user } = sight {
                let me = user
                    .map(|u| u.0.hyphenated().to_string())
                    .unwrap_or_default();
                q = q.filter(
                    workflows::visibility
                        .eq(Visibility::Tenant)
                        .or(workflows::owner_id
                            .eq(me)
                            .and(workflows::owner_id.is_not_null()))
                        .or(workflows::visibility
                            .eq(Visibility::Team)
                            .and(workflows::team_id.eq_any(teams.clone()))),
                );
            }
            if let Some(t) = &filter.tag {
                q = q.filter(
                    workflows::tags
                        .like(format!("%\"{}\"%", like_escape(t)))
                        .escape('\\'),
                );
            }
            if let Some(e) = &filter.environment {
                q = q.filter(workflows::environment.eq(e.clone()));
            }
            if let Some(n) = &filter.name_contains {
                q = q.filter(
                    lower(workflows::name)
                        .like(format!("%{}%", like_escape(&n.to_lowercase())))
                        .escape('\\'),
                );
            }
            q
        };
        // Boxed, so diesel would prepare both statements anew on every page; their text
        // varies only with which filters and order are present (a handful of shapes),
        // so they are cached under their text.
        let total: i64 = crate::db::cached(build().count()).get_result(conn).await?;
        let (offset, limit) = window(total)?;
        let q = build().select(WorkflowRow::as_select());
        let q = match order {
            Order::Name(true) => q.order((workflows::name.asc(), workflows::id.asc())),
            Order::Name(false) => q.order((workflows::name.desc(), workflows::id.desc())),
            Order::CreatedAt(true) => q.order((workflows::created_at.asc(), workflows::id.asc())),
            Order::CreatedAt(false) => {
                q.order((workflows::created_at.desc(), workflows::id.desc()))
            }
            Order::UpdatedAt(true) => q.order((workflows::updated_at.asc(), workflows::id.asc())),
            Order::UpdatedAt(false) => {
                q.order((workflows::updated_at.desc(), workflows::id.desc()))
            }
        };
        let rows = crate::db::cached(q.offset(offset).limit(limit))
            .load(conn)
            .await?;
        (rows, total)
    }))
}

/// Records the next version of a workflow: bumps `latest_version` from
/// `version.version - 1` and inserts the version row. `false` when the bump found another
/// number (a concurrent publish won); nothing is written then.
pub async fn add_version(conn: &mut Conn<'_>, version: &WorkflowVersionRow) -> AppResult<bool> {
    on_conn!(conn, |conn| {
        let updated = diesel::update(
            workflows::table
                .filter(workflows::tenant_id.eq(version.tenant_id))
                .filter(workflows::id.eq(version.workflow_id))
                .filter(workflows::latest_version.eq(version.version - 1)),
        )
        .set(workflows::latest_version.eq(version.version))
        .execute(conn)
        .await?;
        if updated != 1 {
            return Ok(false);
        }
        diesel::insert_into(workflow_versions::table)
            .values(version)
            .execute(conn)
            .await?;
    });
    Ok(true)
}

/// Versions of several workflows of `tenant`, newest first, in one statement (dataloader).
pub async fn versions_by_workflows(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    ids: &[WorkflowId],
) -> AppResult<Vec<WorkflowVersionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on_conn!(conn, |conn| {
        workflow_versions::table
            .filter(workflow_versions::tenant_id.eq(tenant))
            .filter(workflow_versions::workflow_id.eq_any(ids))
            .order((
                workflow_versions::workflow_id.asc(),
                workflow_versions::version.desc(),
            ))
            .select(WorkflowVersionRow::as_select())
            .load(conn)
            .await?
    }))
}

/// A version by id, any tenant (the engine, which runs every tenant's work).
pub async fn find_version_any(
    conn: &mut Conn<'_>,
    id: WorkflowVersionId,
) -> AppResult<Option<WorkflowVersionRow>> {
    Ok(on_conn!(conn, |conn| {
        workflow_versions::table
            .filter(workflow_versions::id.eq(id))
            .select(WorkflowVersionRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// A workflow's version by number (latest when `version` is `None`).
pub async fn find_version(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    workflow: WorkflowId,
    version: Option<i64>,
) -> AppResult<Option<WorkflowVersionRow>> {
    Ok(on_conn!(conn, |conn| {
        let q = workflow_versions::table
            .filter(workflow_versions::tenant_id.eq(tenant))
            .filter(workflow_versions::workflow_id.eq(workflow))
            .select(WorkflowVersionRow::as_select())
            .into_boxed();
        let q = match version {
            Some(v) => q.filter(workflow_versions::version.eq(v)),
            None => q.order(workflow_versions::version.desc()),
        };
        q.first(conn).await.optional()?
    }))
}

/// Workflows of `tenant` by id (dataloader).
pub async fn by_ids(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    ids: &[WorkflowId],
) -> AppResult<Vec<WorkflowRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on_conn!(conn, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .filter(workflows::id.eq_any(ids))
            .select(WorkflowRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Ids of every workflow `sight` may see (filters executions by their workflow).
pub async fn visible_ids(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    sight: &Sight,
) -> AppResult<Vec<WorkflowId>> {
    let (rows, _) = list(
        conn,
        tenant,
        sight,
        &Filter::default(),
        Order::CreatedAt(true),
        |t| Ok((0, t.max(1))),
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
