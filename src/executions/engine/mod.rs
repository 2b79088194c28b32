//! The engine: workers that claim executions from the durable queue and run their steps.
//!
//! Delivery is **at-least-once per step**: a step's result is committed when it finishes;
//! if a worker dies mid-step, its lease lapses, another worker claims the execution,
//! keeps every finished step (outputs are in the database) and runs the unfinished ones
//! again, attempt number continuing. Steps with side effects should be idempotent or
//! carry an idempotency key derived from `execution.id` (available to templates).
//!
//! Every claim is fenced: the claim statement writes a lease owner unique to that claim
//! (`<node>:<engine>:<claim>`), and every later write of its driver (renewal, step
//! records, transitions, release) is guarded by it, so a driver whose lease lapsed and
//! was claimed again — by another process or by another claim loop of this one — finds
//! every write refused and stops. A driver also stops by itself when its lease runs out
//! before it could renew it (database unreachable, process paused), so two drivers never
//! run one execution's steps at the same time; in-process, a new claim of an execution
//! waits for the stale local driver to stop first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::egress;
use super::model::{ExecutionId, ExecutionRow, ExecutionStatus, StepStatus};
use super::service;
use super::steps::Outcome;
use super::store::{self, Guard, Patch, StepChange};
use crate::app::App;
use crate::db::ids::{WorkflowVersionId, db_time};
use crate::workflows::dag::Definition;

/// Most parsed definitions an engine keeps (the cache starts over when full).
const DEFINITIONS_KEPT: usize = 1024;

/// A running engine: `workers` claim loops plus a scheduler, in this process.
pub struct Engine {
    app: Arc<App>,
    /// This engine's id, `<node id>:<engine>`: the prefix of every claim it makes.
    pub owner: String,
    http: reqwest::Client,
    policy: egress::Policy,
    step_slots: Arc<Semaphore>,
    running: Mutex<HashMap<ExecutionId, Driver>>,
    /// Executions whose steps reserved GPU memory here (released when they stop here).
    gpu_held: Mutex<HashSet<ExecutionId>>,
    /// Parsed definitions of the versions this engine ran (versions never change).
    definitions: Mutex<HashMap<WorkflowVersionId, Arc<Definition>>>,
    stop: CancellationToken,
    /// Executions claimed by a claim of their own.
    claimed_alone: AtomicU64,
    /// Executions claimed in the last transaction of the driver before them.
    claimed_chained: AtomicU64,
    /// Claim statements that found nothing to run.
    claims_missed: AtomicU64,
    /// Where drivers' last transactions are committed together (SQLite, whose one writer
    /// runs them one after another anyway); `None` on PostgreSQL, whose drivers commit
    /// side by side.
    group: Option<service::GroupCommit>,
}

/// How an engine's claims were made so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// By a claim statement of their own.
    pub alone: u64,
    /// In the last transaction of the execution a worker finished before.
    pub chained: u64,
    /// Claim statements that found nothing to run.
    pub missed: u64,
}

impl Engine {
    /// How this engine's claims were made so far.
    pub fn claims(&self) -> Claims {
        Claims {
            alone: self.claimed_alone.load(Ordering::Relaxed),
            chained: self.claimed_chained.load(Ordering::Relaxed),
            missed: self.claims_missed.load(Ordering::Relaxed),
        }
    }
}

/// Stops an engine.
pub struct EngineHandle {
    /// The engine.
    pub engine: Arc<Engine>,
    tasks: TaskTracker,
}

impl EngineHandle {
    /// Stops claiming; lets in-flight steps finish within `grace`, then interrupts the
    /// rest and releases their leases so another worker resumes them at once.
    pub async fn shutdown(self, grace: Duration) {
        self.engine.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace + Duration::from_secs(1), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("engine did not stop within the grace period");
        }
    }
}

