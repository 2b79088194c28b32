//! Executions as readers see them: ordered, tenant-scoped subscriptions; nested reads at a constant statement count; one schedule tick fired once by two engines.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::executions::*;
use crate::helpers::{TestApp, first_error_code, ws_authed, ws_next_json, ws_send};

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_sees_every_transition_in_order_and_other_tenants_see_nothing() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;
    let wf = published(
        &app,
        &owner,
        "watched",
        json!({ "steps": [
            { "id": "a", "kind": "delay", "config": { "ms": 300 } },
            { "id": "b", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 100 } },
        ]}),
    )
    .await;
    // The other tenant listens to everything it may see.
    let mut spy = ws_authed(&app.ws_url(), "graphql-transport-ws", &other).await;
    ws_send(
        &mut spy,
        json!({ "id": "s", "type": "subscribe", "payload": { "query": "subscription { executionEvents { sequence executionId status } }" } }),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { sequence kind status stepId stepStatus attempt } }",
            "variables": { "id": id } } }),
    )
    .await;
    let mut events = Vec::new();
    loop {
        let msg = ws_next_json(&mut ws).await;
        if msg["type"] == "complete" {
            break;
        }
        assert_eq!(msg["type"], "next", "{msg}");
        events.push(msg["payload"]["data"]["executionUpdated"].clone());
    }
    assert_eq!(events[0]["kind"], "SNAPSHOT");
    let first = events[0]["sequence"].as_i64().expect("seq");
    for (i, ev) in events.iter().enumerate().skip(1) {
        assert_eq!(
            ev["sequence"].as_i64(),
            Some(first + i64::try_from(i).expect("i")),
            "gap at {i}: {events:?}"
        );
    }
    let last = events.last().expect("events");
    assert_eq!(last["kind"], "STATUS_CHANGED");
    assert_eq!(last["status"], "SUCCEEDED");
    // Together with the snapshot, the stream covers the whole life: the stored log agrees.
    let e = execution(&app, &owner, &id).await;
    assert_eq!(last["sequence"], e["sequence"]);

    // The other tenant received nothing (not even a snapshot of the running execution).
    let quiet = tokio::time::timeout(Duration::from_millis(500), ws_next_json(&mut spy)).await;
    assert!(quiet.is_err(), "another tenant's subscriber got {quiet:?}");
    // And cannot subscribe to the execution by ID: it does not exist for them.
    let mut ws2 = ws_authed(&app.ws_url(), "graphql-transport-ws", &other).await;
    ws_send(
        &mut ws2,
        json!({ "id": "2", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { sequence } }",
            "variables": { "id": id } } }),
    )
    .await;
    let msg = ws_next_json(&mut ws2).await;
    let errors = if msg["type"] == "error" {
        msg["payload"].clone()
    } else {
        msg["payload"]["errors"].clone()
    };
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{msg}");
    assert!(msg["payload"]["data"].is_null(), "{msg}");
    // Nor read it over HTTP.
    let out = app.gql_as(&other, EXEC, json!({ "id": id })).await;
    assert_eq!(first_error_code(&out).as_deref(), Some("NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_reads_cost_the_same_statements_for_5_or_50_workflows() {
    // Hundreds of set-up requests as one owner: not what this test is about.
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0"),
        ("AGENTPLANE_EXPENSIVE_OPERATIONS_PER_MINUTE", "0"),
    ])
    .await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    // 500 executions started in seconds: past the tenant's expensive-operation budget.
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": acme, "plan": "PRO",
                           "quotas": { "expensiveOperationsPerMinute": 0 } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    for i in 0..50 {
        let wf = published(
            &app,
            &owner,
            &format!("wf-{i:02}"),
            json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "1" } },
                               { "id": "u", "kind": "transform", "dependsOn": ["t"], "config": { "template": "2" } } ]}),
        )
        .await;
        for _ in 0..10 {
            start(&app, &owner, json!({ "workflowId": wf })).await;
        }
    }
    let query = "query($n: Int!) { workflows(first: $n) { edges { node { id owner { email } versions { version } schedules { id } stats { total } recentExecutions(first: 10) { id status startedBy { email } workflow { name } steps { stepId status } } } } } }";
    let count = |n: i64| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let before = app.state.app.statements.load(Ordering::SeqCst);
            let out = app.gql_as(&owner, query, json!({ "n": n })).await;
            let after = app.state.app.statements.load(Ordering::SeqCst);
            assert!(out["errors"].is_null(), "{out}");
            let edges = out["data"]["workflows"]["edges"]
                .as_array()
                .expect("edges")
                .len();
            assert_eq!(edges, usize::try_from(n).expect("n"));
            let execs = out["data"]["workflows"]["edges"][0]["node"]["recentExecutions"]
                .as_array()
                .expect("recent")
                .len();
            assert_eq!(execs, 10);
            after - before
        }
    };
    let small = count(5).await;
    let large = count(50).await;
    assert_eq!(
        small, large,
        "statements grew with the page: {small} vs {large}"
    );
    // Aliases asking for different counts (one through a variable) each get theirs,
    // newest first, still in a fixed number of statements.
    let aliased = "query($n: Int!, $m: Int!) { workflows(first: $n) { edges { node { \
                   three: recentExecutions(first: 3) { id createdAt } \
                   some: recentExecutions(first: $m) { id createdAt } \
                   all: recentExecutions { id } } } } }";
    let counts = |n: i64, m: i64| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let before = app.state.app.statements.load(Ordering::SeqCst);
            let out = app.gql_as(&owner, aliased, json!({ "n": n, "m": m })).await;
            let after = app.state.app.statements.load(Ordering::SeqCst);
            assert!(out["errors"].is_null(), "{out}");
            let node = &out["data"]["workflows"]["edges"][0]["node"];
            let three = node["three"].as_array().expect("three");
            let some = node["some"].as_array().expect("some");
            assert_eq!(three.len(), 3, "{out}");
            assert_eq!(some.len(), usize::try_from(m).expect("m"), "{out}");
            assert_eq!(node["all"].as_array().expect("all").len(), 10, "{out}");
            assert_eq!(three[..], some[..3], "the same newest executions: {out}");
            let times: Vec<&str> = some
                .iter()
                .map(|e| e["createdAt"].as_str().expect("createdAt"))
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] >= w[1]),
                "newest first: {times:?}"
            );
            after - before
        }
    };
    assert_eq!(counts(5, 7).await, counts(50, 7).await);
    // A list asking only for what an execution's head holds is read as heads, one asking
    // for more (directly or through a fragment) whole: each alias gets all it asked for,
    // with the same executions, in a fixed number of statements.
    let mixed = "query($n: Int!) { workflows(first: $n) { edges { node { \
                 heads: recentExecutions(first: 3) { id status version sequence createdAt startedAt finishedAt durationMs workflow { name } } \
                 whole: recentExecutions(first: 3) { id status input trigger costUsd claims } \
                 spread: recentExecutions(first: 3) { ...More } } } } } \
                 fragment More on Execution { id timeoutSeconds error }";
    let both = |n: i64| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let before = app.state.app.statements.load(Ordering::SeqCst);
            let out = app.gql_as(&owner, mixed, json!({ "n": n })).await;
            let after = app.state.app.statements.load(Ordering::SeqCst);
            assert!(out["errors"].is_null(), "{out}");
            for edge in out["data"]["workflows"]["edges"].as_array().expect("edges") {
                let node = &edge["node"];
                let heads = node["heads"].as_array().expect("heads");
                let whole = node["whole"].as_array().expect("whole");
                let spread = node["spread"].as_array().expect("spread");
                assert_eq!(heads.len(), 3, "{out}");
                for ((h, w), s) in heads.iter().zip(whole).zip(spread) {
                    assert_eq!(h["id"], w["id"], "{out}");
                    assert_eq!(h["id"], s["id"], "{out}");
                    assert_eq!(h["status"], w["status"], "{out}");
                    assert_eq!(h["version"], 1, "{out}");
                    assert!(h["sequence"].as_i64().is_some_and(|q| q >= 1), "{out}");
                    assert!(h["createdAt"].is_string(), "{out}");
                    assert!(h["workflow"]["name"].is_string(), "{out}");
                    assert!(
                        w["trigger"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("user:")),
                        "{out}"
                    );
                    assert!(w["input"].is_object(), "{out}");
                    assert!(w["claims"].is_i64(), "{out}");
                    assert!(s["timeoutSeconds"].as_i64().is_some_and(|t| t > 0), "{out}");
                }
            }
            after - before
        }
    };
    assert_eq!(both(5).await, both(50).await);
    // And the executions connection with nested fields.
    let q2 = "query($n: Int!) { executions(first: $n) { totalCount edges { node { id workflow { name } startedBy { email } steps { stepId } } } } }";
    let run = |n: i64| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let before = app.state.app.statements.load(Ordering::SeqCst);
            let out = app.gql_as(&owner, q2, json!({ "n": n })).await;
            assert!(out["errors"].is_null(), "{out}");
            assert_eq!(out["data"]["executions"]["totalCount"], 500);
            app.state.app.statements.load(Ordering::SeqCst) - before
        }
    };
    assert_eq!(run(5).await, run(100).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_tick_fires_once_with_two_engines_running() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_SCHEDULER_TICK_MS", "20")]).await;
    // A second engine (its own lease owner and scheduler) on the same database.
    let second = agentplane::executions::engine::start(app.state.app.clone(), 2)
        .expect("engine")
        .expect("started");
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "cron",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{\"at\": \"tick\"}" } } ]}),
    )
    .await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { schedule { id status nextRunAt nextRunTimes(count: 3) } } }",
            json!({ "i": { "workflowId": wf, "cron": "*/5 * * * *", "timezone": "Europe/Paris", "input": { "k": 1 } } }),
        )
        .await;
    let sched = &out["data"]["createSchedule"]["schedule"];
    assert_eq!(sched["status"], "ACTIVE", "{out}");
    assert_eq!(sched["nextRunTimes"].as_array().expect("times").len(), 3);
    let sid = sched["id"].as_str().expect("id").to_owned();
    let count = || async {
        let out = app
            .gql_as(
                &owner,
                "query($w: ID!) { executions(filter: { workflowId: $w }) { totalCount edges { node { trigger status } } } }",
                json!({ "w": wf }),
            )
            .await;
        out["data"]["executions"]["totalCount"]
            .as_i64()
            .expect("count")
    };
    assert_eq!(count().await, 0);
    for tick in 1..=2 {
        app.clock.advance(chrono::Duration::minutes(5));
        // Give both schedulers many chances to fire the same tick.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(count().await, tick, "tick {tick} fired once");
    }
    // Paused schedules do not fire.
    let out = app
        .gql_as(
            &owner,
            "mutation($i: ScheduleIdInput!) { pauseSchedule(input: $i) { schedule { status nextRunAt } } }",
            json!({ "i": { "scheduleId": sid } }),
        )
        .await;
    assert_eq!(
        out["data"]["pauseSchedule"]["schedule"]["status"], "PAUSED",
        "{out}"
    );
    app.clock.advance(chrono::Duration::minutes(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, 2);
    let bad = app
        .gql_as(
            &owner,
            "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { schedule { id } } }",
            json!({ "i": { "workflowId": wf, "cron": "every day", "timezone": "UTC" } }),
        )
        .await;
    assert_eq!(first_error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    second.shutdown(Duration::from_secs(1)).await;
}
