//! Cluster rows, statuses, and the two pure decisions: a node's health score, and which
//! node (and which of its GPUs) a GPU request is placed on.

use std::collections::HashMap;

use chrono::NaiveDateTime;

use super::gpu::GpuReading;
use crate::db::ids::{ExecutionId, TenantId};
use crate::db::schema::{execution_placements, gpu_reservations, nodes};

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `serve`: the API (and its embedded workers, if any).
    Api,
    /// `worker`: workers only.
    Worker,
}

impl NodeKind {
    /// Stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "API",
            Self::Worker => "WORKER",
        }
    }
}

crate::db_enum! {
    /// A node's condition.
    #[derive(PartialOrd, Ord)]
    pub enum NodeStatus {
        /// Score ≥ 0.8.
        Healthy => "HEALTHY",
        /// 0.5 ≤ score < 0.8: still receives work.
        Degraded => "DEGRADED",
        /// Score < 0.5: receives no new GPU placements.
        Unhealthy => "UNHEALTHY",
        /// Finishing current work; claims nothing new.
        Draining => "DRAINING",
        /// No heartbeat within the offline timeout: its leases and reservations were released.
        Offline => "OFFLINE",
    }
}

impl NodeStatus {
    /// Status of a live node from its score and drain flag.
    pub fn of(score: f64, draining: bool) -> Self {
        if draining {
            Self::Draining
        } else if score >= 0.8 {
            Self::Healthy
        } else if score >= 0.5 {
            Self::Degraded
        } else {
            Self::Unhealthy
        }
    }
}

/// One row of `nodes`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = nodes)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct NodeRow {
    /// The process's node id (UUIDv7, new each start).
    pub id: String,
    /// Display name (`AGENTPLANE_NODE_NAME`, else host-pid).
    pub name: String,
    /// `API` or `WORKER`.
    pub kind: String,
    /// agentplane version.
    pub version: String,
    /// Listen address (API nodes).
    pub address: Option<String>,
    /// JSON object of labels.
    pub labels: String,
    /// Executions it runs at once (0: claims nothing).
    pub worker_slots: i64,
    /// Process start.
    pub started_at: NaiveDateTime,
    /// Last heartbeat (wall clock of the node).
    pub last_heartbeat_at: NaiveDateTime,
    /// Stored [`NodeStatus`].
    pub status: NodeStatus,
    /// Set by `drainNode`.
    pub draining: bool,
    /// 0..1.
    pub health_score: f64,
    /// CPU busy, percent.
    pub cpu_percent: f64,
    /// MiB.
    pub memory_used_mb: i64,
    /// MiB.
    pub memory_total_mb: i64,
    /// One-minute load.
    pub load1: f64,
    /// Executions running on it.
    pub in_flight: i64,
    /// Failed share of the steps it finished recently.
    pub step_error_rate: f64,
    /// JSON array of [`GpuReading`].
    pub gpus: String,
    /// When the reaper marked it OFFLINE.
    pub offline_at: Option<NaiveDateTime>,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

impl NodeRow {
    /// Parsed GPU readings.
    pub fn gpus(&self) -> Vec<GpuReading> {
        serde_json::from_str(&self.gpus).unwrap_or_default()
    }
}

/// One row of `gpu_reservations`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = gpu_reservations)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ReservationRow {
    /// UUIDv7.
    pub id: String,
    /// The node.
    pub node_id: String,
    /// The GPU's index on the node.
    pub gpu_index: i64,
    /// The tenant it counts against (none for maintenance reservations).
    pub tenant_id: Option<TenantId>,
    /// The execution whose step holds it.
    pub execution_id: Option<ExecutionId>,
    /// The step holding it.
    pub step_id: Option<String>,
    /// Reserved memory, MiB.
    pub memory_mb: i64,
    /// Why (maintenance reservations).
    pub reason: Option<String>,
    /// `system`, or the admin's actor reference.
    pub created_by: String,
    /// When.
    pub created_at: NaiveDateTime,
}

/// One row of `execution_placements`: a GPU execution's need and where it goes.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = execution_placements)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct PlacementRow {
    /// The execution.
    pub execution_id: ExecutionId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Largest per-GPU memory any one step needs, MiB.
    pub gpu_memory_mb: i64,
    /// GPUs that step needs.
    pub gpu_count: i64,
    /// The node chosen (only it may claim the execution).
    pub node_id: Option<String>,
    /// Why it is not placed yet.
    pub waiting_reason: Option<String>,
    /// When it was placed.
    pub placed_at: Option<NaiveDateTime>,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// Inputs of the health score.
