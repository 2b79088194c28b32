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
use super::model::{NodeRow, NodeStatus, ReservationRow};
use super::store::{self, SampleRow};
use super::{ClusterEvent, NodeEventKind, view};
use crate::app::App;
use crate::auth::{Principal, principal};
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::relay::{Conn, NodeKind as RelayKind, Page, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};

fn wall_now() -> DateTime<Utc> {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

fn uuid_of(s: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(s).unwrap_or_default()
}

/// Nodes are visible to platform admins only; to everyone else they do not exist.
fn require_platform(p: &Principal) -> AppResult<()> {
    if p.platform_admin && p.permissions.contains(&Permission::ClusterManage) {
        Ok(())
    } else {
        Err(AppError::forbidden(
            "nodes are visible to platform administrators (cluster.manage) only",
        )
        .with_detail("permission", "cluster.manage"))
    }
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

/// A serve or worker process.
pub struct ClusterNode {
    row: NodeRow,
    score: f64,
    status: NodeStatus,
}

impl ClusterNode {
    /// Wraps a row with its status as seen now.
    pub fn new(row: NodeRow, app: &App) -> Self {
        let (score, status) = view(&row, wall_now(), &app.config.cluster);
        Self { row, score, status }
    }
}

/// One GPU of a node.
pub struct Gpu {
    reading: GpuReading,
    reserved_mb: u64,
}

#[Object]
impl Gpu {
    /// Index on the node.
    async fn index(&self) -> u32 {
        self.reading.index
    }
    /// NVML UUID.
    async fn uuid(&self) -> &str {
        &self.reading.uuid
    }
    /// Product name.
    async fn name(&self) -> &str {
        &self.reading.name
    }
    /// Installed memory, MiB.
    async fn memory_total_mb(&self) -> u64 {
        self.reading.memory_total_mb
    }
    /// Memory in use (any process), MiB.
    async fn memory_used_mb(&self) -> u64 {
        self.reading.memory_used_mb
    }
    /// Memory free, MiB.
    async fn memory_free_mb(&self) -> u64 {
        self.reading.memory_free_mb
    }
    /// Memory reserved by steps and maintenance, MiB.
    async fn memory_reserved_mb(&self) -> u64 {
        self.reserved_mb
    }
    /// Kernel utilization, percent.
    async fn utilization_percent(&self) -> u32 {
        self.reading.utilization_percent
    }
    /// Die temperature, °C.
    async fn temperature_c(&self) -> u32 {
        self.reading.temperature_c
    }
    /// Board power draw, W.
    async fn power_draw_w(&self) -> f64 {
        self.reading.power_draw_w
    }
    /// MIG mode (null when unsupported).
    async fn mig_enabled(&self) -> Option<bool> {
        self.reading.mig_enabled
    }
}

/// A telemetry sample for charts.
#[derive(SimpleObject)]
pub struct TelemetrySample {
    /// When.
    pub at: DateTime<Utc>,
    /// Health score then.
    pub health_score: f64,
    /// CPU busy, percent.
    pub cpu_percent: f64,
    /// Memory in use, MiB.
    pub memory_used_mb: i64,
    /// One-minute load.
    pub load1: f64,
    /// Executions running.
    pub executions_in_flight: i64,
    /// Mean GPU utilization, percent.
    pub gpu_utilization_percent: f64,
    /// GPU memory in use over all GPUs, MiB.
    pub gpu_memory_used_mb: i64,
    /// Hottest GPU, °C.
    pub gpu_temperature_c: f64,
}

impl From<SampleRow> for TelemetrySample {
    fn from(s: SampleRow) -> Self {
        Self {
            at: utc(s.at),
            health_score: s.health_score,
            cpu_percent: s.cpu_percent,
            memory_used_mb: s.memory_used_mb,
            load1: s.load1,
            executions_in_flight: s.in_flight,
            gpu_utilization_percent: s.gpu_utilization,
            gpu_memory_used_mb: s.gpu_memory_used_mb,
            gpu_temperature_c: s.gpu_temperature_c,
        }
    }
}

/// Most samples `telemetry` returns.
const MAX_SAMPLES: i32 = 1000;

#[Object]
impl ClusterNode {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(RelayKind::ClusterNode, uuid_of(&self.row.id))
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.row.name
    }
    /// API or WORKER.
    async fn kind(&self) -> super::model::NodeKind {
        if self.row.kind == "API" {
            super::model::NodeKind::Api
        } else {
            super::model::NodeKind::Worker
        }
    }
    /// agentplane version.
    async fn version(&self) -> &str {
        &self.row.version
    }
    /// Listen address (API nodes).
    async fn address(&self) -> Option<&str> {
        self.row.address.as_deref()
    }
    /// Labels.
    async fn labels(&self) -> Json<serde_json::Value> {
        Json(serde_json::from_str(&self.row.labels).unwrap_or_default())
    }
    /// Executions it runs at once.
    async fn worker_slots(&self) -> i64 {
        self.row.worker_slots
    }
    /// Process start.
    async fn started_at(&self) -> DateTime<Utc> {
        utc(self.row.started_at)
    }
    /// Last heartbeat.
    async fn last_heartbeat_at(&self) -> DateTime<Utc> {
        utc(self.row.last_heartbeat_at)
    }
    /// Status as seen now (a silent node degrades before it goes OFFLINE).
    async fn status(&self) -> NodeStatus {
        self.status
    }
    /// Health score 0..1 as seen now.
    async fn health_score(&self) -> f64 {
        self.score
    }
    /// Set by `drainNode`.
    async fn draining(&self) -> bool {
        self.row.draining
    }
    /// CPU busy, percent.
    async fn cpu_percent(&self) -> f64 {
        self.row.cpu_percent
    }
    /// Memory in use, MiB.
    async fn memory_used_mb(&self) -> i64 {
        self.row.memory_used_mb
    }
    /// Installed memory, MiB.
    async fn memory_total_mb(&self) -> i64 {
        self.row.memory_total_mb
    }
    /// One-minute load.
    async fn load1(&self) -> f64 {
        self.row.load1
    }
    /// Executions running on it.
    async fn executions_in_flight(&self) -> i64 {
        self.row.in_flight
    }
    /// Failed share of its recent steps.
    async fn step_error_rate(&self) -> f64 {
        self.row.step_error_rate
    }
    /// When it went OFFLINE.
    async fn offline_at(&self) -> Option<DateTime<Utc>> {
        self.row.offline_at.map(utc)
    }
    /// Its GPUs (empty without NVML or a driver).
    async fn gpus(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Gpu>> {
        let a = app(ctx)?;
        let res = store::all_reservations(&a.db).await?;
        let mut by_gpu: HashMap<u32, u64> = HashMap::new();
        for r in res.iter().filter(|r| r.node_id == self.row.id) {
            *by_gpu.entry(r.gpu_index as u32).or_insert(0) += r.memory_mb as u64;
        }
        Ok(self
            .row
            .gpus()
            .into_iter()
            .map(|g| Gpu {
                reserved_mb: by_gpu.get(&g.index).copied().unwrap_or(0),
                reading: g,
            })
            .collect())
    }
    /// Reservations on it.
    async fn allocations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<GpuAllocation>> {
        let a = app(ctx)?;
        Ok(store::all_reservations(&a.db)
            .await?
            .into_iter()
            .filter(|r| r.node_id == self.row.id)
            .map(|r| GpuAllocation::new(r, Some(self.row.name.clone())))
            .collect())
    }
    /// Recent telemetry, oldest first (at most `last`, ≤ 1000).
    async fn telemetry(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 60)] last: i32,
    ) -> async_graphql::Result<Vec<TelemetrySample>> {
        if !(1..=MAX_SAMPLES).contains(&last) {
            return Err(AppError::bad_input(
                "last",
                format!("`last` must be between 1 and {MAX_SAMPLES}"),
            )
            .into());
        }
        let a = app(ctx)?;
        Ok(store::samples(&a.db, &self.row.id, i64::from(last))
            .await?
            .into_iter()
            .map(TelemetrySample::from)
            .collect())
    }
}

