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

mod inputs;
mod mutation;
mod query;
mod types;
pub use inputs::*;
pub use mutation::*;
pub use query::*;
pub use types::*;

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
        (_, Some(id)) => crate::tenancy::graphql::visible_team(
            ctx,
            decode_expecting(id, NodeKind::Team, "team")?,
        )
        .await
        .map(|t| Some(t.0.id.to_string())),
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