#[derive(Debug, Clone, Copy)]
pub struct HealthInputs {
    /// Seconds since the last heartbeat.
    pub heartbeat_age_secs: f64,
    /// The heartbeat interval.
    pub heartbeat_secs: f64,
    /// When a node counts as OFFLINE.
    pub offline_after_secs: f64,
    /// CPU busy, percent.
    pub cpu_percent: f64,
    /// Memory used / total, 0..1.
    pub memory_fraction: f64,
    /// Hottest GPU, °C (0 without GPUs).
    pub gpu_max_temperature_c: f64,
    /// Fullest GPU's used / total memory, 0..1.
    pub gpu_max_memory_fraction: f64,
    /// Failed / finished steps recently, 0..1.
    pub step_error_rate: f64,
}

/// 1 below `ok`, falling linearly to 0 at `bad`.
fn falloff(x: f64, ok: f64, bad: f64) -> f64 {
    if x <= ok {
        1.0
    } else if x >= bad {
        0.0
    } else {
        1.0 - (x - ok) / (bad - ok)
    }
}

/// The health score, 0..1: heartbeat freshness multiplies a weighted mean of CPU
/// pressure (25 %), memory pressure (20 %), GPU temperature (15 %), GPU memory
/// pressure (15 %) and step error rate (25 %). A stale heartbeat pulls everything down;
/// each pressure term is 1 until its threshold and 0 at its limit.
pub fn health_score(h: &HealthInputs) -> f64 {
    let fresh = falloff(
        h.heartbeat_age_secs,
        h.heartbeat_secs * 2.0,
        h.offline_after_secs.max(h.heartbeat_secs * 2.0 + 0.001),
    );
    let cpu = falloff(h.cpu_percent, 85.0, 100.0);
    let mem = falloff(h.memory_fraction, 0.85, 0.98);
    let temp = falloff(h.gpu_max_temperature_c, 80.0, 95.0);
    let gmem = falloff(h.gpu_max_memory_fraction, 0.90, 1.0);
    let errors = 1.0 - h.step_error_rate.clamp(0.0, 1.0);
    let weighted = 0.25 * cpu + 0.20 * mem + 0.15 * temp + 0.15 * gmem + 0.25 * errors;
    (fresh * weighted).clamp(0.0, 1.0)
}

/// A GPU as the placer sees it.
#[derive(Debug, Clone)]
pub struct GpuCapacity {
    /// Index on the node.
    pub index: u32,
    /// Installed memory, MiB.
    pub total_mb: u64,
    /// Already reserved, MiB.
    pub reserved_mb: u64,
}

impl GpuCapacity {
    /// Memory still reservable.
    pub fn free_mb(&self) -> u64 {
        self.total_mb.saturating_sub(self.reserved_mb)
    }
}

/// A candidate node.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Node id.
    pub node_id: String,
    /// Its health score.
    pub health: f64,
    /// Its GPUs.
    pub gpus: Vec<GpuCapacity>,
}

/// Picks `count` GPUs of a node that each have `mb` free, tightest first (best fit).
/// Returns their indices and the memory left over on them, or `None`.
pub fn fit_gpus(gpus: &[GpuCapacity], mb: u64, count: usize) -> Option<(Vec<u32>, u64)> {
    let mut fitting: Vec<&GpuCapacity> = gpus.iter().filter(|g| g.free_mb() >= mb).collect();
    if fitting.len() < count || count == 0 {
        return None;
    }
    fitting.sort_by_key(|g| (g.free_mb(), g.index));
    let chosen = &fitting[..count];
    Some((
        chosen.iter().map(|g| g.index).collect(),
        chosen.iter().map(|g| g.free_mb() - mb).sum(),
    ))
}

/// Health from which a node counts as fully healthy for placement: scores move with
/// momentary host load (one busy CPU sample takes a quarter off), and that noise must not
/// decide where work goes.
pub const HEALTHY_ENOUGH: f64 = 0.8;

