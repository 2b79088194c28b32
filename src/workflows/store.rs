//! Workflow queries, written once for both backends and scoped to a tenant.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{Visibility, WorkflowId, WorkflowRow, WorkflowVersionRow};
use crate::db::DbPool;
use crate::db::schema::{team_members, workflow_versions, workflows};
use crate::error::{AppError, AppResult};
use crate::tenancy::{TenantId, UserId};

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
async fn teams_of(db: &DbPool, tenant: TenantId, user: UserId) -> AppResult<Vec<String>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        team_members::table
            .filter(team_members::tenant_id.eq(tenant))
            .filter(team_members::user_id.eq(user))
            .select(team_members::team_id)
            .load::<String>(conn)
            .await?
    }))
}

/// Whether `row` is visible under `sight`.
pub async fn can_see(db: &DbPool, sight: &Sight, row: &WorkflowRow) -> AppResult<bool> {
    Ok(match sight {
        Sight::All => true,
        Sight::Limited { user } => {
            row.visibility == Visibility::Tenant
                || (user.is_some() && row.owner_id == *user)
                || match (user, &row.team_id, row.visibility) {
                    (Some(u), Some(team), Visibility::Team) => {
                        teams_of(db, row.tenant_id, *u).await?.contains(team)
                    }
                    _ => false,
                }
        }
    })
}

/// Inserts a workflow and its audit record.
pub async fn insert(
    db: &DbPool,
    row: &WorkflowRow,
    max_workflows: i64,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
        // The tenant's audit-chain lock first: concurrent creations in the tenant count
        // one after the other, so the quota holds however many arrive at once.
        crate::audit_append!(conn, audit)?;
        let n: i64 = workflows::table
            .filter(workflows::tenant_id.eq(row.tenant_id))
            .count()
            .get_result(&mut *conn)
            .await?;
        if n >= max_workflows {
            return Err(crate::error::AppError::quota_exceeded(
                "maxWorkflows",
                max_workflows,
                "workflows",
            ));
        }
        diesel::insert_into(workflows::table)
            .values(row)
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

/// Loads a workflow of `tenant`.
pub async fn find(db: &DbPool, tenant: TenantId, id: WorkflowId) -> AppResult<Option<WorkflowRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .filter(workflows::id.eq(id))
            .select(WorkflowRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Writes a workflow's editable columns and the audit record.
pub async fn update(db: &DbPool, row: &WorkflowRow, audit: &crate::audit::Entry) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
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
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

/// Deletes a workflow and its versions, with the audit record.
pub async fn delete(
    db: &DbPool,
    tenant: TenantId,
    id: WorkflowId,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, tenant, |conn| {
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
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

/// Counts a tenant's workflows (quota).
pub async fn count(db: &DbPool, tenant: TenantId) -> AppResult<i64> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        workflows::table
            .filter(workflows::tenant_id.eq(tenant))
            .count()
            .get_result(conn)
            .await?
    }))
}

/// One ordered, filtered page of visible workflows, and the total.
pub async fn list(
    db: &DbPool,
    tenant: TenantId,
    sight: &Sight,
    filter: &Filter,
    order: Order,
    window: impl FnOnce(i64) -> AppResult<(i64, i64)> + Send,
) -> AppResult<(Vec<WorkflowRow>, i64)> {
    let teams = match sight {
        Sight::Limited { user: Some(u) } => teams_of(db, tenant, *u).await?,
        _ => Vec::new(),
    };
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
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
        let total: i64 = build().count().get_result(conn).await?;
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
        let rows = q.offset(offset).limit(limit).load(conn).await?;
        (rows, total)
    }))
}

/// Publishes the next version of a workflow. A concurrent publish of the same workflow
/// loses with `CONFLICT` (the version number is unique and the bump is conditional).
/// The version row, the bump and the audit record commit together or not at all.
pub async fn publish(
    db: &DbPool,
    wf: &WorkflowRow,
    version: &WorkflowVersionRow,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, wf.tenant_id, |conn| {
        let updated = diesel::update(
            workflows::table
                .filter(workflows::tenant_id.eq(wf.tenant_id))
                .filter(workflows::id.eq(wf.id))
                .filter(workflows::latest_version.eq(version.version - 1)),
        )
        .set(workflows::latest_version.eq(version.version))
        .execute(conn)
        .await?;
        if updated != 1 {
            return Err(AppError::conflict(
                "the workflow was published concurrently; retry",
            ));
        }
        diesel::insert_into(workflow_versions::table)
            .values(version)
            .execute(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

/// Versions of several workflows of `tenant`, newest first, in one statement (dataloader).
pub async fn versions_by_workflows(
    db: &DbPool,
    tenant: TenantId,
    ids: &[WorkflowId],
) -> AppResult<Vec<WorkflowVersionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
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
    db: &DbPool,
    id: super::model::WorkflowVersionId,
) -> AppResult<Option<WorkflowVersionRow>> {
    Ok(crate::db_run!(db, |conn| {
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
    db: &DbPool,
    tenant: TenantId,
    workflow: WorkflowId,
    version: Option<i64>,
) -> AppResult<Option<WorkflowVersionRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
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
    db: &DbPool,
    tenant: TenantId,
    ids: &[WorkflowId],
) -> AppResult<Vec<WorkflowRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
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
    db: &DbPool,
    tenant: TenantId,
    sight: &Sight,
) -> AppResult<Vec<WorkflowId>> {
    let (rows, _) = list(
        db,
        tenant,
        sight,
        &Filter::default(),
        Order::CreatedAt(true),
        |t| Ok((0, t.max(1))),
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
