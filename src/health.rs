//! In-product health signals (`systemHealth`, platform admins): the conditions the
//! Prometheus alert rules in `deploy/observability/alerts.yml` watch, computed from the
//! database and this process, so GraphiQL and dashboards show the same truth without
//! Prometheus. Each check is named after the alert it mirrors and uses its threshold.
//!
//! Platform-wide checks read the database (nodes, GPUs, the queue, recent executions);
//! the audit-verification and pool checks describe this replica. GraphQL error rate and
//! latency, and auth-failure spikes, need a time series: Prometheus watches those.

use std::sync::atomic::Ordering;

use chrono::{Duration as ChronoDuration, NaiveDateTime};

use crate::app::App;
use crate::cluster::model::NodeStatus;
use crate::db::ids::db_time;
use crate::db::schema::executions;
use crate::error::AppResult;
use crate::executions::model::ExecutionStatus;

/// Oldest queued execution before `AgentplaneQueueBacklog` (seconds).
pub const QUEUE_AGE_LIMIT_SECS: i64 = 300;
/// Failed or timed-out share of recent executions before `AgentplaneExecutionFailureRate`.
pub const FAILURE_RATE_LIMIT: f64 = 0.2;
/// Fewest finished recent executions the failure rate is judged on.
pub const FAILURE_RATE_MIN_EXECUTIONS: i64 = 5;
/// LLM spend of the last hour before `AgentplaneLlmSpendHigh` (USD).
pub const LLM_SPEND_LIMIT_USD: f64 = 100.0;
/// GPU memory in use before `AgentplaneGpuMemoryNearlyFull`.
pub const GPU_MEMORY_LIMIT: f64 = 0.95;
/// Pool connections in use before `AgentplaneDatabasePoolExhausted`.
pub const POOL_LIMIT: f64 = 0.9;

/// How bad a check (or the whole report) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Look soon.
    Warning,
    /// Act now.
    Critical,
}

/// One condition, as its alert would see it.
#[derive(Debug, Clone)]
pub struct Check {
    /// The alert it mirrors, e.g. `AgentplaneNodeOffline`.
    pub name: &'static str,
    /// Its level now.
    pub level: Level,
    /// What was seen, in words.
    pub detail: String,
}

/// Every check, and the worst level among them.
#[derive(Debug, Clone)]
pub struct Report {
    /// The worst level of any check.
    pub level: Level,
    /// When it was computed.
    pub checked_at: NaiveDateTime,
    /// Each check, in a fixed order.
    pub checks: Vec<Check>,
}

fn check(name: &'static str, bad: Level, problems: &[String], ok: String) -> Check {
    if problems.is_empty() {
        Check {
            name,
            level: Level::Ok,
            detail: ok,
        }
    } else {
        Check {
            name,
            level: bad,
            detail: problems.join("; "),
        }
    }
}