/// GPU memory reserved on a node: by a running step, or by an admin for maintenance.
pub struct GpuAllocation {
    row: ReservationRow,
    node_name: Option<String>,
}

impl GpuAllocation {
    fn new(row: ReservationRow, node_name: Option<String>) -> Self {
        Self { row, node_name }
    }
}

#[Object]
impl GpuAllocation {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        to_global_id(RelayKind::GpuAllocation, uuid_of(&self.row.id))
    }
    /// The node's ID.
    async fn node_id(&self) -> ID {
        to_global_id(RelayKind::ClusterNode, uuid_of(&self.row.node_id))
    }
    /// The node's name.
    async fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }
    /// GPU index on the node.
    async fn gpu_index(&self) -> i64 {
        self.row.gpu_index
    }
    /// Reserved memory, MiB.
    async fn memory_mb(&self) -> i64 {
        self.row.memory_mb
    }
    /// The execution whose step holds it (null for maintenance).
    async fn execution_id(&self) -> Option<ID> {
        self.row
            .execution_id
            .as_deref()
            .map(|e| to_global_id(RelayKind::Execution, uuid_of(e)))
    }
    /// The step holding it.
    async fn step_id(&self) -> Option<&str> {
        self.row.step_id.as_deref()
    }
    /// Why (maintenance reservations).
    async fn reason(&self) -> Option<&str> {
        self.row.reason.as_deref()
    }
    /// When.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.row.created_at)
    }
}

