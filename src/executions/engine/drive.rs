//! Driving one claimed execution: the DAG walk (what is ready, what is skipped, what
//! failed), to the execution's end or until the lease is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::attempts::step_rows_error;
use super::{Engine, StepEnd};
use crate::executions::model::{ExecutionId, ExecutionRow, ExecutionStatus, StepStatus};
use crate::executions::service;
use crate::executions::steps::{self};
use crate::executions::store::{self, Patch, StepChange};
use crate::workflows::dag::Step;

impl Engine {
    pub(super) async fn drive(
        self: &Arc<Self>,
        row: ExecutionRow,
        claim: &Arc<str>,
        token: &CancellationToken,
        next: &mut Option<(ExecutionRow, Arc<str>)>,
    ) -> crate::error::AppResult<()> {
        let id = row.id;
        let now = self.now();
        let mut row = row;
        // Writes are held back while every step so far ran inline (see `Writer`): an
        // execution of only inline steps is written in one transaction at its end.
        let mut w = Writer::new(self, id, claim, token, next);
        let fresh = row.status == ExecutionStatus::Queued && row.claims == 1;
        if row.status == ExecutionStatus::Queued {
            let deadline = now + ChronoDuration::seconds(row.timeout_seconds);
            w.transition(
                ExecutionStatus::Running,
                Patch {
                    deadline_at: Some(deadline),
                    ..Patch::default()
                },
            )
            .await?;
            row.deadline_at = Some(deadline);
        } else {
            tracing::info!(execution = %id, claims = row.claims, "resuming an execution whose lease lapsed");
        }
        let deadline = row
            .deadline_at
            .unwrap_or(now + ChronoDuration::seconds(row.timeout_seconds));
        let def = self.definition(row.version_id).await?;
        let input: Value = serde_json::from_str(&row.input).unwrap_or(Value::Null);
        let mut state: HashMap<String, StepStatus> = HashMap::new();
        let mut attempts: HashMap<String, i64> = HashMap::new();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        // Errors of steps that failed inline (not in the database yet).
        let mut errors: HashMap<String, String> = HashMap::new();
        // Claimed for the first time while QUEUED: every step is still PENDING at attempt
        // 0 (written so at enqueue), so there is nothing to read.
        let step_rows = if fresh {
            Vec::new()
        } else {
            store::steps_of(&self.app.db, id).await?
        };
        for s in &def.steps {
            state.insert(s.id.clone(), StepStatus::Pending);
            attempts.insert(s.id.clone(), 0);
        }
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
                if !self.skip(&mut w, &sid, &mut state, &attempts).await? {
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
                let detail = match errors.get(&sid) {
                    Some(e) => format!(": {e}"),
                    None => step_rows_error(&self.app, id, &sid).await,
                };
                w.transition(
                    ExecutionStatus::Failed,
                    Patch {
                        error: Some(format!("step {sid:?} {what}{detail}")),
                        ..Patch::default()
                    },
                )
                .await?;
                return Ok(());
            }
            // Start what is ready: while writes are held back, an inline step at once
            // (then look again), else each as a task of its own.
            let mut ran_inline = false;
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
                    if !ready {
                        continue;
                    }
                    let first_attempt = attempts.get(&s.id).copied().unwrap_or(0) + 1;
                    if w.holding() && runs_inline(s) {
                        let ctx = Arc::new(steps::context(&id.to_string(), &input, &outputs));
                        let (end, error) = self
                            .run_inline(&mut w, row.tenant_id, s, &ctx, first_attempt)
                            .await?;
                        attempts.insert(s.id.clone(), first_attempt);
                        if let Some(e) = error {
                            errors.insert(s.id.clone(), e);
                        }
                        if !self
                            .settle(
                                &mut w,
                                &s.id,
                                end,
                                &mut state,
                                &mut outputs,
                                &attempts,
                                &by_id,
                            )
                            .await?
                        {
                            return self.abandon(inflight, id, claim, false).await;
                        }
                        ran_inline = true;
                        break;
                    }
                    // What this step waits on becomes visible before it starts.
                    if !w.flush().await? {
                        return self.abandon(inflight, id, claim, false).await;
                    }
                    {
                        in_flight_ids.insert(s.id.clone());
                        let ctx = steps::context(&id.to_string(), &input, &outputs);
                        let engine = self.clone();
                        let step = s.clone();
                        let tenant = row.tenant_id;
                        let claim = claim.clone();
                        let token = token.clone();
                        inflight.spawn(
                            async move {
                                let end = engine
                                    .run_step(id, &claim, &token, tenant, &step, ctx, first_attempt)
                                    .await;
                                (step.id, end)
                            }
                            .in_current_span(),
                        );
                    }
                }
            }
            if ran_inline {
                continue;
            }
            if inflight.is_empty() {
                if self.stop.is_cancelled() {
                    // Held-back writes are dropped: the next claim runs those steps again.
                    drop(w);
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
                w.transition(to, patch).await?;
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
                    if !self
                        .settle(&mut w, &sid, end, &mut state, &mut outputs, &attempts, &by_id)
                        .await?
                    {
                        return self.abandon(inflight, id, claim, false).await;
                    }
                }
                () = token.cancelled() => {
                    // Cancelled or timed out elsewhere, or the lease was lost: stop here.
                    return self.abandon(inflight, id, claim, false).await;
                }
                () = tokio::time::sleep_until(timeout_at) => {
                    inflight.abort_all();
                    w.transition(
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
    pub(super) async fn abandon(
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

    pub(super) async fn skip(
        &self,
        w: &mut Writer<'_>,
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
        w.step(change).await
    }

    /// Takes a finished step into the walk's state (its output, the steps a condition
    /// turned off); `false` when the lease is lost.
    #[expect(
        clippy::too_many_arguments,
        reason = "the walk's state, borrowed for one step"
    )]
    async fn settle(
        &self,
        w: &mut Writer<'_>,
        sid: &str,
        end: StepEnd,
        state: &mut HashMap<String, StepStatus>,
        outputs: &mut HashMap<String, Value>,
        attempts: &HashMap<String, i64>,
        by_id: &HashMap<&str, &Step>,
    ) -> crate::error::AppResult<bool> {
        match end {
            StepEnd::Done(outcome) => {
                state.insert(sid.to_owned(), StepStatus::Succeeded);
                outputs.insert(sid.to_owned(), outcome.output);
                for skip in outcome.skip {
                    if state.get(&skip) == Some(&StepStatus::Pending)
                        && by_id.contains_key(skip.as_str())
                        && !self.skip(w, &skip, state, attempts).await?
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            StepEnd::Failed(st) => {
                state.insert(sid.to_owned(), st);
                Ok(true)
            }
            StepEnd::LeaseLost => Ok(false),
        }
    }

    /// Runs an inline step's one attempt in the driver, holding back its start and end;
    /// returns how it ended and, when it failed, its error.
    async fn run_inline(
        &self,
        w: &mut Writer<'_>,
        tenant: crate::tenancy::TenantId,
        step: &Step,
        ctx: &Arc<Value>,
        attempt: i64,
    ) -> crate::error::AppResult<(StepEnd, Option<String>)> {
        let Ok(_permit) = self.step_slots.clone().acquire_owned().await else {
            return Ok((StepEnd::LeaseLost, None));
        };
        let start = StepChange {
            started_at: Some(self.now()),
            ..StepChange::new(step.id.clone(), StepStatus::Running, attempt)
        };
        w.step(start.clone()).await?;
        let (change, end) = self.attempt(tenant, step, ctx, start, true).await;
        let error = change.error.clone();
        w.step(change).await?;
        let end = end.unwrap_or(StepEnd::LeaseLost);
        self.count_step(&end);
        Ok((end, error))
    }
}

/// Whether a step runs in its driver rather than as a task of its own: a template step
/// (no I/O, bounded by the template limits) with one attempt and no GPU.
fn runs_inline(s: &Step) -> bool {
    matches!(s.kind.as_str(), "transform" | "condition")
        && s.retry.as_ref().is_none_or(|r| r.max_attempts <= 1)
        && s.resources.as_ref().is_none_or(|r| r.gpu_count == 0)
}

/// A driver's writes. While every step so far ran inline, they are held back and applied
/// together in one transaction: before the first step that runs as a task of its own (so
/// what it waits on is visible meanwhile), or at the execution's end. Holding back loses
/// nothing: a driver that stops before applying leaves the execution as it was claimed,
/// and the next claim runs those steps again (at-least-once; inline steps have no side
/// effects).
pub(super) struct Writer<'a> {
    engine: &'a Engine,
    id: ExecutionId,
    claim: &'a str,
    token: &'a CancellationToken,
    held: Option<Vec<store::Write>>,
    /// Where an execution claimed by the last transaction goes (see
    /// [`Engine::chains_claims`]).
    next: &'a mut Option<(ExecutionRow, Arc<str>)>,
}

impl<'a> Writer<'a> {
    fn new(
        engine: &'a Engine,
        id: ExecutionId,
        claim: &'a str,
        token: &'a CancellationToken,
        next: &'a mut Option<(ExecutionRow, Arc<str>)>,
    ) -> Self {
        Self {
            engine,
            id,
            claim,
            token,
            held: Some(Vec::new()),
            next,
        }
    }

    fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// A status change; a terminal one applies what is held back with it. `false` when
    /// refused.
    async fn transition(
        &mut self,
        to: ExecutionStatus,
        patch: Patch,
    ) -> crate::error::AppResult<bool> {
        let at = self.engine.now();
        if let Some(held) = &mut self.held {
            held.push(store::Write::Transition { to, patch, at });
            return if to.is_terminal() {
                self.flush_and_claim().await
            } else {
                Ok(true)
            };
        }
        Ok(self
            .engine
            .transition(self.id, self.claim, self.token, to, patch)
            .await?
            .is_some())
    }

    /// A step change; `false` when refused.
    async fn step(&mut self, change: StepChange) -> crate::error::AppResult<bool> {
        let at = self.engine.now();
        if let Some(held) = &mut self.held {
            held.push(store::Write::Step { change, at });
            return Ok(true);
        }
        self.engine
            .record(self.id, self.claim, self.token, &change)
            .await
    }

    /// Applies what is held back and stops holding; `false` when refused.
    async fn flush(&mut self) -> crate::error::AppResult<bool> {
        self.apply_held(false).await
    }

    /// [`Writer::flush`] at the execution's end: where the engine chains claims, the same
    /// transaction claims the execution this worker runs next.
    async fn flush_and_claim(&mut self) -> crate::error::AppResult<bool> {
        let chain = self.engine.chains_claims() && self.next.is_none();
        self.apply_held(chain).await
    }

    async fn apply_held(&mut self, chain: bool) -> crate::error::AppResult<bool> {
        let Some(writes) = self.held.take() else {
            return Ok(true);
        };
        if writes.is_empty() {
            return Ok(true);
        }
        let engine = self.engine;
        let app = &engine.app;
        let claim = chain.then(|| engine.claim_token());
        let (id, owner) = (self.id, self.claim);
        // Shared with the group commit's task (see `Engine::group`), not copied to it.
        let writes: Arc<[store::Write]> = writes.into();
        let (writes, next_owner) = (&writes, claim.as_deref());
        let done = engine
            .persist(self.token, || async move {
                // The lease starts when this attempt runs, not when the first one did
                // (`persist` retries while the database is unavailable).
                let next = next_owner.map(|owner| {
                    let (now, until) = engine.lease_window();
                    service::NextClaim {
                        owner,
                        node: &app.node.id,
                        now,
                        until,
                    }
                });
                match &engine.group {
                    Some(group) => group.apply_then_claim(id, owner, writes, next).await,
                    None => service::apply_then_claim(app, id, owner, writes, next).await,
                }
            })
            .await?;
        let Some((applied, claimed)) = done else {
            return Ok(false);
        };
        if let (Some(row), Some(claim)) = (claimed, claim) {
            *self.next = Some((row, claim));
        }
        Ok(applied)
    }
}