/// Starts `workers` claim loops and the scheduler. `workers == 0` starts nothing.
pub fn start(app: Arc<App>, workers: usize) -> anyhow::Result<Option<EngineHandle>> {
    if workers == 0 {
        return Ok(None);
    }
    let policy = egress::Policy {
        allow: app.config.engine.egress_allow.clone(),
    };
    let engine = Arc::new(Engine {
        // `<node id>:<engine>`: the reaper releases a dead node's leases by this prefix.
        owner: format!("{}:{}", app.node.id, uuid::Uuid::now_v7().simple()),
        http: egress::client(&policy)?,
        policy,
        step_slots: Arc::new(Semaphore::new(app.config.engine.worker_max_steps)),
        running: Mutex::new(HashMap::new()),
        gpu_held: Mutex::new(HashSet::new()),
        definitions: Mutex::new(HashMap::new()),
        stop: app.shutdown.child_token(),
        claimed_alone: AtomicU64::new(0),
        claimed_chained: AtomicU64::new(0),
        claims_missed: AtomicU64::new(0),
        group: matches!(app.db, crate::db::DbPool::Sqlite(_))
            .then(|| service::GroupCommit::start(app.clone())),
        app,
    });
    let tasks = TaskTracker::new();
    for _ in 0..workers {
        let e = engine.clone();
        tasks.spawn(async move { e.claim_loop().await });
    }
    let e = engine.clone();
    tasks.spawn(async move { e.watch_events().await });
    let e = engine.clone();
    tasks.spawn(async move { super::schedules::scheduler_loop(&e.app, &e.stop).await });
    tracing::info!(owner = %engine.owner, workers, "engine started");
    Ok(Some(EngineHandle { engine, tasks }))
}

/// The local driver of one claimed execution.
struct Driver {
    /// The claim (lease owner) it drives under.
    claim: Arc<str>,
    /// Cancelled to stop it (execution ended elsewhere, lease lost, claimed again).
    stop: CancellationToken,
    /// Cancelled once it has stopped.
    finished: CancellationToken,
}

/// How a step task ended.
enum StepEnd {
    Done(Outcome),
    Failed(StepStatus),
    LeaseLost,
}

impl Engine {
    fn now(&self) -> chrono::NaiveDateTime {
        db_time(self.app.clock.now())
    }

    /// A new claim's fencing token: unique per claim.
    fn claim_token(&self) -> Arc<str> {
        format!("{}:{}", self.owner, uuid::Uuid::now_v7().simple()).into()
    }

    /// A lease starting now: (now, when it lapses unless renewed).
    fn lease_window(&self) -> (chrono::NaiveDateTime, chrono::NaiveDateTime) {
        let now = self.now();
        let lease = ChronoDuration::from_std(self.app.config.engine.lease)
            .unwrap_or(ChronoDuration::seconds(30));
        (now, now + lease)
    }

    /// Whether a driver that is finishing may claim the next execution in its last
    /// transaction (SQLite, whose one writer makes a separate claim a transaction of its
    /// own; not while the engine stops or the node drains).
    fn chains_claims(&self) -> bool {
        matches!(self.app.db, crate::db::DbPool::Sqlite(_))
            && !self.stop.is_cancelled()
            && !self.app.node.draining.load(Ordering::Relaxed)
    }