/// Nodes in one status.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct NodeStatusCount {
    /// The status.
    pub status: NodeStatus,
    /// How many nodes.
    pub count: i64,
}

/// Capacity at a glance.
#[derive(SimpleObject, Clone, PartialEq)]
pub struct ClusterSummary {
    /// Nodes per status (every status listed).
    pub nodes_by_status: Vec<NodeStatusCount>,
    /// GPUs on nodes that are not OFFLINE.
    pub gpus_total: i64,
    /// Their memory, MiB.
    pub gpu_memory_total_mb: i64,
    /// In use on them (NVML), MiB.
    pub gpu_memory_used_mb: i64,
    /// Reserved by steps and maintenance, MiB.
    pub gpu_memory_reserved_mb: i64,
    /// QUEUED executions (the caller's tenant; the whole platform for platform admins).
    pub queue_depth: i64,
    /// Age of the oldest of them, seconds (0 when none).
    pub oldest_queued_seconds: i64,
}

/// What the autoscaler should aim for.
#[derive(SimpleObject)]
pub struct ScalingRecommendation {
    /// Live worker nodes (not draining, not OFFLINE).
    pub current_workers: i64,
    /// Recommended worker nodes.
    pub desired_workers: i64,
    /// Why.
    pub reason: String,
}

/// Computes the summary for `scope` (a tenant, or everything).
pub async fn summary(
    app: &App,
    scope: Option<crate::tenancy::TenantId>,
) -> AppResult<ClusterSummary> {
    let nodes = store::all_nodes(&app.db).await?;
    let res = store::all_reservations(&app.db).await?;
    let (depth, oldest) = store::queue_stats(&app.db, scope).await?;
    let now = wall_now();
    let mut counts: HashMap<NodeStatus, i64> = HashMap::new();
    let (mut gpus, mut total, mut used) = (0i64, 0i64, 0i64);
    for n in &nodes {
        let (_, st) = view(n, now, &app.config.cluster);
        *counts.entry(st).or_insert(0) += 1;
        if st != NodeStatus::Offline {
            for g in n.gpus() {
                gpus += 1;
                total += g.memory_total_mb as i64;
                used += g.memory_used_mb as i64;
            }
        }
    }
    let app_now = app.clock.now();
    Ok(ClusterSummary {
        nodes_by_status: NodeStatus::ALL
            .iter()
            .map(|s| NodeStatusCount {
                status: *s,
                count: counts.get(s).copied().unwrap_or(0),
            })
            .collect(),
        gpus_total: gpus,
        gpu_memory_total_mb: total,
        gpu_memory_used_mb: used,
        gpu_memory_reserved_mb: res.iter().map(|r| r.memory_mb).sum(),
        queue_depth: depth,
        oldest_queued_seconds: oldest
            .map(|o| (db_time(app_now) - o).num_seconds().max(0))
            .unwrap_or(0),
    })
}

