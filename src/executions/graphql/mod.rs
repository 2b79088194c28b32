//! GraphQL types and fields for executions: queries, mutations and the two
//! subscriptions (`executionUpdated`, `executionEvents`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::Value;

use super::model::{
    EventKind, ExecutionEvent, ExecutionId, ExecutionRow, ExecutionStatus, StepRunRow, StepStatus,
};
use super::service::{self, StartRequest};
use super::store::{self, ListFilter};
use crate::app::App;
use crate::auth::{Principal, principal};
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::loaders::{Loaders, load_error};
use crate::graphql::relay::{Conn, NodeKind, Page, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};
use crate::tenancy::graphql::User;
use crate::workflows::graphql::{Workflow, sight, visible_workflow_row};
use crate::workflows::model::WorkflowId;
use crate::workflows::store::Sight;

mod inputs;
mod mutation;
mod query;
mod schedules;
mod subscription;
mod types;
pub use inputs::*;
pub use mutation::*;
pub use query::*;
pub use schedules::*;
pub use subscription::*;
pub use types::*;

/// Loads an execution the caller may see (its workflow is visible); else `NOT_FOUND`.
pub async fn visible_execution(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<Execution> {
    let p = principal(ctx)?;
    let row = service::find(app(ctx)?, p.tenant_id, ExecutionId(id)).await?;
    visible_workflow_row(ctx, row.workflow_id)
        .await
        .map_err(|_| AppError::not_found("execution"))?;
    if !p.permissions.contains(&Permission::ExecutionsRead) {
        return Err(AppError::forbidden(
            "this requires the executions.read permission",
        ));
    }
    Ok(Execution(row))
}

async fn execution_arg(ctx: &Context<'_>, id: &ID) -> AppResult<ExecutionRow> {
    let uuid = decode_expecting(id, NodeKind::Execution, "execution")?;
    let p = principal(ctx)?;
    let row = service::find(app(ctx)?, p.tenant_id, ExecutionId(uuid)).await?;
    visible_workflow_row(ctx, row.workflow_id)
        .await
        .map_err(|_| AppError::not_found("execution"))?;
    Ok(row)
}

fn json_of(s: Option<&str>) -> Option<Json<Value>> {
    s.and_then(|s| serde_json::from_str(s).ok()).map(Json)
}