/// Best fit weighted by health: among nodes that can fit the request, the one whose
/// chosen GPUs would have the least memory left over relative to their size, plus twice
/// the node's health missing below [`HEALTHY_ENOUGH`] (a sick node loses to a healthy
/// one unless it fits much more tightly). Ties go to the lower node id.
pub fn place(candidates: &[Candidate], mb: u64, count: usize) -> Option<(String, Vec<u32>)> {
    let mut best: Option<(f64, &str, Vec<u32>)> = None;
    for c in candidates {
        let Some((idx, left)) = fit_gpus(&c.gpus, mb, count) else {
            continue;
        };
        let size: u64 = c
            .gpus
            .iter()
            .filter(|g| idx.contains(&g.index))
            .map(|g| g.total_mb)
            .sum();
        let cost = left as f64 / size.max(1) as f64
            + 2.0 * (HEALTHY_ENOUGH - c.health.clamp(0.0, 1.0)).max(0.0);
        let better = match &best {
            None => true,
            Some((b, id, _)) => {
                cost < *b - 1e-9 || ((cost - *b).abs() <= 1e-9 && c.node_id.as_str() < *id)
            }
        };
        if better {
            best = Some((cost, &c.node_id, idx));
        }
    }
    best.map(|(_, id, idx)| (id.to_owned(), idx))
}

/// Reserved memory per (node, GPU index).
pub fn reserved_by_gpu(rows: &[ReservationRow]) -> HashMap<(String, u32), u64> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry((r.node_id.clone(), r.gpu_index as u32))
            .or_insert(0) += r.memory_mb as u64;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> HealthInputs {
        HealthInputs {
            heartbeat_age_secs: 1.0,
            heartbeat_secs: 5.0,
            offline_after_secs: 30.0,
            cpu_percent: 20.0,
            memory_fraction: 0.4,
            gpu_max_temperature_c: 50.0,
            gpu_max_memory_fraction: 0.2,
            step_error_rate: 0.0,
        }
    }

    #[test]
    fn health_falls_with_pressure_and_staleness() {
        assert!((health_score(&inputs()) - 1.0).abs() < 1e-9);
        let hot = HealthInputs {
            gpu_max_temperature_c: 95.0,
            cpu_percent: 100.0,
            ..inputs()
        };
        let s = health_score(&hot);
        assert!((s - 0.6).abs() < 1e-9, "{s}");
        assert_eq!(NodeStatus::of(s, false), NodeStatus::Degraded);
        let failing = HealthInputs {
            step_error_rate: 1.0,
            cpu_percent: 100.0,
            memory_fraction: 0.99,
            ..inputs()
        };
        assert_eq!(
            NodeStatus::of(health_score(&failing), false),
            NodeStatus::Unhealthy
        );
        let stale = HealthInputs {
            heartbeat_age_secs: 30.0,
            ..inputs()
        };
        assert_eq!(health_score(&stale), 0.0);
        assert_eq!(NodeStatus::of(1.0, true), NodeStatus::Draining);
    }

    fn gpu(index: u32, total_mb: u64, reserved_mb: u64) -> GpuCapacity {
        GpuCapacity {
            index,
            total_mb,
            reserved_mb,
        }
    }

    #[test]
    fn placement_is_best_fit_weighted_by_health() {
        let small = Candidate {
            node_id: "a".into(),
            health: 1.0,
            gpus: vec![gpu(0, 24_000, 0)],
        };
        let big = Candidate {
            node_id: "b".into(),
            health: 1.0,
            gpus: vec![gpu(0, 80_000, 0), gpu(1, 80_000, 70_000)],
        };
        let both = [small.clone(), big.clone()];
        // Fits both: the tighter GPU wins.
        assert_eq!(place(&both, 16_000, 1), Some(("a".into(), vec![0])));
        // Only the big node fits.
        assert_eq!(place(&both, 40_000, 1), Some(("b".into(), vec![0])));
        // Best fit inside a node: GPU 1 has 10 000 free.
        assert_eq!(place(&both, 8_000, 1), Some(("b".into(), vec![1])));
        // Nothing fits.
        assert_eq!(place(&both, 90_000, 1), None);
        assert_eq!(place(&both, 1_000, 3), None);
        // A busy moment (one CPU sample at 100 %: a quarter off) decides nothing.
        let busy = Candidate {
            health: 0.75,
            ..small.clone()
        };
        assert_eq!(
            place(&[busy, big.clone()], 16_000, 1),
            Some(("a".into(), vec![0]))
        );
        // A sick node loses a close race.
        let sick = Candidate {
            health: 0.55,
            ..small
        };
        assert_eq!(place(&[sick, big], 16_000, 1), Some(("b".into(), vec![0])));
    }
}
