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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::egress;
use super::model::{ExecutionId, ExecutionRow, ExecutionStatus, StepStatus};
use super::service;
use super::steps::{self, Outcome, StepError, StepInput};
use super::store::{self, Guard, Patch, StepChange};
use crate::app::App;
use crate::db::ids::db_time;
use crate::workflows::dag::{Definition, Step};

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
    stop: CancellationToken,
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
        stop: app.shutdown.child_token(),
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

    async fn claim_loop(self: Arc<Self>) {
        let poll = self.app.config.engine.poll_interval;
        let mut backoff = poll;
        loop {
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
            let now = self.now();
            let lease = ChronoDuration::from_std(self.app.config.engine.lease)
                .unwrap_or(ChronoDuration::seconds(30));
            // Unique per claim: the fencing token every write of its driver carries.
            let claim: Arc<str> =
                format!("{}:{}", self.owner, uuid::Uuid::now_v7().simple()).into();
            match store::claim(&self.app.db, &claim, &self.app.node.id, now, now + lease).await {
                Ok(Some(row)) => {
                    backoff = poll;
                    self.run_execution(row, claim).await;
                    continue;
                }
                Ok(None) => backoff = poll,
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

    async fn run_execution(self: &Arc<Self>, row: ExecutionRow, claim: Arc<str>) {
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
            if let Err(e) =
                crate::cluster::store::release_execution(&self.app.db, &id.to_string()).await
            {
                tracing::warn!(execution = %id, error = ?e, "releasing stale GPU reservations failed");
            }
        }
        let renewal = self.spawn_renewal(id, claim.clone(), token.clone());
        if let Err(e) = self.drive(row, &claim, &token).await {
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
            if let Err(e) =
                crate::cluster::store::release_execution(&self.app.db, &id.to_string()).await
            {
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

    async fn drive(
        self: &Arc<Self>,
        row: ExecutionRow,
        claim: &Arc<str>,
        token: &CancellationToken,
    ) -> crate::error::AppResult<()> {
        let id = row.id;
        let now = self.now();
        let mut row = row;
        if row.status == ExecutionStatus::Queued {
            let deadline = now + ChronoDuration::seconds(row.timeout_seconds);
            match self
                .transition(
                    id,
                    claim,
                    token,
                    ExecutionStatus::Running,
                    Patch {
                        deadline_at: Some(deadline),
                        ..Patch::default()
                    },
                )
                .await?
            {
                Some(r) => row = r,
                None => return Ok(()),
            }
        } else {
            tracing::info!(execution = %id, claims = row.claims, "resuming an execution whose lease lapsed");
        }
        let deadline = row
            .deadline_at
            .unwrap_or(now + ChronoDuration::seconds(row.timeout_seconds));
        let version = crate::workflows::service::version_by_id(&self.app, row.version_id).await?;
        let def: Definition =
            serde_json::from_str(&version.definition).map_err(crate::error::AppError::internal)?;
        let input: Value = serde_json::from_str(&row.input).unwrap_or(Value::Null);
        let step_rows = store::steps_of(&self.app.db, id).await?;
        let mut state: HashMap<String, StepStatus> = HashMap::new();
        let mut attempts: HashMap<String, i64> = HashMap::new();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        for s in &step_rows {
            let st = match s.status {
                // Interrupted by a crash or shutdown: run again (at-least-once).
                StepStatus::Running | StepStatus::Retrying => StepStatus::Pending,
                other => other,
            };
            state.insert(s.step_id.clone(), st);
            attempts.insert(s.step_id.clone(), s.attempt);
            if st == StepStatus::Succeeded {
                outputs.insert(
                    s.step_id.clone(),
                    s.output
                        .as_deref()
                        .and_then(|o| serde_json::from_str(o).ok())
                        .unwrap_or(Value::Null),
                );
            }
        }
        let by_id: HashMap<&str, &Step> = def.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        let max_parallel = self.app.config.engine.max_parallel_steps;
        let mut inflight: JoinSet<(String, StepEnd)> = JoinSet::new();
        let mut in_flight_ids: HashSet<String> = HashSet::new();
        let grace = self.app.config.http.shutdown_grace;
        let remaining = (deadline - self.now()).to_std().unwrap_or(Duration::ZERO);
        let timeout_at = tokio::time::Instant::now() + remaining;

        loop {
            // Skip steps all of whose dependencies were skipped.
            let mut newly_skipped = Vec::new();
            for s in &def.steps {
                if state.get(&s.id) == Some(&StepStatus::Pending)
                    && !s.depends_on.is_empty()
                    && s.depends_on
                        .iter()
                        .all(|d| state.get(d) == Some(&StepStatus::Skipped))
                {
                    newly_skipped.push(s.id.clone());
                }
            }
            for sid in newly_skipped {
                if !self
                    .skip(id, claim, token, &sid, &mut state, &attempts)
                    .await?
                {
                    return self.abandon(inflight, id, claim, false).await;
                }
            }
            // A failed step fails the execution.
            if let Some((sid, st)) = def.steps.iter().find_map(|s| {
                state
                    .get(&s.id)
                    .filter(|st| matches!(st, StepStatus::Failed | StepStatus::TimedOut))
                    .map(|st| (s.id.clone(), *st))
            }) {
                inflight.abort_all();
                let what = if st == StepStatus::TimedOut {
                    "timed out"
                } else {
                    "failed"
                };
                let detail = step_rows_error(&self.app, id, &sid).await;
                self.transition(
                    id,
                    claim,
                    token,
                    ExecutionStatus::Failed,
                    Patch {
                        error: Some(format!("step {sid:?} {what}{detail}")),
                        ..Patch::default()
                    },
                )
                .await?;
                return Ok(());
            }
            // Start what is ready.
            if !self.stop.is_cancelled() {
                for s in &def.steps {
                    if in_flight_ids.len() >= max_parallel {
                        break;
                    }
                    let ready = state.get(&s.id) == Some(&StepStatus::Pending)
                        && !in_flight_ids.contains(&s.id)
                        && s.depends_on.iter().all(|d| {
                            matches!(
                                state.get(d),
                                Some(StepStatus::Succeeded | StepStatus::Skipped)
                            )
                        });
                    if ready {
                        in_flight_ids.insert(s.id.clone());
                        let ctx = steps::context(&id.to_string(), &input, &outputs);
                        let engine = self.clone();
                        let step = s.clone();
                        let first_attempt = attempts.get(&s.id).copied().unwrap_or(0) + 1;
                        let tenant = row.tenant_id;
                        let claim = claim.clone();
                        let token = token.clone();
                        inflight.spawn(async move {
                            let end = engine
                                .run_step(id, &claim, &token, tenant, &step, ctx, first_attempt)
                                .await;
                            (step.id, end)
                        });
                    }
                }
            }
            if inflight.is_empty() {
                if self.stop.is_cancelled() {
                    store::release(&self.app.db, id, claim).await?;
                    self.app.bus.queue_wake.notify_one();
                    return Ok(());
                }
                let all_done = def
                    .steps
                    .iter()
                    .all(|s| state.get(&s.id).is_some_and(|st| st.is_terminal()));
                let output = if all_done {
                    let depended: HashSet<&str> = def
                        .steps
                        .iter()
                        .flat_map(|s| s.depends_on.iter().map(String::as_str))
                        .collect();
                    let mut out = Map::new();
                    for s in &def.steps {
                        if !depended.contains(s.id.as_str()) {
                            if let Some(o) = outputs.get(&s.id) {
                                out.insert(s.id.clone(), o.clone());
                            }
                        }
                    }
                    Value::Object(out)
                } else {
                    Value::Null
                };
                let (to, patch) = if all_done {
                    (
                        ExecutionStatus::Succeeded,
                        Patch {
                            output: Some(output.to_string()),
                            ..Patch::default()
                        },
                    )
                } else {
                    (
                        ExecutionStatus::Failed,
                        Patch {
                            error: Some("no step can run (unsatisfiable dependencies)".into()),
                            ..Patch::default()
                        },
                    )
                };
                self.transition(id, claim, token, to, patch).await?;
                return Ok(());
            }
            tokio::select! {
                joined = inflight.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (sid, end) = match joined {
                        Ok(x) => x,
                        Err(e) if e.is_cancelled() => continue,
                        Err(e) => {
                            tracing::error!(execution = %id, error = %e, "step task panicked");
                            return self.abandon(inflight, id, claim, true).await;
                        }
                    };
                    in_flight_ids.remove(&sid);
                    match end {
                        StepEnd::Done(outcome) => {
                            state.insert(sid.clone(), StepStatus::Succeeded);
                            outputs.insert(sid.clone(), outcome.output);
                            for skip in outcome.skip {
                                if state.get(&skip) == Some(&StepStatus::Pending)
                                    && by_id.contains_key(skip.as_str())
                                    && !self.skip(id, claim, token, &skip, &mut state, &attempts).await?
                                {
                                    return self.abandon(inflight, id, claim, false).await;
                                }
                            }
                        }
                        StepEnd::Failed(st) => {
                            state.insert(sid, st);
                        }
                        StepEnd::LeaseLost => return self.abandon(inflight, id, claim, false).await,
                    }
                }
                () = token.cancelled() => {
                    // Cancelled or timed out elsewhere, or the lease was lost: stop here.
                    return self.abandon(inflight, id, claim, false).await;
                }
                () = tokio::time::sleep_until(timeout_at) => {
                    inflight.abort_all();
                    self.transition(
                        id,
                        claim,
                        token,
                        ExecutionStatus::TimedOut,
                        Patch {
                            error: Some(format!(
                                "the execution exceeded its timeout of {} s",
                                row.timeout_seconds
                            )),
                            ..Patch::default()
                        },
                    )
                    .await?;
                    return Ok(());
                }
                () = self.stop.cancelled(), if !in_flight_ids.is_empty() => {
                    // Shutdown: give in-flight steps the grace period, then hand over.
                    let deadline = tokio::time::Instant::now() + grace;
                    while let Ok(Some(joined)) =
                        tokio::time::timeout_at(deadline, inflight.join_next()).await
                    {
                        if let Ok((sid, StepEnd::Done(o))) = joined {
                            state.insert(sid.clone(), StepStatus::Succeeded);
                            outputs.insert(sid, o.output);
                        }
                    }
                    return self.abandon(inflight, id, claim, true).await;
                }
            }
        }
    }

    /// Stops every step; when `release`, gives the lease back for another worker.
    async fn abandon(
        &self,
        mut inflight: JoinSet<(String, StepEnd)>,
        id: ExecutionId,
        claim: &str,
        release: bool,
    ) -> crate::error::AppResult<()> {
        inflight.abort_all();
        while inflight.join_next().await.is_some() {}
        if release {
            store::release(&self.app.db, id, claim).await?;
            // Another claim loop of this process may take it over at once.
            self.app.bus.queue_wake.notify_one();
        }
        Ok(())
    }

    async fn skip(
        &self,
        id: ExecutionId,
        claim: &str,
        token: &CancellationToken,
        sid: &str,
        state: &mut HashMap<String, StepStatus>,
        attempts: &HashMap<String, i64>,
    ) -> crate::error::AppResult<bool> {
        state.insert(sid.to_owned(), StepStatus::Skipped);
        let change = StepChange {
            finished_at: Some(self.now()),
            ..StepChange::new(
                sid,
                StepStatus::Skipped,
                attempts.get(sid).copied().unwrap_or(0),
            )
        };
        self.record(id, claim, token, &change).await
    }

    /// Runs a step's attempts (with retries and backoff), recording each change.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's whole context, passed once"
    )]
    async fn run_step(
        &self,
        id: ExecutionId,
        claim: &str,
        token: &CancellationToken,
        tenant: crate::tenancy::TenantId,
        step: &Step,
        ctx: Value,
        first_attempt: i64,
    ) -> StepEnd {
        let gpu = step
            .resources
            .as_ref()
            .filter(|r| r.gpu_count > 0)
            .map(|r| (r.gpu_memory_mb, r.gpu_count as usize));
        if let Some((mb, count)) = gpu {
            if let Some(end) = self.reserve_gpus(id, tenant, &step.id, mb, count).await {
                return end;
            }
        }
        let end = self
            .run_attempts(id, claim, token, tenant, step, ctx, first_attempt)
            .await;
        if gpu.is_some() {
            if let Err(e) =
                crate::cluster::store::release_step(&self.app.db, &id.to_string(), &step.id).await
            {
                tracing::warn!(execution = %id, step = %step.id, error = ?e, "releasing GPU memory failed");
            }
        }
        match &end {
            StepEnd::Done(_) => self.app.node.steps_ok.fetch_add(1, Ordering::Relaxed),
            StepEnd::Failed(_) => self.app.node.steps_failed.fetch_add(1, Ordering::Relaxed),
            StepEnd::LeaseLost => 0,
        };
        end
    }

    /// Waits until this node can reserve the step's GPU memory within the tenant's quota,
    /// showing why meanwhile (`waitingReason`). `Some(end)` when the step must not run.
    async fn reserve_gpus(
        &self,
        id: ExecutionId,
        tenant: crate::tenancy::TenantId,
        step_id: &str,
        mb: u64,
        count: usize,
    ) -> Option<StepEnd> {
        let exec = id.to_string();
        let mut shown: Option<String> = None;
        loop {
            let req = crate::cluster::store::StepRequest {
                node_id: &self.app.node.id,
                tenant,
                execution: &exec,
                step: step_id,
                memory_mb: mb,
                count,
                now: self.now(),
            };
            match crate::cluster::store::reserve_for_step(&self.app.db, &req).await {
                Ok(Ok(_)) => {
                    if let Ok(mut h) = self.gpu_held.lock() {
                        h.insert(id);
                    }
                    return None;
                }
                Ok(Err(reason)) => {
                    if shown.as_deref() != Some(reason.as_str()) {
                        tracing::info!(execution = %id, step = step_id, %reason, "step waits for GPU memory");
                        let _ = crate::cluster::store::set_waiting(
                            &self.app.db,
                            &exec,
                            Some(&format!("step {step_id:?}: {reason}")),
                            self.now(),
                        )
                        .await;
                        shown = Some(reason);
                    }
                }
                Err(e) => {
                    tracing::warn!(execution = %id, error = ?e, "reserving GPU memory failed")
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return Some(StepEnd::LeaseLost),
                () = tokio::time::sleep(self.app.config.engine.poll_interval) => {}
            }
        }
    }

    /// The attempts of one step.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's whole context, passed once"
    )]
    async fn run_attempts(
        &self,
        id: ExecutionId,
        claim: &str,
        token: &CancellationToken,
        tenant: crate::tenancy::TenantId,
        step: &Step,
        ctx: Value,
        first_attempt: i64,
    ) -> StepEnd {
        let max_attempts = i64::from(step.retry.as_ref().map_or(1, |r| r.max_attempts.max(1)));
        let timeout = Duration::from_secs(u64::from(step.timeout_seconds.unwrap_or(300)));
        let mut attempt = first_attempt;
        let ctx = std::sync::Arc::new(ctx);
        loop {
            let Ok(permit) = self.step_slots.clone().acquire_owned().await else {
                return StepEnd::LeaseLost;
            };
            let start = StepChange {
                started_at: Some(self.now()),
                ..StepChange::new(step.id.clone(), StepStatus::Running, attempt)
            };
            match self.record(id, claim, token, &start).await {
                Ok(true) => {}
                Ok(false) => return StepEnd::LeaseLost,
                Err(e) => {
                    tracing::warn!(execution = %id, error = ?e, "recording a step start failed");
                    return StepEnd::LeaseLost;
                }
            }
            let input = StepInput {
                app: &self.app,
                http: &self.http,
                policy: &self.policy,
                tenant,
                context: &ctx,
            };
            let result = match tokio::time::timeout(timeout, steps::run(step, &input)).await {
                Ok(r) => r.map_err(|e| (StepStatus::Failed, e)),
                Err(_) => Err((
                    StepStatus::TimedOut,
                    StepError {
                        message: format!("the attempt exceeded {} s", timeout.as_secs()),
                        retryable: true,
                    },
                )),
            };
            let mut change = StepChange {
                finished_at: Some(self.now()),
                started_at: None,
                ..start
            };
            // An output larger than the limit is not stored, evented or passed on.
            let max_output = self.app.config.engine.max_step_output_bytes;
            let result = result.and_then(|outcome| {
                let text = outcome.output.to_string();
                if text.len() > max_output {
                    Err((
                        StepStatus::Failed,
                        super::templates::too_large("output", max_output),
                    ))
                } else {
                    Ok((outcome, text))
                }
            });
            let end = match result {
                Ok((outcome, text)) => {
                    change.status = StepStatus::Succeeded;
                    change.output = Some(text);
                    change.prompt_tokens = outcome.prompt_tokens;
                    change.completion_tokens = outcome.completion_tokens;
                    change.cost_usd = outcome.cost_usd;
                    Some(StepEnd::Done(outcome))
                }
                Err((st, e)) if !e.retryable || attempt >= max_attempts => {
                    change.status = st;
                    change.error = Some(truncate(&e.message));
                    Some(StepEnd::Failed(st))
                }
                Err((_, e)) => {
                    change.status = StepStatus::Retrying;
                    change.error = Some(truncate(&e.message));
                    change.finished_at = None;
                    None
                }
            };
            match self.record(id, claim, token, &change).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return StepEnd::LeaseLost,
            }
            if let Some(end) = end {
                return end;
            }
            let backoff = step.retry.as_ref().map_or(Duration::ZERO, |r| {
                let exp = i32::try_from(attempt - 1).unwrap_or(0);
                let ms = r.initial_backoff_ms as f64 * r.backoff_multiplier.powi(exp);
                Duration::from_millis(ms.min(3_600_000.0) as u64)
            });
            drop(permit);
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= 2000 {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(2000).collect();
        out.push('…');
        out
    }
}

/// `": <error>"` of a step, for the execution's error text.
async fn step_rows_error(app: &App, id: ExecutionId, sid: &str) -> String {
    store::steps_of(&app.db, id)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.step_id == sid))
        .and_then(|r| r.error)
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}
