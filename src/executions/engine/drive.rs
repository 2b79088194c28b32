//! Driving one claimed execution: the DAG walk (what is ready, what is skipped, what
//! failed), to the execution's end or until the lease is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempts::step_rows_error;
use super::{Engine, StepEnd};
use crate::executions::model::{ExecutionId, ExecutionRow, ExecutionStatus, StepStatus};
use crate::executions::steps::{self};
use crate::executions::store::{self, Patch, StepChange};
use crate::workflows::dag::{Definition, Step};

impl Engine {
    pub(super) async fn drive(
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
}
