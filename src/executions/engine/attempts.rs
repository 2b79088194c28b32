//! Running one step: GPU reservation, attempts with timeout, retries and backoff, each
//! change recorded under the lease.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Engine, StepEnd};
use crate::app::App;
use crate::executions::model::{ExecutionId, StepStatus};
use crate::executions::steps::{self, StepError, StepInput};
use crate::executions::store::{self, StepChange};
use crate::workflows::dag::Step;

impl Engine {
    /// Runs a step's attempts (with retries and backoff), recording each change.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's whole context, passed once"
    )]
    pub(super) async fn run_step(
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
            if let Err(e) = crate::cluster::store::release_step(&self.app.db, id, &step.id).await {
                tracing::warn!(execution = %id, step = %step.id, error = ?e, "releasing GPU memory failed");
            }
        }
        self.count_step(&end);
        end
    }

    /// Counts a finished step in this node's telemetry (its step error rate).
    pub(super) fn count_step(&self, end: &StepEnd) {
        match end {
            StepEnd::Done(_) => self.app.node.steps_ok.fetch_add(1, Ordering::Relaxed),
            StepEnd::Failed(_) => self.app.node.steps_failed.fetch_add(1, Ordering::Relaxed),
            StepEnd::LeaseLost => 0,
        };
    }

    /// Waits until this node can reserve the step's GPU memory within the tenant's quota,
    /// showing why meanwhile (`waitingReason`). `Some(end)` when the step must not run.
    pub(super) async fn reserve_gpus(
        &self,
        id: ExecutionId,
        tenant: crate::tenancy::TenantId,
        step_id: &str,
        mb: u64,
        count: usize,
    ) -> Option<StepEnd> {
        let mut shown: Option<String> = None;
        loop {
            let req = crate::cluster::store::StepRequest {
                node_id: &self.app.node.id,
                tenant,
                execution: id,
                step: step_id,
                memory_mb: mb,
                count,
                now: self.now(),
            };
            let reserved = self
                .app
                .db
                .tx("", async |c| {
                    crate::cluster::store::reserve_for_step(c, &req).await
                })
                .await;
            match reserved {
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
                            id,
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
    pub(super) async fn run_attempts(
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
            let (change, end) = self
                .attempt(tenant, step, &ctx, start, attempt >= max_attempts)
                .await;
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

    /// Runs one attempt of `step` (started by `start`) and returns the change that
    /// finishes it, with how the step ended; `None` when another attempt follows (the
    /// change is then RETRYING). `last` says no attempt follows this one.
    pub(super) async fn attempt(
        &self,
        tenant: crate::tenancy::TenantId,
        step: &Step,
        ctx: &std::sync::Arc<Value>,
        start: StepChange,
        last: bool,
    ) -> (StepChange, Option<StepEnd>) {
        let timeout = Duration::from_secs(u64::from(step.timeout_seconds.unwrap_or(300)));
        let input = StepInput {
            app: &self.app,
            http: &self.http,
            policy: &self.policy,
            tenant,
            context: ctx,
        };
        let began = std::time::Instant::now();
        let span = tracing::info_span!(
            "step.run",
            step = %step.id,
            kind = %step.kind,
            attempt = start.attempt,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::telemetry::record_ids(&span);
        let run = {
            use tracing::Instrument as _;
            tokio::time::timeout(timeout, steps::run(step, &input)).instrument(span)
        };
        let result = match run.await {
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
                    crate::executions::templates::too_large("output", max_output),
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
                change.unpriced_calls = outcome.unpriced_calls;
                Some(StepEnd::Done(outcome))
            }
            Err((st, e)) if !e.retryable || last => {
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
        crate::metrics::step_attempt(
            &step.kind,
            match change.status {
                StepStatus::Succeeded => "succeeded",
                StepStatus::TimedOut => "timed_out",
                StepStatus::Retrying => "retrying",
                _ => "failed",
            },
            began.elapsed(),
        );
        (change, end)
    }
}

pub(super) fn truncate(s: &str) -> String {
    if s.chars().count() <= 2000 {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(2000).collect();
        out.push('…');
        out
    }
}

/// `": <error>"` of a step, for the execution's error text.
pub(super) async fn step_rows_error(app: &App, id: ExecutionId, sid: &str) -> String {
    store::steps_of(&app.db, id)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.step_id == sid))
        .and_then(|r| r.error)
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}
