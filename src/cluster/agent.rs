//! The node agent every process runs: register, then on each heartbeat write telemetry,
//! reap silent nodes, place waiting GPU executions, and publish what changed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::gpu::GpuProbe;
use super::host::HostProbe;
use super::model::{
    Candidate, NodeKind, NodeRow, NodeStatus, fit_gpus, health_score, place, reserved_by_gpu,
};
use super::store::{self, Beat, SampleRow};
use super::{ClusterEvent, NodeEventKind, inputs_of, view};
use crate::app::App;
use crate::db::DbPool;
use crate::db::ids::{ExecutionId, TenantId, db_time};
use crate::error::AppResult;
use crate::executions::model::ExecutionStatus;

/// How this process appears in the cluster.
#[derive(Debug, Clone)]
pub struct Registration {
    /// API or WORKER.
    pub kind: NodeKind,
    /// Executions it runs at once (0 for an API-only process).
    pub worker_slots: usize,
    /// Where it listens (API nodes).
    pub address: Option<String>,
}

fn now_wall() -> DateTime<Utc> {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

struct Agent {
    app: Arc<App>,
    db: DbPool,
    probe: Box<dyn GpuProbe>,
    host: HostProbe,
    /// (ok, failed) step counts per recent heartbeat.
    window: VecDeque<(u64, u64)>,
    last_counts: (u64, u64),
    /// Last status and heartbeat published per node.
    seen: HashMap<String, (NodeStatus, NaiveDateTime)>,
}

/// Registers this process and runs its heartbeat loop until `stop`; then marks the node
/// OFFLINE (a clean leave) so nothing waits for the timeout.
pub async fn run(app: Arc<App>, reg: Registration, stop: CancellationToken) {
    // Its own pool: heartbeats must not queue behind request load (nor count in the
    // request statement counter).
    let db = match DbPool::connect(&app.config.database_url).await {
        Ok(mut p) => {
            // Records it appends are signed like the shared pool's and wake its tails.
            p.share_with(&app.db);
            p
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster agent uses the shared pool");
            app.db.clone()
        }
    };
    let mut agent = Agent {
        probe: super::probe(&app.config.cluster),
        app,
        db,
        host: HostProbe::default(),
        window: VecDeque::new(),
        last_counts: (0, 0),
        seen: HashMap::new(),
    };
    if let Err(e) = agent.register(&reg).await {
        tracing::error!(error = ?e, "node registration failed; the cluster will not see this node");
        return;
    }
    let every = agent.app.config.cluster.heartbeat;
    loop {
        if let Err(e) = agent.tick().await {
            tracing::warn!(error = ?e, "cluster tick failed");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    if let Err(e) = agent.leave().await {
        tracing::warn!(error = ?e, "could not mark this node OFFLINE on the way out");
    }
}

impl Agent {
    fn node_id(&self) -> &str {
        &self.app.node.id
    }

    /// Telemetry now: the sample, memory total, GPU JSON and the score with a fresh
    /// heartbeat.
    fn measure(&mut self, at: NaiveDateTime) -> (SampleRow, i64, String, f64, f64) {
        let host = self.host.read();
        let gpus = self.probe.read();
        let ok = self.app.node.steps_ok.load(Ordering::Relaxed);
        let failed = self.app.node.steps_failed.load(Ordering::Relaxed);
        let delta = (ok - self.last_counts.0, failed - self.last_counts.1);
        self.last_counts = (ok, failed);
        self.window.push_back(delta);
        while self.window.len() > 12 {
            self.window.pop_front();
        }
        let (wok, wfail) = self
            .window
            .iter()
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let error_rate = if wok + wfail == 0 {
            0.0
        } else {
            wfail as f64 / (wok + wfail) as f64
        };
        let gpu_json = serde_json::to_string(&gpus).unwrap_or_else(|_| "[]".into());
        let sample = SampleRow {
            id: uuid::Uuid::now_v7().to_string(),
            node_id: self.node_id().to_owned(),
            at,
            health_score: 0.0,
            cpu_percent: host.cpu_percent,
            memory_used_mb: host.memory_used_mb as i64,
            load1: host.load1,
            in_flight: self.app.node.in_flight.load(Ordering::Relaxed),
            gpu_utilization: if gpus.is_empty() {
                0.0
            } else {
                gpus.iter()
                    .map(|g| f64::from(g.utilization_percent))
                    .sum::<f64>()
                    / gpus.len() as f64
            },
            gpu_memory_used_mb: gpus.iter().map(|g| g.memory_used_mb as i64).sum(),
            gpu_temperature_c: gpus
                .iter()
                .map(|g| f64::from(g.temperature_c))
                .fold(0.0, f64::max),
        };
        // Score as others will see it right after this heartbeat.
        let probe_row = NodeRow {
            cpu_percent: sample.cpu_percent,
            memory_used_mb: sample.memory_used_mb,
            memory_total_mb: host.memory_total_mb as i64,
            step_error_rate: error_rate,
            gpus: gpu_json.clone(),
            ..placeholder_row()
        };
        let score = health_score(&inputs_of(&probe_row, 0.0, &self.app.config.cluster));
        (
            SampleRow {
                health_score: score,
                ..sample
            },
            host.memory_total_mb as i64,
            gpu_json,
            score,
            error_rate,
        )
    }

    async fn register(&mut self, reg: &Registration) -> AppResult<()> {
        let at = db_time(now_wall());
        let (sample, mem_total, gpus, score, _) = self.measure(at);
        let cfg = &self.app.config.cluster;
        let row = NodeRow {
            id: self.node_id().to_owned(),
            name: cfg.node_name.clone().unwrap_or_else(default_name),
            kind: reg.kind.as_str().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: reg.address.clone(),
            labels: serde_json::to_string(&cfg.labels).unwrap_or_else(|_| "{}".into()),
            worker_slots: reg.worker_slots as i64,
            started_at: at,
            last_heartbeat_at: at,
            status: NodeStatus::of(score, false),
            draining: false,
            health_score: score,
            cpu_percent: sample.cpu_percent,
            memory_used_mb: sample.memory_used_mb,
            memory_total_mb: mem_total,
            load1: sample.load1,
            in_flight: 0,
            step_error_rate: 0.0,
            gpus,
            offline_at: None,
            updated_at: at,
        };
        store::register(&self.db, &row).await?;
        tracing::info!(
            node = %row.id,
            name = %row.name,
            kind = %row.kind,
            gpus = row.gpus().len(),
            source = %self.probe.describe(),
            "node registered"
        );
        Ok(())
    }

    async fn tick(&mut self) -> AppResult<()> {
        let now = now_wall();
        let at = db_time(now);
        let cfg = self.app.config.cluster.clone();
        let (sample, memory_total_mb, gpus, score, step_error_rate) = self.measure(at);
        let keep = cfg.heartbeat * u32::try_from(cfg.telemetry_samples).unwrap_or(u32::MAX);
        let keep_after = at - ChronoDuration::from_std(keep).unwrap_or(ChronoDuration::days(1));
        let beat = Beat {
            status: NodeStatus::of(score, false),
            health_score: score,
            sample,
            memory_total_mb,
            step_error_rate,
            gpus,
            keep_after,
        };
        let id = &self.app.node.id;
        let row = self
            .db
            .tx("", async |c| store::heartbeat(c, id, beat).await)
            .await?;
        if let Some(r) = &row {
            self.app.node.draining.store(r.draining, Ordering::Relaxed);
        }
        let cutoff = at - ChronoDuration::from_std(cfg.offline_after).unwrap_or_default();
        let reaped = self.reap(at, cutoff).await?;
        for n in &reaped {
            tracing::warn!(node = %n.id, name = %n.name, "node missed its heartbeats: OFFLINE; its leases and GPU reservations were released");
        }
        if !reaped.is_empty() {
            // Their executions can be claimed right away.
            self.app.bus.queue_wake.notify_waiters();
        }
        let nodes = store::all_nodes(&self.db).await?;
        if place_pending(&self.db, &nodes, now, db_time(self.app.clock.now()), &cfg).await? {
            self.app.bus.queue_wake.notify_waiters();
        }
        self.publish(&nodes, now);
        Ok(())
    }

    fn publish(&mut self, nodes: &[NodeRow], now: DateTime<Utc>) {
        let cfg = &self.app.config.cluster;
        let mut present = HashSet::new();
        for n in nodes {
            present.insert(n.id.clone());
            let (_, status) = view(n, now, cfg);
            let prev = self.seen.get(&n.id).copied();
            let kind = match prev {
                Some((s, _)) if s != status => Some(NodeEventKind::StatusChanged),
                None => Some(NodeEventKind::StatusChanged),
                Some((_, hb)) if hb != n.last_heartbeat_at => Some(NodeEventKind::Heartbeat),
                Some(_) => None,
            };
            self.seen
                .insert(n.id.clone(), (status, n.last_heartbeat_at));
            if let Some(kind) = kind {
                let mut node = n.clone();
                node.status = status;
                self.app.bus.publish_cluster(ClusterEvent::Node {
                    node: Box::new(node),
                    kind,
                    previous: prev.map(|p| p.0),
                });
            }
        }
        self.seen.retain(|k, _| present.contains(k));
        self.app.bus.publish_cluster(ClusterEvent::Tick);
    }

    async fn leave(&self) -> AppResult<()> {
        let at = db_time(now_wall());
        // A heartbeat far in the past makes this node the reaper's next (and only) pick.
        let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH.naive_utc();
        crate::db_run!(&self.db, |conn| {
            use crate::db::schema::nodes;
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            diesel::update(nodes::table.find(&self.app.node.id))
                .set(nodes::last_heartbeat_at.eq(epoch))
                .execute(conn)
                .await?;
        });
        // Only a heartbeat older than a second after the epoch is due: this node's.
        let cutoff = epoch + ChronoDuration::seconds(1);
        self.reap(at, cutoff).await?;
        Ok(())
    }

    /// Marks nodes silent since `cutoff` OFFLINE (releasing their work) and forgets those
    /// OFFLINE for a day, in one transaction.
    async fn reap(
        &self,
        at: chrono::NaiveDateTime,
        cutoff: chrono::NaiveDateTime,
    ) -> AppResult<Vec<super::model::NodeRow>> {
        let forget_before = at - ChronoDuration::hours(24);
        self.db
            .tx("", async |c| {
                store::reap(c, at, cutoff, forget_before).await
            })
            .await
    }
}

fn placeholder_row() -> NodeRow {
    let t = DateTime::<Utc>::UNIX_EPOCH.naive_utc();
    NodeRow {
        id: String::new(),
        name: String::new(),
        kind: String::new(),
        version: String::new(),
        address: None,
        labels: "{}".into(),
        worker_slots: 0,
        started_at: t,
        last_heartbeat_at: t,
        status: NodeStatus::Offline,
        draining: false,
        health_score: 0.0,
        cpu_percent: 0.0,
        memory_used_mb: 0,
        memory_total_mb: 0,
        load1: 0.0,
        in_flight: 0,
        step_error_rate: 0.0,
        gpus: "[]".into(),
        offline_at: None,
        updated_at: t,
    }
}

/// Why no node can take a request now.
fn no_fit_reason(candidates: &[Candidate], mb: u64, count: usize) -> String {
    if candidates.iter().all(|c| c.gpus.is_empty()) {
        return format!(
            "waiting for a node with GPUs: needs {count} GPU(s) with {mb} MiB each, and no healthy worker node has a GPU"
        );
    }
    let could_ever = candidates
        .iter()
        .any(|c| c.gpus.iter().filter(|g| g.total_mb >= mb).count() >= count);
    if could_ever {
        format!("waiting for GPU capacity: needs {count} GPU(s) with {mb} MiB free each")
    } else {
        let largest = candidates
            .iter()
            .flat_map(|c| c.gpus.iter().map(|g| g.total_mb))
            .max()
            .unwrap_or(0);
        format!(
            "no node can fit this: needs {count} GPU(s) with {mb} MiB each; the largest GPU online has {largest} MiB"
        )
    }
}

/// Places GPU executions that have no (live) node. Returns whether anything was placed.
/// `now` is the wall clock (node liveness), `leases_at` the app clock's time (execution
/// leases: one a driver holds means the execution started on its node).
pub async fn place_pending(
    db: &DbPool,
    nodes: &[NodeRow],
    now: DateTime<Utc>,
    leases_at: NaiveDateTime,
    cfg: &crate::config::ClusterConfig,
) -> AppResult<bool> {
    let at = db_time(now);
    let open = store::open_placements(db, leases_at).await?;
    if open.is_empty() {
        return Ok(false);
    }
    let reservations = store::all_reservations(db).await?;
    let reserved = reserved_by_gpu(&reservations);
    let mut candidates: Vec<Candidate> = nodes
        .iter()
        .filter_map(|n| {
            let (health, st) = view(n, now, cfg);
            let accepts = n.worker_slots > 0
                && !n.draining
                && matches!(st, NodeStatus::Healthy | NodeStatus::Degraded);
            accepts.then(|| Candidate {
                node_id: n.id.clone(),
                health,
                gpus: store::capacity(n, &reserved),
            })
        })
        .collect();
    let live: HashSet<String> = candidates.iter().map(|c| c.node_id.clone()).collect();
    let holding: HashSet<ExecutionId> =
        reservations.iter().filter_map(|r| r.execution_id).collect();
    // Placed but not yet holding memory: count their need so one tick does not pile
    // everything onto one node.
    let virtual_reserve = |cands: &mut Vec<Candidate>, node: &str, mb: u64, count: usize| {
        if let Some(c) = cands.iter_mut().find(|c| c.node_id == node) {
            if let Some((idx, _)) = fit_gpus(&c.gpus, mb, count) {
                for g in c.gpus.iter_mut().filter(|g| idx.contains(&g.index)) {
                    g.reserved_mb += mb;
                }
            }
        }
    };
    for (p, _) in &open {
        if let Some(n) = &p.node_id {
            if live.contains(n) && !holding.contains(&p.execution_id) {
                virtual_reserve(
                    &mut candidates,
                    n,
                    p.gpu_memory_mb as u64,
                    p.gpu_count as usize,
                );
            }
        }
    }
    let tenant_ids: Vec<TenantId> = open
        .iter()
        .map(|(p, _)| p.tenant_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut quota = store::tenant_gpu_state(db, &tenant_ids).await?;
    let mut placed_any = false;
    let alive: HashSet<&str> = nodes
        .iter()
        .filter(|n| n.status != NodeStatus::Offline)
        .map(|n| n.id.as_str())
        .collect();
    for (p, status) in &open {
        let keep = match &p.node_id {
            None => false,
            // Queued work moves off nodes that stopped accepting (draining, unhealthy).
            Some(n) if *status == ExecutionStatus::Queued => live.contains(n),
            // Running work stays where it runs until that node goes OFFLINE.
            Some(n) => alive.contains(n.as_str()),
        };
        if keep {
            continue;
        }
        let (mb, count) = (p.gpu_memory_mb as u64, p.gpu_count as usize);
        let need = p.gpu_memory_mb * p.gpu_count;
        let (limit, held) = quota.get(&p.tenant_id).copied().unwrap_or((0, 0));
        let decision = if held + need > limit {
            Err(format!(
                "waiting for GPU quota: needs {need} MiB and the tenant holds {held} of {limit} MiB (maxGpuMemoryMb)"
            ))
        } else {
            place(&candidates, mb, count).ok_or_else(|| no_fit_reason(&candidates, mb, count))
        };
        match decision {
            Ok((node, _)) => {
                if store::set_placement(
                    db,
                    p.execution_id,
                    p.node_id.as_deref(),
                    Some(&node),
                    None,
                    at,
                )
                .await?
                {
                    tracing::info!(execution = %p.execution_id, node = %node, mb, count, "GPU execution placed");
                    virtual_reserve(&mut candidates, &node, mb, count);
                    if let Some(q) = quota.get_mut(&p.tenant_id) {
                        q.1 += need;
                    }
                    placed_any = true;
                }
            }
            Err(reason) => {
                if p.waiting_reason.as_deref() != Some(reason.as_str()) || p.node_id.is_some() {
                    store::set_placement(
                        db,
                        p.execution_id,
                        p.node_id.as_deref(),
                        None,
                        Some(&reason),
                        at,
                    )
                    .await?;
                }
            }
        }
    }
    Ok(placed_any)
}
