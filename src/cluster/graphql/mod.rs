//! GraphQL for the cluster: `cluster { nodes, node, summary, allocations,
//! scalingRecommendation }`, drain and GPU reservation mutations, and the `nodeHealth`
//! and `clusterSummary` subscriptions.
//!
//! Nodes are platform objects: only platform admins (`cluster.manage`) see them. Tenant
//! users (`cluster.read`) see the capacity summary (queue numbers of their own tenant)
//! and their own GPU allocations.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;

use super::gpu::GpuReading;
use super::model::{NodeRow, ReservationRow};
use super::service::{self, require_platform, wall_now};
use super::store::{self, SampleRow};
use super::{ClusterEvent, view};
use crate::app::App;
use crate::auth::Principal;
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::graphql::enums::{NodeEventKind, NodeKind as ClusterNodeKind, NodeStatus};
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::relay::{Conn, NodeKind as RelayKind, Page, decode_expecting, to_global_id};
use crate::graphql::{app, origin};
use crate::rbac::Permission;

mod mutation;
mod query;
mod subscription;
mod types;
pub use mutation::*;
pub use query::*;
pub use subscription::*;
pub use types::*;

fn uuid_of(s: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(s).unwrap_or_default()
}

/// A cluster node for `node(id)`: `NOT_FOUND` unless the caller is a platform admin.
pub async fn visible_node(ctx: &Context<'_>, id: uuid::Uuid) -> AppResult<ClusterNode> {
    let p = principal(ctx)?;
    if require_platform(p).is_err() {
        return Err(AppError::not_found("node"));
    }
    let a = app(ctx)?;
    let row = store::find_node(&a.db, &id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("node"))?;
    Ok(ClusterNode::new(row, a))
}

/// Most samples `telemetry` returns.
const MAX_SAMPLES: i32 = 1000;
