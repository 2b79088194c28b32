//! Engine throughput and latency, run by hand:
//!
//! ```text
//! cargo bench --bench engine                                   # SQLite (temp file)
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench engine
//! BENCH_EXECUTIONS=2000 BENCH_WORKERS=16 cargo bench --bench engine
//! ```
//!
//! Trivial one-step workflows (a `transform`) go through the real queue and engine:
//! 1. **baseline**: enqueue N executions with no workers running (the API's write cost);
//! 2. **throughput**: start the embedded workers and time until all N succeeded;
//! 3. **latency**: with workers idle, enqueue executions one at a time and measure
//!    enqueue → RUNNING (`started_at - created_at`) through the wake-up path.
//!
//! Results are printed with the ratio of execution rate to enqueue rate, so numbers from
//! different machines compare. On PostgreSQL the bench works in a fresh schema it drops.

#[path = "common.rs"]
mod common;

use common::{env_num, percentile};
use std::time::{Duration, Instant};

use agentplane::app::App;
use agentplane::config::{CliOverrides, Config};
use agentplane::db::ids::db_time;
use agentplane::executions::model::ExecutionStatus;
use agentplane::executions::service::{self, StartRequest};
use agentplane::server::AppState;
use agentplane::workflows::model::{
    WorkflowId, WorkflowRow, WorkflowVersionId, WorkflowVersionRow,
};