/// The scaling rule: enough worker nodes for everything running and queued at the
/// current slots per node; one more when work has waited over a minute; one fewer when
/// under a third of the slots are busy and nothing waits. GPU work that no node can fit
/// is called out, since more of the same nodes would not help.
pub async fn recommend(app: &App) -> AppResult<ScalingRecommendation> {
    let nodes = store::all_nodes(&app.db).await?;
    let now = wall_now();
    let live: Vec<&NodeRow> = nodes
        .iter()
        .filter(|n| {
            let (_, st) = view(n, now, &app.config.cluster);
            n.worker_slots > 0 && !matches!(st, NodeStatus::Offline | NodeStatus::Draining)
        })
        .collect();
    let current = live.len() as i64;
    let slots: i64 = live.iter().map(|n| n.worker_slots).sum();
    let per_node = if current > 0 {
        (slots / current).max(1)
    } else {
        4
    };
    let (queued, oldest) = store::queue_stats(&app.db, None).await?;
    let running = store::running_total(&app.db).await?;
    let wait = oldest
        .map(|o| (db_time(app.clock.now()) - o).num_seconds().max(0))
        .unwrap_or(0);
    let demand = running + queued;
    let mut desired = ((demand + per_node - 1) / per_node).max(1);
    let mut reason = format!(
        "{running} running and {queued} queued executions at {per_node} per node need {desired} worker node(s)"
    );
    if queued > 0 && wait > 60 && desired <= current {
        desired = current + 1;
        reason =
            format!("{queued} execution(s) queued, the oldest for {wait} s: add a worker node");
    } else if queued == 0 && current > 1 && slots > 0 && running * 3 < slots {
        desired = desired.max(current - 1);
        reason = format!("{running} of {slots} slots busy and nothing queued: one node can go");
    }
    let unfit = store::open_placements(&app.db)
        .await?
        .into_iter()
        .filter(|(p, _)| {
            p.node_id.is_none()
                && p.waiting_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("no node can fit"))
        })
        .count();
    if unfit > 0 {
        reason.push_str(&format!(
            "; {unfit} execution(s) need more GPU memory than any node has: add larger GPU nodes"
        ));
    }
    Ok(ScalingRecommendation {
        current_workers: current,
        desired_workers: desired,
        reason,
    })
}

/// Node filter.
#[derive(InputObject, Default)]
pub struct NodeFilter {
    /// Only this status.
    pub status: Option<NodeStatus>,
    /// Only this kind.
    pub kind: Option<super::model::NodeKind>,
    /// Only nodes with at least one GPU.
    pub has_gpus: Option<bool>,
}

/// The cluster.
pub struct Cluster;

#[Object]
impl Cluster {
    /// Every node (platform admins), ordered by id.
    #[graphql(complexity = "crate::graphql::relay::page_cost(first, None, child_complexity)")]
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        filter: Option<NodeFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Conn<ClusterNode>> {
        let p = principal(ctx)?;
        require_platform(p)?;
        let page = Page::from_args(after, None, first, None)?;
        let a = app(ctx)?;
        let f = filter.unwrap_or_default();
        let all: Vec<ClusterNode> = store::all_nodes(&a.db)
            .await?
            .into_iter()
            .map(|r| ClusterNode::new(r, a))
            .filter(|n| f.status.is_none_or(|s| n.status == s))
            .filter(|n| f.kind.is_none_or(|k| n.row.kind == k.as_str()))
            .filter(|n| f.has_gpus.is_none_or(|g| g != n.row.gpus().is_empty()))
            .collect();
        let total = all.len() as i64;
        let rows: Vec<ClusterNode> = all
            .into_iter()
            .filter(|n| page.after.is_none_or(|after| uuid_of(&n.row.id) > after))
            .take(usize::try_from(page.limit + 1).unwrap_or(usize::MAX))
            .collect();
        Ok(page.finish(rows, total, |n| uuid_of(&n.row.id)))
    }

    /// One node (platform admins).
    async fn node(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ClusterNode> {
        let uuid = decode_expecting(&id, RelayKind::ClusterNode, "node")?;
        Ok(visible_node(ctx, uuid).await?)
    }

    /// Capacity and queue at a glance.
    async fn summary(&self, ctx: &Context<'_>) -> async_graphql::Result<ClusterSummary> {
        let p = principal(ctx)?;
        Ok(summary(app(ctx)?, scope_of(p)).await?)
    }

    /// GPU allocations: the caller's tenant's (every one, for platform admins).
    async fn allocations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<GpuAllocation>> {
        let p = principal(ctx)?;
        let a = app(ctx)?;
        let rows = if require_platform(p).is_ok() {
            store::all_reservations(&a.db).await?
        } else {
            store::tenant_reservations(&a.db, p.tenant_id).await?
        };
        let names: HashMap<String, String> = store::all_nodes(&a.db)
            .await?
            .into_iter()
            .map(|n| (n.id, n.name))
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name = names.get(&r.node_id).cloned();
                GpuAllocation::new(r, name)
            })
            .collect())
    }

    /// How many worker nodes the platform should run (platform admins).
    async fn scaling_recommendation(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ScalingRecommendation> {
        require_platform(principal(ctx)?)?;
        Ok(recommend(app(ctx)?).await?)
    }
}

