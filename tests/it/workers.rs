//! Worker processes and schedules under load: two engines firing one tick once, a killed worker's execution finished by another, quotas holding executions back.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::executions::*;
use crate::helpers::{TestApp, bin, first_error_code};

/// Starts `agentplane worker` against the test's database.
pub async fn worker_process(db_url: &str) -> tokio::process::Child {
    worker_process_with(db_url, &[]).await
}

/// Starts `agentplane worker` with extra environment.
pub async fn worker_process_with(db_url: &str, extra: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("AGENTPLANE_LEASE_SECS", "2")
        .env("AGENTPLANE_POLL_MS", "100")
        .env("AGENTPLANE_WORKERS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.envs(extra.iter().copied());
    let mut child = cmd.spawn().expect("worker starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("worker line within 30 s")
        .expect("read")
        .expect("a line");
    assert!(line.contains("worker"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_execution_is_finished_by_another_after_its_lease_lapses() {
    // The API serves without workers; separate worker processes do the work.
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "crash",
        json!({ "steps": [
            { "id": "first", "kind": "transform", "config": { "template": "{\"v\": 1}" } },
            { "id": "slow", "kind": "delay", "dependsOn": ["first"], "config": { "ms": 2500 } },
            { "id": "last", "kind": "transform", "dependsOn": ["slow"], "config": { "template": "{\"v\": {{ steps.first.output.v + 1 }}}" } },
        ]}),
    )
    .await;
    let mut a = worker_process(&app.db.url).await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 20, step_status("slow", "RUNNING")).await;
    a.kill().await.expect("SIGKILL");
    let mut b = worker_process(&app.db.url).await;
    let e = wait_for(&app, &owner, &id, 30, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        e["claims"], 2,
        "claimed by the dead worker, then by the live one"
    );
    assert_eq!(step(&e, "first")["attempt"], 1, "finished steps are kept");
    assert_eq!(
        step(&e, "slow")["attempt"],
        2,
        "the interrupted step ran again"
    );
    assert_eq!(e["output"], json!({ "last": { "v": 2 } }));
    b.kill().await.expect("kill");
}

/// A tenant `slug` limited to one running execution, and a published workflow of one
/// inline step: (owner's token, workflow id).
async fn one_slot(app: &TestApp, slug: &str) -> (String, String) {
    let (tenant, owner) = app.tenant_with_owner(slug).await;
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": tenant, "plan": "CUSTOM",
                           "quotas": { "maxConcurrentExecutions": 1 } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let wf = published(
        app,
        &owner,
        "inline",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    (owner, wf)
}

/// A driver writes RUNNING with its first write, and holds that write back while it runs
/// inline steps (for a workflow of only inline steps, until the end): the concurrency
/// quota counts a claimed execution that is still QUEUED, or a second claim takes the
/// tenant's last slot again in that window (two executions ran under a quota of one).
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_execution_holds_its_tenants_slot_before_it_writes_running() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (owner, wf) = one_slot(&app, "slots").await;
    let a = start(&app, &owner, json!({ "workflowId": wf })).await;
    let b = start(&app, &owner, json!({ "workflowId": wf })).await;
    assert!(a["execution"]["id"].is_string(), "{a}");
    let b_id = b["execution"]["id"].as_str().expect("id").to_owned();
    let core = &app.state.app;
    let now = agentplane::db::ids::db_time(core.clock.now());
    let until = now + chrono::Duration::seconds(60);
    let node = core.node.id.clone();
    let claim = |owner: &'static str, at: chrono::NaiveDateTime| {
        let node = node.clone();
        async move {
            agentplane::executions::store::claim(&core.db, owner, &node, at, until)
                .await
                .expect("claim")
                .map(|row| row.id.to_string())
        }
    };
    let first = claim("test:first", now)
        .await
        .expect("the first claim takes a slot");
    // Its driver has not written RUNNING yet: the slot is taken all the same.
    assert_eq!(
        claim("test:second", now).await,
        None,
        "a second execution was claimed past maxConcurrentExecutions 1"
    );
    let out = app
        .gql_as(
            &owner,
            "query($id: ID!) { execution(id: $id) { status waitingReason } tenant { usage { runningExecutions } } }",
            json!({ "id": b_id }),
        )
        .await;
    assert_eq!(out["data"]["execution"]["status"], "QUEUED", "{out}");
    assert!(
        out["data"]["execution"]["waitingReason"]
            .as_str()
            .is_some_and(|r| r.contains("1 of 1") && r.contains("maxConcurrentExecutions")),
        "{out}"
    );
    assert_eq!(
        out["data"]["tenant"]["usage"]["runningExecutions"], 1,
        "{out}"
    );
    // A lapsed lease holds no slot: the execution is claimed again.
    let later = until + chrono::Duration::seconds(1);
    assert_eq!(claim("test:third", later).await, Some(first));
}

/// Claims racing for a tenant's last slot: eight at the same moment (on PostgreSQL,
/// SKIP LOCKED hands each a different row and none sees the others' uncommitted leases).
/// At most one keeps a lease, and none is stuck: a slot given back by every racer is
/// taken by the next claim.
#[tokio::test(flavor = "multi_thread")]
async fn claims_racing_for_a_tenants_last_slot_leave_at_most_one_lease() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (owner, wf) = one_slot(&app, "race").await;
    for _ in 0..8 {
        start(&app, &owner, json!({ "workflowId": wf })).await;
    }
    let core = &app.state.app;
    let now = agentplane::db::ids::db_time(core.clock.now());
    let until = now + chrono::Duration::seconds(60);
    let node = core.node.id.clone();
    for round in 0..5 {
        let racers = (0..8).map(|i| {
            let (owner, node) = (format!("race:{round}:{i}"), node.clone());
            async move {
                agentplane::executions::store::claim(&core.db, &owner, &node, now, until)
                    .await
                    .expect("claim")
            }
        });
        let won = futures_util::future::join_all(racers)
            .await
            .into_iter()
            .flatten()
            .count();
        assert!(won <= 1, "round {round}: {won} claims took a slot of 1");
        let usage = app
            .gql_as(
                &owner,
                "{ tenant { usage { runningExecutions } } }",
                json!({}),
            )
            .await;
        let leased = usage["data"]["tenant"]["usage"]["runningExecutions"]
            .as_i64()
            .unwrap_or_else(|| panic!("{usage}"));
        assert!(leased <= 1, "round {round}: {leased} leases held");
        if leased == 0 {
            let next =
                agentplane::executions::store::claim(&core.db, "race:next", &node, now, until)
                    .await
                    .expect("claim");
            assert!(next.is_some(), "round {round}: the slot was left empty");
        }
        // Free the slot for the next round.
        for (id, _) in agentplane::executions::store::active_ids(&core.db)
            .await
            .expect("ids")
        {
            for o in (0..8)
                .map(|i| format!("race:{round}:{i}"))
                .chain(["race:next".to_owned()])
            {
                agentplane::executions::store::release(&core.db, id, &o)
                    .await
                    .expect("release");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_hold_executions_back_and_refuse_over_the_monthly_limit() {
    let app = TestApp::spawn().await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": tenant, "plan": "CUSTOM",
                           "quotas": { "maxConcurrentExecutions": 1, "maxExecutionsPerMonth": 3 } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    // `a` runs until it is cancelled, so `b` is held back for as long as the test
    // looks, however busy the machine is; `b` itself is quick.
    let slow = published(
        &app,
        &owner,
        "slow",
        json!({ "steps": [ { "id": "w", "kind": "delay", "config": { "ms": 120000 } } ]}),
    )
    .await;
    let wf = published(
        &app,
        &owner,
        "quick",
        json!({ "steps": [ { "id": "w", "kind": "delay", "config": { "ms": 10 } } ]}),
    )
    .await;
    let a = start(&app, &owner, json!({ "workflowId": slow })).await;
    let b = start(&app, &owner, json!({ "workflowId": wf })).await;
    let a_id = a["execution"]["id"].as_str().expect("id").to_owned();
    let b_id = b["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &a_id, 10, |e| e["status"] == "RUNNING").await;
    // One slot: b waits, and says why (once an engine has looked at it: on a busy
    // machine that can take a moment).
    let mut out = serde_json::Value::Null;
    for _ in 0..50 {
        out = app
            .gql_as(
                &owner,
                "query($id: ID!) { execution(id: $id) { status waitingReason } }",
                json!({ "id": b_id }),
            )
            .await;
        if out["data"]["execution"]["waitingReason"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(out["data"]["execution"]["status"], "QUEUED", "{out}");
    assert!(
        out["data"]["execution"]["waitingReason"]
            .as_str()
            .expect("reason")
            .contains("maxConcurrentExecutions"),
        "{out}"
    );
    // Still held back a moment later: the slot is not free.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(execution(&app, &owner, &b_id).await["status"], "QUEUED");
    // Cancelling `a` frees the slot, and `b` runs.
    let out = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { status } } }",
            json!({ "i": { "executionId": a_id } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let e = wait_for(&app, &owner, &b_id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let a_done = wait_for(&app, &owner, &a_id, 20, finished).await;
    assert_eq!(a_done["status"], "CANCELLED", "{a_done}");
    // The third start is allowed, the fourth is over the monthly quota.
    start(&app, &owner, json!({ "workflowId": wf })).await;
    let out = app
        .gql_as(&owner, START, json!({ "i": { "workflowId": wf } }))
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{out}"
    );
    assert_eq!(
        out["errors"][0]["extensions"]["quota"],
        "maxExecutionsPerMonth"
    );
}
