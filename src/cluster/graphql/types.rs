//! GraphQL object types of the cluster: nodes, GPUs, telemetry, allocations, summary and scaling advice.

use super::*;

/// A serve or worker process.
pub struct ClusterNode {
    pub(super) row: NodeRow,
    pub(super) score: f64,
    pub(super) status: crate::cluster::model::NodeStatus,
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
    async fn kind(&self) -> ClusterNodeKind {
        if self.row.kind == "API" {
            ClusterNodeKind::Api
        } else {
            ClusterNodeKind::Worker
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
        self.status.into()
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
    pub(super) fn new(row: ReservationRow, node_name: Option<String>) -> Self {
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
            .map(|e| to_global_id(RelayKind::Execution, e.0))
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

impl From<crate::cluster::capacity::Summary> for ClusterSummary {
    fn from(s: crate::cluster::capacity::Summary) -> Self {
        Self {
            nodes_by_status: s
                .nodes_by_status
                .into_iter()
                .map(|(status, count)| NodeStatusCount {
                    status: status.into(),
                    count,
                })
                .collect(),
            gpus_total: s.gpus_total,
            gpu_memory_total_mb: s.gpu_memory_total_mb,
            gpu_memory_used_mb: s.gpu_memory_used_mb,
            gpu_memory_reserved_mb: s.gpu_memory_reserved_mb,
            queue_depth: s.queue_depth,
            oldest_queued_seconds: s.oldest_queued_seconds,
        }
    }
}

impl From<crate::cluster::capacity::Recommendation> for ScalingRecommendation {
    fn from(r: crate::cluster::capacity::Recommendation) -> Self {
        Self {
            current_workers: r.current_workers,
            desired_workers: r.desired_workers,
            reason: r.reason,
        }
    }
}

/// The summary for `scope` (a tenant, or everything), as GraphQL.
pub async fn summary(
    app: &App,
    scope: Option<crate::tenancy::TenantId>,
) -> AppResult<ClusterSummary> {
    Ok(crate::cluster::capacity::summary(app, scope).await?.into())
}

/// The scaling recommendation, as GraphQL.
pub async fn recommend(app: &App) -> AppResult<ScalingRecommendation> {
    Ok(crate::cluster::capacity::recommend(app).await?.into())
}
