//! How the engine writes (#15): an execution whose steps all run inline is one
//! transaction, with every event the step-by-step path writes, in order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::executions::{
    exec_uuid, execution, finished, published, start, step, step_status, wait_for,
};
use crate::helpers::{TestApp, TestDb};

/// No workers until a test starts an engine itself; background work slowed down, so the
/// transactions and claims counted are the executions'.
const QUIET: &[(&str, &str)] = &[
    ("AGENTPLANE_WORKERS", "0"),
    ("AGENTPLANE_POLL_MS", "60000"),
    ("AGENTPLANE_SCHEDULER_TICK_MS", "60000"),
    ("AGENTPLANE_HEARTBEAT_MS", "60000"),
    ("AGENTPLANE_NODE_OFFLINE_AFTER_MS", "120000"),
];

/// #15: an execution whose steps all run inline (template steps) is written in one
/// transaction at its end, with every event the step-by-step path writes, in order; a
/// step that waits (a delay) makes what ran before it visible first.
#[tokio::test(flavor = "multi_thread")]
async fn inline_steps_are_written_in_one_transaction_with_every_event() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let inline = published(
        &app,
        &owner,
        "inline",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } },
            { "id": "c", "kind": "condition", "dependsOn": ["a"],
              "config": { "expression": "steps.a.output.n > 1", "ifTrue": ["big"], "ifFalse": ["small"] } },
            { "id": "big", "kind": "transform", "dependsOn": ["c"], "config": { "template": "\"big\"" } },
            { "id": "small", "kind": "transform", "dependsOn": ["c"], "config": { "template": "\"small\"" } },
        ]}),
    )
    .await;
    let waits = published(
        &app,
        &owner,
        "waits",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "\"first\"" } },
            { "id": "w", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 1500 } },
        ]}),
    )
    .await;
    let started = start(
        &app,
        &owner,
        json!({ "workflowId": inline, "input": { "n": 2 } }),
    )
    .await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    let mut events = app.state.app.bus.subscribe();
    let commits = || app.state.app.commits.load(Ordering::SeqCst);
    let statements = || app.state.app.statements.load(Ordering::SeqCst);
    let before = commits();
    let before_statements = statements();
    let engine = agentplane::executions::engine::start(app.state.app.clone(), 1)
        .expect("engine")
        .expect("started");
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("the execution never finished")
            .expect("bus");
        if ev.execution_id != exec_uuid(&id) {
            continue;
        }
        seen.push(ev.clone());
        if ev.status.is_terminal() && ev.step_id.is_none() {
            break;
        }
    }
    // The worker claims again as soon as the execution ends, and again when the
    // execution's own notification wakes it; both claims find nothing, and the
    // notifications go out after the commits. Wait for all of it to settle, so that the
    // claims are counted exactly (a transaction of 5 statements each on PostgreSQL, a
    // statement on SQLite) and subtracted, not counted whenever they happen to land.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = statements();
    let (missed, spent, spent_statements) = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = statements();
        let missed = engine.engine.claims().missed;
        if now == last && missed > 0 {
            // A claim counts as missed after its statements: one that started between
            // these reads shows as a change of either, and the wait goes on.
            let (c, s) = (commits() - before, statements() - before_statements);
            if engine.engine.claims().missed == missed && s == now - before_statements {
                break (missed, c, s);
            }
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never came to rest"
        );
    };
    // The execution's writes in one transaction; on PostgreSQL each claim is one more.
    if TestDb::is_postgres() {
        assert_eq!(spent, 2 + missed, "the execution took {spent} commits");
        // And the rows tell which transactions wrote them.
        assert_eq!(
            writers(&app, &id).await,
            1,
            "the execution's rows were written by more than one transaction"
        );
    } else {
        assert_eq!(spent, 1, "the execution took {spent} commits");
    }
    // Folded, the writes cost a statement per changed row plus a fixed few, whatever
    // their number: BEGIN, lock, read the steps, 4 step rows, the execution, the events,
    // COMMIT. With the claim (5 statements on PostgreSQL, with its quota check after the
    // COMMIT in the same round trip; 1 on SQLite) and the version's definition read once,
    // that is 12 to 16, and a notification after each commit on PostgreSQL (13 on
    // SQLite and 17 to 18 on PostgreSQL, measured); applied one by one they took 33 to 36.
    let per_claim = if TestDb::is_postgres() { 5 } else { 1 };
    let spent = spent_statements - missed * per_claim;
    assert!(spent <= 20, "the execution took {spent} statements");
    eprintln!("inline execution: {spent} statements");
    let e = execution(&app, &owner, &id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!({ "big": "big" }), "{e}");
    let described: Vec<String> = seen
        .iter()
        .map(|ev| match (&ev.step_id, ev.step_status) {
            (Some(s), Some(st)) => format!("{s}:{}", st.as_str()),
            _ => ev.status.as_str().to_owned(),
        })
        .collect();
    assert_eq!(
        described,
        [
            "RUNNING",
            "a:RUNNING",
            "a:SUCCEEDED",
            "c:RUNNING",
            "c:SUCCEEDED",
            "small:SKIPPED",
            "big:RUNNING",
            "big:SUCCEEDED",
            "SUCCEEDED"
        ],
        "{seen:?}"
    );
    let seqs: Vec<i64> = seen.iter().map(|ev| ev.seq).collect();
    assert_eq!(seqs, (2..=10).collect::<Vec<_>>(), "gapless, in order");
    assert_eq!(e["sequence"], 10, "{e}");

    // A step that waits: the transform before it and RUNNING are visible while it waits.
    let started = start(&app, &owner, json!({ "workflowId": waits })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    // (The execution and its steps are read by two statements, so one read can straddle
    // a commit: wait for a read that shows both.)
    let waiting = step_status("w", "RUNNING");
    let e = wait_for(&app, &owner, &id, 20, |e| {
        waiting(e) && e["status"] == "RUNNING"
    })
    .await;
    assert_eq!(step(&e, "a")["status"], "SUCCEEDED", "{e}");
    assert_eq!(step(&e, "a")["output"], "first", "{e}");
    let e = wait_for(&app, &owner, &id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    engine.shutdown(Duration::from_secs(1)).await;
}

/// #15: on SQLite a worker that finishes an execution claims the next one in that
/// execution's last transaction, so a queue drains in one write transaction per
/// execution instead of two (a claim of its own, then the writes). PostgreSQL claims
/// alone: its write transactions are tenant-scoped and its claims lock rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_finishing_execution_claims_the_next_in_its_last_transaction() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_, owner) = app.tenant_with_owner("chain").await;
    let n = 10;
    let ids = queued(&app, &owner, n).await;
    let commits = || app.state.app.commits.load(Ordering::SeqCst);
    let before = commits();
    let engine = agentplane::executions::engine::start(app.state.app.clone(), 1)
        .expect("engine")
        .expect("started");
    for (i, id) in ids.iter().enumerate() {
        let e = wait_for(&app, &owner, id, 20, finished).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["output"], json!({ "t": { "n": i } }), "{e}");
    }
    let claims = engine.engine.claims();
    let spent = commits() - before;
    if TestDb::is_postgres() {
        assert_eq!((claims.alone, claims.chained), (n, 0), "{claims:?}");
    } else {
        assert_eq!((claims.alone, claims.chained), (1, n - 1), "{claims:?}");
        assert_eq!(spent, n, "{n} executions took {spent} write transactions");
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

/// #15: on SQLite, drivers that finish while another's last transaction runs are
/// committed together in the next one (group commit): a queue drained by 8 workers takes
/// fewer write transactions than it has executions, and every execution still ends with
/// its own output and its own gapless events.
#[tokio::test(flavor = "multi_thread")]
async fn drivers_that_finish_together_commit_together() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_, owner) = app.tenant_with_owner("group").await;
    let n: u64 = 64;
    let ids = queued(&app, &owner, n).await;
    let mine: std::collections::HashSet<_> = ids.iter().map(|id| exec_uuid(id)).collect();
    let mut events = app.state.app.bus.subscribe();
    let commits = || app.state.app.commits.load(Ordering::SeqCst);
    let before = commits();
    let engine = agentplane::executions::engine::start(app.state.app.clone(), 8)
        .expect("engine")
        .expect("started");
    let mut seqs: std::collections::HashMap<agentplane::executions::model::ExecutionId, Vec<i64>> =
        Default::default();
    let mut ended = 0;
    while ended < n {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the queue never drained")
            .expect("bus");
        // Only this test's executions: the bus also carries what other tests' servers
        // on the same PostgreSQL database announce (NOTIFY channels are per database).
        if !mine.contains(&ev.execution_id) {
            continue;
        }
        seqs.entry(ev.execution_id).or_default().push(ev.seq);
        if ev.status.is_terminal() && ev.step_id.is_none() {
            ended += 1;
        }
    }
    let spent = commits() - before;
    for (i, id) in ids.iter().enumerate() {
        let e = execution(&app, &owner, id).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        assert_eq!(e["output"], json!({ "t": { "n": i } }), "{e}");
        let seen = &seqs[&exec_uuid(id)];
        assert_eq!(
            seen,
            &(2..=5).collect::<Vec<_>>(),
            "{id}: gapless, in order"
        );
    }
    if !TestDb::is_postgres() {
        // One claim alone per worker, then one transaction per group of finished drivers.
        assert!(
            spent < n,
            "{n} executions took {spent} write transactions: none was grouped"
        );
    }
    eprintln!("{n} executions, 8 workers: {spent} write transactions");
    engine.shutdown(Duration::from_secs(1)).await;
}

/// `n` queued executions of a new one-step transform workflow (the i-th one's output is
/// `{"t": {"n": i}}`), their ids in order.
async fn queued(app: &TestApp, owner: &str, n: u64) -> Vec<String> {
    let wf = published(
        app,
        owner,
        "queued",
        json!({ "steps": [
            { "id": "t", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } },
        ]}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..n {
        let started = start(app, owner, json!({ "workflowId": wf, "input": { "n": i } })).await;
        ids.push(started["execution"]["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// PostgreSQL: how many transactions last wrote the execution's row, its step rows and
/// the events its run wrote (all but the first, written when it was queued).
async fn writers(app: &TestApp, id: &str) -> i64 {
    let q = "SELECT COUNT(DISTINCT x)::bigint AS n FROM ( \
             SELECT xmin::text AS x FROM executions WHERE id = $1 \
             UNION ALL SELECT xmin::text FROM execution_steps WHERE execution_id = $1 \
             UNION ALL SELECT xmin::text FROM execution_events WHERE execution_id = $1 AND seq > 1 \
             ) w";
    crate::helpers::count_behind_api(app, q, &exec_uuid(id).0.to_string()).await
}