fn scope_of(p: &Principal) -> Option<crate::tenancy::TenantId> {
    if require_platform(p).is_ok() {
        None
    } else {
        Some(p.tenant_id)
    }
}

/// Cluster queries.
#[derive(Default)]
pub struct ClusterQuery;

#[Object]
impl ClusterQuery {
    /// The cluster: nodes and scaling for platform admins; the summary and own GPU
    /// allocations for tenant users.
    #[graphql(guard = "Require(Permission::ClusterRead)")]
    async fn cluster(&self) -> Cluster {
        Cluster
    }
}

/// `drainNode` / `undrainNode` input.
#[derive(InputObject)]
pub struct NodeIdInput {
    /// The node.
    pub node_id: ID,
}

/// Result of `drainNode` / `undrainNode`.
#[derive(SimpleObject)]
pub struct NodePayload {
    /// The node after the change.
    pub node: ClusterNode,
}

/// `allocateGpu` input.
#[derive(InputObject)]
pub struct AllocateGpuInput {
    /// The node.
    pub node_id: ID,
    /// A specific GPU (default: best fit).
    pub gpu_index: Option<u32>,
    /// Memory to hold, MiB.
    pub memory_mb: u64,
    /// Why (shown to operators).
    pub reason: String,
}

/// Result of `allocateGpu`.
#[derive(SimpleObject)]
pub struct AllocateGpuPayload {
    /// The reservation.
    pub allocation: GpuAllocation,
}

/// `releaseGpu` input.
#[derive(InputObject)]
pub struct ReleaseGpuInput {
    /// The reservation.
    pub allocation_id: ID,
}

/// Result of `releaseGpu`.
#[derive(SimpleObject)]
pub struct ReleaseGpuPayload {
    /// The released reservation's ID.
    pub allocation_id: ID,
    /// Memory freed, MiB.
    pub memory_mb: i64,
}

/// Cluster mutations (platform admins).
#[derive(Default)]
pub struct ClusterMutation;

async fn node_arg(ctx: &Context<'_>, id: &ID) -> AppResult<String> {
    require_platform(principal(ctx)?)?;
    Ok(decode_expecting(id, RelayKind::ClusterNode, "node")?.to_string())
}