/// Computes the report.
pub async fn report(app: &App) -> AppResult<Report> {
    let now = db_time(app.clock.now());
    let wall = crate::cluster::service::wall_now();
    let nodes = crate::cluster::store::all_nodes(&app.db).await?;
    let mut offline = Vec::new();
    let mut unhealthy = Vec::new();
    let mut gpus_full = Vec::new();
    let mut gpus = 0;
    for n in &nodes {
        let (score, status) = crate::cluster::view(n, wall, &app.config.cluster);
        match status {
            NodeStatus::Offline => offline.push(format!("{} is OFFLINE", n.name)),
            NodeStatus::Unhealthy => {
                unhealthy.push(format!("{} is UNHEALTHY (score {score:.2})", n.name));
            }
            _ => {}
        }
        if status == NodeStatus::Offline {
            continue;
        }
        for g in n.gpus() {
            gpus += 1;
            let used = g.memory_used_mb as f64 / (g.memory_total_mb.max(1)) as f64;
            if used > GPU_MEMORY_LIMIT {
                gpus_full.push(format!(
                    "GPU {} on {} has {:.1} % of its memory in use",
                    g.index,
                    n.name,
                    used * 100.0
                ));
            }
        }
    }
    let (depth, oldest) = crate::cluster::store::queue_stats(&app.db, None).await?;
    let age = oldest.map_or(0, |o| (now - o).num_seconds().max(0));
    let recent = recent_executions(app, now - ChronoDuration::minutes(10)).await?;
    let finished: i64 = recent
        .iter()
        .filter(|(s, _, _)| s.is_terminal())
        .map(|(_, n, _)| n)
        .sum();
    let failed: i64 = recent
        .iter()
        .filter(|(s, _, _)| matches!(s, ExecutionStatus::Failed | ExecutionStatus::TimedOut))
        .map(|(_, n, _)| n)
        .sum();
    let spend: f64 = recent_executions(app, now - ChronoDuration::hours(1))
        .await?
        .iter()
        .map(|(_, _, c)| c)
        .sum();
    let verify_failures = crate::metrics::AUDIT_VERIFICATION_FAILURES.load(Ordering::Relaxed);
    let (idle, in_use, max) = app.db.pool_state();

    let rate = if finished > 0 {
        failed as f64 / finished as f64
    } else {
        0.0
    };
    let checks = vec![
        check(
            "AgentplaneNodeOffline",
            Level::Critical,
            &offline,
            format!("{} nodes, none OFFLINE", nodes.len()),
        ),
        check(
            "AgentplaneNodeUnhealthy",
            Level::Warning,
            &unhealthy,
            "no node is UNHEALTHY".into(),
        ),
        check(
            "AgentplaneGpuMemoryNearlyFull",
            Level::Warning,
            &gpus_full,
            format!(
                "{gpus} GPUs, each under {:.0} % memory in use",
                GPU_MEMORY_LIMIT * 100.0
            ),
        ),
        check(
            "AgentplaneQueueBacklog",
            Level::Warning,
            &if age > QUEUE_AGE_LIMIT_SECS {
                vec![format!(
                    "{depth} executions queued; the oldest has waited {age} s (limit {QUEUE_AGE_LIMIT_SECS} s)"
                )]
            } else {
                Vec::new()
            },
            format!("{depth} executions queued; the oldest has waited {age} s"),
        ),
        check(
            "AgentplaneExecutionFailureRate",
            Level::Warning,
            &if finished >= FAILURE_RATE_MIN_EXECUTIONS && rate > FAILURE_RATE_LIMIT {
                vec![format!(
                    "{failed} of the {finished} executions queued in the last 10 minutes that finished failed or timed out ({:.0} %)",
                    rate * 100.0
                )]
            } else {
                Vec::new()
            },
            format!(
                "{failed} of the {finished} executions queued in the last 10 minutes that finished failed or timed out"
            ),
        ),
        check(
            "AgentplaneLlmSpendHigh",
            Level::Warning,
            &if spend > LLM_SPEND_LIMIT_USD {
                vec![format!(
                    "executions queued in the last hour spent {spend:.2} USD on LLM calls (limit {LLM_SPEND_LIMIT_USD:.0})"
                )]
            } else {
                Vec::new()
            },
            format!("executions queued in the last hour spent {spend:.2} USD on LLM calls"),
        ),
        check(
            "AgentplaneAuditChainBroken",
            Level::Critical,
            &if verify_failures > 0 {
                vec![format!(
                    "{verify_failures} audit chain verifications on this replica found a broken chain since it started"
                )]
            } else {
                Vec::new()
            },
            "no audit chain verification on this replica found a broken chain".into(),
        ),
        check(
            "AgentplaneDatabasePoolExhausted",
            Level::Warning,
            &if f64::from(in_use) >= POOL_LIMIT * f64::from(max.max(1)) {
                vec![format!(
                    "{in_use} of this replica's {max} database connections are in use"
                )]
            } else {
                Vec::new()
            },
            format!("{in_use} of this replica's {max} database connections in use, {idle} idle"),
        ),
    ];
    Ok(Report {
        level: checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok),
        checked_at: now,
        checks,
    })
}

/// Executions queued since `since`, by status: `(status, count, LLM cost)`. Walks the
/// `(status, created_at, id)` index once per status.
async fn recent_executions(
    app: &App,
    since: NaiveDateTime,
) -> AppResult<Vec<(ExecutionStatus, i64, f64)>> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut out = Vec::new();
    for status in ExecutionStatus::ALL {
        let (n, cost): (i64, Option<f64>) = crate::db_run!(&app.db, |conn| {
            executions::table
                .filter(executions::status.eq(*status))
                .filter(executions::created_at.ge(since))
                .select((
                    diesel::dsl::count_star(),
                    diesel::dsl::sum(executions::cost_usd),
                ))
                .first(conn)
                .await?
        });
        out.push((*status, n, cost.unwrap_or(0.0)));
    }
    Ok(out)
}
