//! The cluster: every `serve` and `worker` process is a node that registers itself,
//! heartbeats with host and GPU telemetry (NVML behind [`gpu::GpuProbe`]), and takes part
//! in the shared control loop ([`agent`]): the reaper that turns silent nodes OFFLINE and
//! releases their leases and GPU reservations (failover), the placer that assigns GPU
//! executions to the best-fitting healthy node, and the monitor that streams node health.
//!
//! Liveness uses each node's wall clock (not the app's injectable clock): heartbeats are
//! compared across processes, so they need a shared notion of now.

pub mod agent;
pub mod capacity;
pub mod gpu;
pub mod graphql;
pub mod host;
pub mod model;
pub mod service;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use chrono::{DateTime, Utc};

use crate::config::ClusterConfig;
use model::{HealthInputs, NodeRow, NodeStatus, health_score};

/// This process as a node: its id and the counters its heartbeat reports.
#[derive(Debug)]
pub struct NodeState {
    /// Node id (also the prefix of its workers' lease owners).
    pub id: String,
    /// Set from the node row on each heartbeat: a draining node claims nothing new.
    pub draining: AtomicBool,
    /// Executions running here.
    pub in_flight: AtomicI64,
    /// Steps finished successfully here.
    pub steps_ok: AtomicU64,
    /// Steps that failed or timed out here.
    pub steps_failed: AtomicU64,
}

impl NodeState {
    /// A node with the given id and zeroed counters.
    pub fn new(id: String) -> Self {
        Self {
            id,
            draining: AtomicBool::new(false),
            in_flight: AtomicI64::new(0),
            steps_ok: AtomicU64::new(0),
            steps_failed: AtomicU64::new(0),
        }
    }
}

/// What kind of node event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEventKind {
    /// A new heartbeat (at most one per node per heartbeat interval).
    Heartbeat,
    /// The status changed (including a node's first appearance).
    StatusChanged,
}

/// An event on the cluster bus.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// A node changed.
    Node {
        /// The node as read, with its status as seen now.
        node: Box<NodeRow>,
        /// Heartbeat or status change.
        kind: NodeEventKind,
        /// The status before (status changes of known nodes).
        previous: Option<NodeStatus>,
    },
    /// The monitor finished a pass; summaries may have changed.
    Tick,
}

/// A node's score and status as seen at `now`: the stored score is recomputed with the
/// heartbeat's age, so a silent node degrades before the reaper marks it OFFLINE.
pub fn view(node: &NodeRow, now: DateTime<Utc>, cfg: &ClusterConfig) -> (f64, NodeStatus) {
    let stored = node.status;
    if stored == NodeStatus::Offline {
        return (0.0, NodeStatus::Offline);
    }
    let age = (now - node.last_heartbeat_at.and_utc())
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    let score = health_score(&inputs_of(node, age, cfg));
    (score, NodeStatus::of(score, node.draining))
}

/// Health inputs from a node row.
pub fn inputs_of(node: &NodeRow, age_secs: f64, cfg: &ClusterConfig) -> HealthInputs {
    let gpus = node.gpus();
    HealthInputs {
        heartbeat_age_secs: age_secs,
        heartbeat_secs: cfg.heartbeat.as_secs_f64(),
        offline_after_secs: cfg.offline_after.as_secs_f64(),
        cpu_percent: node.cpu_percent,
        memory_fraction: if node.memory_total_mb > 0 {
            node.memory_used_mb as f64 / node.memory_total_mb as f64
        } else {
            0.0
        },
        gpu_max_temperature_c: gpus
            .iter()
            .map(|g| f64::from(g.temperature_c))
            .fold(0.0, f64::max),
        gpu_max_memory_fraction: gpus
            .iter()
            .filter(|g| g.memory_total_mb > 0)
            .map(|g| g.memory_used_mb as f64 / g.memory_total_mb as f64)
            .fold(0.0, f64::max),
        step_error_rate: node.step_error_rate,
    }
}

/// The GPU source this configuration selects: fake GPUs when `AGENTPLANE_FAKE_GPUS` is
/// set (tests, demos), NVML otherwise.
pub fn probe(cfg: &ClusterConfig) -> Box<dyn gpu::GpuProbe> {
    match cfg.fake_gpus.as_deref().and_then(gpu::FakeProbe::parse) {
        Some(f) => {
            tracing::warn!("using fake GPUs from AGENTPLANE_FAKE_GPUS (tests and demos only)");
            Box::new(f)
        }
        None => Box::new(gpu::NvmlProbe::new()),
    }
}