    async fn claim_loop(self: Arc<Self>) {
        let poll = self.app.config.engine.poll_interval;
        let mut backoff = poll;
        // An execution claimed by the previous driver's last transaction.
        let mut next: Option<(ExecutionRow, Arc<str>)> = None;
        loop {
            if let Some((row, claim)) = next.take() {
                if self.stop.is_cancelled() {
                    let _ = store::release(&self.app.db, row.id, &claim).await;
                    self.app.bus.queue_wake.notify_one();
                    return;
                }
                self.claimed_chained.fetch_add(1, Ordering::Relaxed);
                self.run_execution(row, claim, &mut next).await;
                continue;
            }
            if self.stop.is_cancelled() {
                return;
            }
            if self.app.node.draining.load(Ordering::Relaxed) {
                // A draining node finishes what it runs and claims nothing new.
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(poll) => continue,
                }
            }
            // Unique per claim: the fencing token every write of its driver carries.
            let claim = self.claim_token();
            let (now, until) = self.lease_window();
            match store::claim(&self.app.db, &claim, &self.app.node.id, now, until).await {
                Ok(Some(row)) => {
                    backoff = poll;
                    self.claimed_alone.fetch_add(1, Ordering::Relaxed);
                    self.run_execution(row, claim, &mut next).await;
                    continue;
                }
                Ok(None) => {
                    backoff = poll;
                    self.claims_missed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "claiming work failed");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.app.bus.queue_wake.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Interrupts local executions that ended elsewhere (cancelled by a user, here or on
    /// another replica through the relay).
    async fn watch_events(self: Arc<Self>) {
        let mut rx = self.app.bus.subscribe();
        loop {
            let ev = tokio::select! {
                () = self.stop.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(ev) if ev.status.is_terminal() => {
                    let token = self
                        .running
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&ev.execution_id).map(|d| d.stop.clone()));
                    if let Some(t) = token {
                        t.cancel();
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Drives one claimed execution; `next` receives the execution its last transaction
    /// claimed, if any.
    async fn run_execution(
        self: &Arc<Self>,
        row: ExecutionRow,
        claim: Arc<str>,
        next: &mut Option<(ExecutionRow, Arc<str>)>,
    ) {
        let id = row.id;
        let token = CancellationToken::new();
        let finished = CancellationToken::new();
        let stale = self.running.lock().ok().and_then(|mut m| {
            m.insert(
                id,
                Driver {
                    claim: claim.clone(),
                    stop: token.clone(),
                    finished: finished.clone(),
                },
            )
        });
        if let Some(old) = stale {
            // This process still drives an earlier claim of the execution (its lease
            // lapsed while it could not renew): stop it before running anything.
            tracing::warn!(execution = %id, "execution claimed again while a stale local driver ran; stopping it");
            old.stop.cancel();
            old.finished.cancelled().await;
        }
        self.app.node.in_flight.fetch_add(1, Ordering::Relaxed);
        if row.claims > 1 {
            // Resumed after a crash elsewhere: whatever the last holder reserved is stale.
            if let Err(e) = crate::cluster::store::release_execution(&self.app.db, id).await {
                tracing::warn!(execution = %id, error = ?e, "releasing stale GPU reservations failed");
            }
        }
        let renewal = self.spawn_renewal(id, claim.clone(), token.clone());
        // Continues the trace of the request that queued it (across processes).
        let span = tracing::info_span!(
            "execution.run",
            execution = %id,
            claims = row.claims,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        match &row.trace_context {
            Some(stored) => crate::telemetry::continue_stored(&span, stored),
            None => crate::telemetry::record_ids(&span),
        }
        let driven = {
            use tracing::Instrument as _;
            self.drive(row, &claim, &token, next).instrument(span).await
        };
        if let Err(e) = driven {
            tracing::error!(execution = %id, error = ?e, "execution driver failed; releasing");
            let _ = store::release(&self.app.db, id, &claim).await;
            self.app.bus.queue_wake.notify_one();
        }
        renewal.cancel();
        let held = self
            .gpu_held
            .lock()
            .map(|mut h| h.remove(&id))
            .unwrap_or(false);
        if held {
            if let Err(e) = crate::cluster::store::release_execution(&self.app.db, id).await {
                tracing::warn!(execution = %id, error = ?e, "releasing GPU reservations failed");
            }
        }
        if let Ok(mut m) = self.running.lock() {
            if m.get(&id).is_some_and(|d| d.claim == claim) {
                m.remove(&id);
            }
        }
        finished.cancel();
        self.app.node.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Renews the lease every third of its length; cancels `token` when a renewal is
    /// refused (the lease lapsed, was claimed again, or the execution ended) or when the
    /// lease runs out, on the monotonic clock or the app clock, before a renewal got
    /// through (database unreachable, process paused): past that point another worker
    /// may claim the execution, so this driver must already have stopped.
    fn spawn_renewal(
        &self,
        id: ExecutionId,
        claim: Arc<str>,
        token: CancellationToken,
    ) -> CancellationToken {
        let done = CancellationToken::new();
        let app = self.app.clone();
        let d = done.clone();
        let lease = app.config.engine.lease;
        let every = (lease / 3).max(Duration::from_millis(100));
        // Stop a little before the lease ends, so the database's expiry is never reached
        // by a driver that still runs.
        let margin = (lease / 10).min(Duration::from_secs(2));
        let check = (lease / 20).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let chrono_lease = ChronoDuration::from_std(lease).unwrap_or(ChronoDuration::seconds(30));
        let chrono_margin = ChronoDuration::from_std(margin).unwrap_or_default();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut valid_until = start + lease;
            let mut valid_until_app = db_time(app.clock.now()) + chrono_lease;
            let mut next_renewal = start + every;
            loop {
                tokio::select! {
                    () = d.cancelled() => return,
                    () = tokio::time::sleep(check) => {}
                }
                let now = tokio::time::Instant::now();
                if now + margin >= valid_until
                    || db_time(app.clock.now()) + chrono_margin >= valid_until_app
                {
                    tracing::warn!(execution = %id, "lease ran out before it could be renewed; stopping this driver");
                    token.cancel();
                    return;
                }
                if now < next_renewal {
                    continue;
                }
                next_renewal = now + every;
                let app_now = db_time(app.clock.now());
                let until = app_now + chrono_lease;
                let budget = valid_until.saturating_duration_since(now + margin);
                match tokio::time::timeout(
                    budget,
                    store::renew(&app.db, id, &claim, app_now, until),
                )
                .await
                {
                    Ok(Ok(true)) => {
                        valid_until = now + lease;
                        valid_until_app = until;
                    }
                    Ok(Ok(false)) => {
                        tracing::info!(execution = %id, "lease lost or execution ended; stopping this driver");
                        token.cancel();
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(execution = %id, error = ?e, "lease renewal failed")
                    }
                    Err(_) => {
                        tracing::warn!(execution = %id, "lease renewal did not answer in time")
                    }
                }
            }
        });
        done
    }

    /// Runs one of the driver's writes, retrying while the database is unavailable (a
    /// restart, a lost connection, a full disk) until it answers or the driver is told to
    /// stop: a database outage shorter than the lease costs no work. `None` when stopped.
    async fn persist<T, Fut>(
        &self,
        token: &CancellationToken,
        mut write: impl FnMut() -> Fut,
    ) -> crate::error::AppResult<Option<T>>
    where
        Fut: Future<Output = crate::error::AppResult<T>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match write().await {
                Err(e) if e.code() == crate::error::ErrorCode::Unavailable => {
                    tracing::warn!(error = ?e, "engine write failed; retrying while the lease lasts");
                    tokio::select! {
                        () = token.cancelled() => return Ok(None),
                        () = self.stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other.map(Some),
            }
        }
    }

    /// A version's parsed definition, from this engine's cache or read once.
    async fn definition(
        &self,
        version: WorkflowVersionId,
    ) -> crate::error::AppResult<Arc<Definition>> {
        if let Some(d) = self
            .definitions
            .lock()
            .ok()
            .and_then(|m| m.get(&version).cloned())
        {
            return Ok(d);
        }
        let row = crate::workflows::service::version_by_id(&self.app, version).await?;
        let def: Arc<Definition> = Arc::new(
            serde_json::from_str(&row.definition).map_err(crate::error::AppError::internal)?,
        );
        if let Ok(mut m) = self.definitions.lock() {
            if m.len() >= DEFINITIONS_KEPT {
                m.clear();
            }
            m.insert(version, def.clone());
        }
        Ok(def)
    }

    async fn transition(
        &self,
        id: ExecutionId,
        claim: &str,
        token: &CancellationToken,
        to: ExecutionStatus,
        patch: Patch,
    ) -> crate::error::AppResult<Option<ExecutionRow>> {
        let row = self
            .persist(token, || {
                service::transition(&self.app, id, to, Guard::Lease(claim), patch.clone())
            })
            .await?;
        Ok(row.flatten())
    }

    /// Records a step change under the claim; `false` when refused (the lease is lost or
    /// the execution ended) or when the driver was stopped meanwhile.
    async fn record(
        &self,
        id: ExecutionId,
        claim: &str,
        token: &CancellationToken,
        change: &StepChange,
    ) -> crate::error::AppResult<bool> {
        let ok = self
            .persist(token, || service::record_step(&self.app, id, claim, change))
            .await?;
        Ok(ok == Some(true))
    }
}

mod attempts;
mod drive;