/// Waits until every execution of `ids` ended. Listens to the process's event bus (the
/// engine runs in this process), so waiting costs the database nothing; reads the
/// database only at the start, when the bus lagged, and after 500 ms of silence.
async fn wait_all_done(
    app: &App,
    ids: &[agentplane::executions::model::ExecutionId],
    tenant: agentplane::tenancy::TenantId,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = app.bus.subscribe();
    let mut left: std::collections::HashSet<_> = ids.iter().copied().collect();
    let check = |left: std::collections::HashSet<agentplane::executions::model::ExecutionId>| async move {
        let pending: Vec<_> = left.into_iter().collect();
        let mut still = std::collections::HashSet::new();
        for chunk in pending.chunks(500) {
            let rows = agentplane::executions::store::by_ids(&app.db, tenant, chunk)
                .await
                .expect("load");
            still.extend(
                rows.iter()
                    .filter(|r| !r.status.is_terminal())
                    .map(|r| r.id),
            );
        }
        still
    };
    left = check(left).await;
    while !left.is_empty() {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Ok(ev)) => {
                if ev.step_id.is_none() && ev.status.is_terminal() {
                    left.remove(&ev.execution_id);
                }
            }
            Ok(Err(RecvError::Closed)) => return,
            Ok(Err(RecvError::Lagged(_))) | Err(_) => left = check(left).await,
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n = env_num("BENCH_EXECUTIONS", 1000);
    let workers = env_num("BENCH_WORKERS", 8);
    let samples = env_num("BENCH_LATENCY_SAMPLES", 50);
    let bench_db = common::BenchDb::create("bench_engine").await?;
    let url = bench_db.url.clone();
    let vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url.clone()),
        ("AGENTPLANE_WORKERS".into(), "0".into()),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE".into(), "0".into()),
        ("AGENTPLANE_POLL_MS".into(), "200".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let mut config = Config::load_with(&CliOverrides::default(), &|k| {
        vars.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    agentplane::db::migrate::run_pending(&config.database_url).await?;
    config.engine.workers = 0;
    let state = AppState::new(config).await?;
    let app = state.app.clone();
    let backend = format!("{:?}", app.db.backend());

    // One tenant with room for the run, one published one-step workflow.
    let now = db_time(app.clock.now());
    let mut tenant = agentplane::tenancy::model::new_tenant_row(
        "bench",
        "Bench",
        agentplane::tenancy::model::Plan::Enterprise,
        false,
        now,
    );
    tenant.max_concurrent_executions = 10_000;
    app.db
        .tx("", async |c| {
            agentplane::tenancy::store::insert(c, &tenant).await
        })
        .await
        .map_err(agentplane::error::AppError::into_anyhow)?;
    let definition = serde_json::json!({ "steps": [
        { "id": "t", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } }
    ]});
    let wf = WorkflowRow {
        id: WorkflowId::new(),
        tenant_id: tenant.id,
        name: "bench".into(),
        description: String::new(),
        tags: "[]".into(),
        environment: agentplane::workflows::model::Environment::Development,
        visibility: agentplane::workflows::model::Visibility::Tenant,
        owner_id: None,
        created_by: "bench".into(),
        team_id: None,
        definition: definition.to_string(),
        latest_version: 0,
        created_at: now,
        updated_at: now,
    };
    let audit = |action: &str| {
        agentplane::audit::Entry::change(
            &agentplane::audit::Origin::system(tenant.id),
            action,
            "workflow",
            wf.id,
            None,
            now,
        )
    };
    let version = WorkflowVersionRow {
        id: WorkflowVersionId::new(),
        tenant_id: tenant.id,
        workflow_id: wf.id,
        version: 1,
        definition: definition.to_string(),
        published_by: "bench".into(),
        created_at: now,
    };
    // Seeded in one transaction, as the workflow service would write it.
    app.db
        .tx(tenant.id, async |conn| {
            use agentplane::workflows::store;
            store::insert(conn, &wf).await?;
            agentplane::audit::append(conn, &audit("workflow.created")).await?;
            store::add_version(conn, &version).await?;
            agentplane::audit::append(conn, &audit("workflow.published")).await?;
            Ok(())
        })
        .await
        .map_err(agentplane::error::AppError::into_anyhow)?;
    let request = |i: usize| StartRequest {
        version: version.clone(),
        input: serde_json::json!({ "n": i }),
        idempotency_key: None,
        started_by: "bench".into(),
        started_by_user: None,
        retry_of: None,
        schedule_id: None,
        timeout_seconds: None,
        origin: agentplane::audit::Origin::system(tenant.id),
    };

    // 1. Baseline: enqueue with no workers.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            service::start(&app, &wf, request(i))
                .await
                .map_err(agentplane::error::AppError::into_anyhow)?
                .0
                .id,
        );
    }
    let enqueue_secs = t.elapsed().as_secs_f64();
    let enqueue_rate = n as f64 / enqueue_secs;
    // For profilers attaching to this process: the throughput phase starts now.
    eprintln!("enqueued {n} in {enqueue_secs:.2} s; draining");

    // 2. Throughput: the embedded workers drain the queue.
    let t = Instant::now();
    let background = agentplane::server::Background::start(
        &app,
        workers,
        agentplane::cluster::model::NodeKind::Worker,
        None,
    )?;
    wait_all_done(&app, &ids, tenant.id).await;
    let run_secs = t.elapsed().as_secs_f64();
    let exec_rate = n as f64 / run_secs;
    let rows = agentplane::executions::store::by_ids(&app.db, tenant.id, &ids)
        .await
        .map_err(agentplane::error::AppError::into_anyhow)?;
    let ok = rows
        .iter()
        .filter(|r| r.status == ExecutionStatus::Succeeded)
        .count();

    // 3. Latency: one at a time onto idle workers.
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let id = service::start(&app, &wf, request(i))
            .await
            .map_err(agentplane::error::AppError::into_anyhow)?
            .0
            .id;
        wait_all_done(&app, &[id], tenant.id).await;
        let row = agentplane::executions::store::find(&app.db, tenant.id, id)
            .await
            .map_err(agentplane::error::AppError::into_anyhow)?
            .expect("row");
        if let Some(s) = row.started_at {
            latencies.push((s - row.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    background.shutdown(Duration::from_secs(2)).await;
    app.shutdown.cancel();

    println!("backend: {backend}, executions: {n} (succeeded {ok}), workers: {workers}");
    println!("baseline enqueue:   {enqueue_rate:>9.1} executions/s ({enqueue_secs:.2} s)");
    println!("engine throughput:  {exec_rate:>9.1} executions/s ({run_secs:.2} s)");
    println!("ratio throughput/enqueue: {:.2}", exec_rate / enqueue_rate);
    println!(
        "enqueue→start latency over {} samples: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    drop(state);
    bench_db.drop_schema().await?;
    Ok(())
}