#[Object]
impl ClusterMutation {
    /// Stops a node from claiming new work; it finishes what it runs. `CONFLICT` for an
    /// OFFLINE node.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn drain_node(
        &self,
        ctx: &Context<'_>,
        input: NodeIdInput,
    ) -> async_graphql::Result<NodePayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        let a = app(ctx)?;
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "node.drained",
            "node",
            &id,
            None,
            now,
        );
        let row = store::set_draining(&a.db, &id, true, now, &audit).await?;
        tracing::info!(node = %row.id, name = %row.name, "node draining");
        Ok(NodePayload {
            node: ClusterNode::new(row, a),
        })
    }

    /// Lets a drained node claim work again.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn undrain_node(
        &self,
        ctx: &Context<'_>,
        input: NodeIdInput,
    ) -> async_graphql::Result<NodePayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        let a = app(ctx)?;
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "node.undrained",
            "node",
            &id,
            None,
            now,
        );
        let row = store::set_draining(&a.db, &id, false, now, &audit).await?;
        Ok(NodePayload {
            node: ClusterNode::new(row, a),
        })
    }

    /// Reserves GPU memory by hand (maintenance). `BAD_USER_INPUT` when larger than the
    /// GPU, `CONFLICT` when the memory is taken or the node is OFFLINE.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn allocate_gpu(
        &self,
        ctx: &Context<'_>,
        input: AllocateGpuInput,
    ) -> async_graphql::Result<AllocateGpuPayload> {
        let id = node_arg(ctx, &input.node_id).await?;
        if input.memory_mb == 0 {
            return Err(AppError::bad_input("memoryMb", "memoryMb must be positive").into());
        }
        let reason = input.reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(
                AppError::bad_input("reason", "give a reason of 1 to 500 characters").into(),
            );
        }
        let a = app(ctx)?;
        let p = principal(ctx)?;
        // A request larger than every GPU in the cluster is a mistake, not a wait.
        let largest = store::all_nodes(&a.db)
            .await?
            .iter()
            .flat_map(|n| n.gpus().into_iter().map(|g| g.memory_total_mb))
            .max()
            .unwrap_or(0);
        if input.memory_mb > largest {
            return Err(AppError::bad_input(
                "memoryMb",
                format!(
                    "{} MiB is more than any GPU in the cluster has (largest: {largest} MiB)",
                    input.memory_mb
                ),
            )
            .into());
        }
        let now = db_time(wall_now());
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "gpu.allocated",
            "gpu_allocation",
            "",
            None,
            now,
        );
        let row = store::reserve_manual(
            &a.db,
            &store::ManualRequest {
                node_id: &id,
                gpu_index: input.gpu_index,
                memory_mb: input.memory_mb,
                reason,
                by: &p.actor_ref(),
                now,
            },
            &audit,
        )
        .await?;
        let name = store::find_node(&a.db, &id).await?.map(|n| n.name);
        Ok(AllocateGpuPayload {
            allocation: GpuAllocation::new(row, name),
        })
    }

    /// Releases a GPU reservation.
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn release_gpu(
        &self,
        ctx: &Context<'_>,
        input: ReleaseGpuInput,
    ) -> async_graphql::Result<ReleaseGpuPayload> {
        require_platform(principal(ctx)?)?;
        let id = decode_expecting(
            &input.allocation_id,
            RelayKind::GpuAllocation,
            "GPU allocation",
        )?;
        let a = app(ctx)?;
        let audit = crate::audit::Entry::change(
            &crate::audit::graphql::origin(ctx)?,
            "gpu.released",
            "gpu_allocation",
            id,
            None,
            db_time(wall_now()),
        );
        let row = store::release_manual(&a.db, &id.to_string(), &audit).await?;
        Ok(ReleaseGpuPayload {
            allocation_id: input.allocation_id,
            memory_mb: row.memory_mb,
        })
    }
}

/// A node health event.
#[derive(SimpleObject)]
pub struct NodeHealthEvent {
    /// Heartbeat or status change.
    pub kind: NodeEventKind,
    /// The status before (status changes of known nodes).
    pub previous_status: Option<NodeStatus>,
    /// The node now.
    pub node: ClusterNode,
}

/// Cluster subscriptions.
#[derive(Default)]
pub struct ClusterSubscription;

#[Subscription]
impl ClusterSubscription {
    /// Node heartbeats (at most one per node per heartbeat interval) and status changes,
    /// for one node or all (platform admins).
    #[graphql(guard = "Require(Permission::ClusterManage)")]
    async fn node_health(
        &self,
        ctx: &Context<'_>,
        node_id: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = NodeHealthEvent> + use<>> {
        require_platform(principal(ctx)?)?;
        let only = node_id
            .as_ref()
            .map(|id| decode_expecting(id, RelayKind::ClusterNode, "node").map(|u| u.to_string()))
            .transpose()?;
        let a: Arc<App> = app(ctx)?.clone();
        let mut rx = a.bus.subscribe_cluster();
        let stop = a.shutdown.clone();
        Ok(async_stream::stream! {
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => {
                        if let ClusterEvent::Node { node, kind, previous } = ev.as_ref() {
                            let node: &NodeRow = node;
                            if only.as_ref().is_some_and(|o| o != &node.id) {
                                continue;
                            }
                            yield NodeHealthEvent {
                                kind: *kind,
                                previous_status: *previous,
                                node: ClusterNode::new(node.clone(), &a),
                            };
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    /// The cluster summary: first the current one, then each time it changes.
    #[graphql(guard = "Require(Permission::ClusterRead)")]
    async fn cluster_summary(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = ClusterSummary> + use<>> {
        let scope = scope_of(principal(ctx)?);
        let a: Arc<App> = app(ctx)?.clone();
        let mut rx = a.bus.subscribe_cluster();
        let stop = a.shutdown.clone();
        let first = summary(&a, scope).await?;
        Ok(async_stream::stream! {
            let mut last = first.clone();
            yield first;
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) if matches!(ev.as_ref(), ClusterEvent::Tick) => {
                        match summary(&a, scope).await {
                            Ok(s) if s != last => {
                                last = s.clone();
                                yield s;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = ?e, "cluster summary failed"),
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }
}
