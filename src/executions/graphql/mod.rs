//! GraphQL types and fields for executions: queries, mutations and the two
//! subscriptions (`executionUpdated`, `executionEvents`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde_json::Value;

use super::model::{
    EventKind, ExecutionEvent, ExecutionHead, ExecutionId, ExecutionRow, ExecutionStatus,
    StepRunRow,
};
use super::service;
use super::store::{self, ListFilter};
use crate::app::App;
use crate::auth::Principal;
use crate::db::ids::WorkflowId;
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::guards::Require;
use crate::graphql::loaders::{Loaders, load_error};
use crate::graphql::principal;
use crate::graphql::relay::{Conn, NodeKind, Page, decode_expecting, to_global_id};
use crate::rbac::Permission;
use crate::tenancy::graphql::User;
use crate::workflows::graphql::Workflow;
use crate::workflows::service::sight;

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

/// Loads an execution the caller may read (`node` and `execution`); else `NOT_FOUND`.
pub async fn visible_execution(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<Execution> {
    Ok(Execution::from(visible_execution_row(ctx, id).await?))
}

/// The row of an execution the caller may read; else `NOT_FOUND`.
async fn visible_execution_row(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<ExecutionRow> {
    service::get(app(ctx)?, principal(ctx)?, ExecutionId(id)).await
}

/// The execution id of an argument.
fn execution_id(id: &ID) -> AppResult<ExecutionId> {
    Ok(ExecutionId(decode_expecting(
        id,
        NodeKind::Execution,
        "execution",
    )?))
}

fn json_of(s: Option<&str>) -> Option<Json<Value>> {
    s.and_then(|s| serde_json::from_str(s).ok()).map(Json)
}
