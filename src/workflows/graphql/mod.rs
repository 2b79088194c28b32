//! GraphQL types and fields for workflows.

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::dag::{Definition, DefinitionError};
use super::model::{WorkflowId, WorkflowRow, WorkflowVersionRow};
use super::service;
use super::store::{Filter, Order};
use crate::db::ids::utc;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::graphql::guards::Require;
use crate::graphql::loaders::{Loaders, load_error};
use crate::graphql::principal;
use crate::graphql::relay::{Conn, NodeKind, OffsetPage, decode_expecting, to_global_id};
use crate::graphql::{app, origin};
use crate::rbac::Permission;
use crate::tenancy::graphql::User;

mod inputs;
mod mutation;
mod query;
mod types;
pub use inputs::*;
pub use mutation::*;
pub use query::*;
pub use types::*;

/// Loads a workflow the caller may read (the `node` and `workflow` fields); anything it
/// may not see is `NOT_FOUND`.
pub async fn visible_workflow(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<Workflow> {
    Ok(Workflow(
        service::get(app(ctx)?, principal(ctx)?, WorkflowId(id)).await?,
    ))
}

/// The workflow id of an argument.
fn workflow_id(id: &ID) -> AppResult<WorkflowId> {
    Ok(WorkflowId(decode_expecting(
        id,
        NodeKind::Workflow,
        "workflow",
    )?))
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
    let list: Vec<serde_json::Value> = errors
        .iter()
        .map(|e| {
            serde_json::json!({
                "step": e.step,
                "field": format!("definition.{}", e.field),
                "message": e.message,
            })
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

/// Warnings about a saved definition: `llm` steps whose `apiKeySecret` the tenant does
/// not have (yet). One read of the tenant's secret names, only when a step names one.
async fn definition_warnings(
    app: &crate::app::App,
    tenant: crate::db::ids::TenantId,
    def: &Definition,
) -> AppResult<Vec<DefinitionWarning>> {
    let wanted: Vec<(usize, &str, &str)> = def
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.config
                .get("apiKeySecret")
                .and_then(Value::as_str)
                .map(|name| (i, s.id.as_str(), name))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let have: std::collections::HashSet<String> = crate::secrets::service::list(app, tenant)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    Ok(wanted
        .into_iter()
        .filter(|(_, _, name)| !have.contains(*name))
        .map(|(i, step, name)| DefinitionWarning {
            step: step.to_owned(),
            field: format!("definition.steps[{i}].config.apiKeySecret"),
            message: format!(
                "there is no secret {name:?} in this organization: the step fails until \
                 one is set (setSecret)"
            ),
        })
        .collect())
}

/// The stored definition of a workflow or version, for warnings.
fn stored_definition(text: &str) -> Option<Definition> {
    serde_json::from_str(text).ok()
}

fn parse_definition(raw: &Value) -> AppResult<Definition> {
    Definition::parse(raw).map_err(|e| definition_error(&e))
}
