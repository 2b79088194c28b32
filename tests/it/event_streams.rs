//! Execution event streams and outages: every event in order across processes, holes filled, lag caught up; websockets and HTTP through a database outage; a fail-fast start without a database; released leases waking workers.

use std::time::Duration;

use serde_json::{Value, json};

use crate::executions::{
    exec_uuid, execution, finished, published, start, step_status, tenant_uuid, wait_for,
    worker_process_with,
};
use crate::helpers::{
    DbProxy, TestApp, TestDb, bin, first_error_code, postgres_host_port, ws_authed, ws_close_code,
    ws_connect, ws_next_json, ws_send,
};

/// Subscribes `executionUpdated` and `executionEvents` (graphql-transport-ws) for one
/// execution; returns the socket after both are registered.
pub(crate) async fn watch(app: &TestApp, token: &str, id: &str, wf: &str) -> crate::helpers::Ws {
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", token).await;
    ws_send(
        &mut ws,
        json!({ "id": "u", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { kind sequence status stepId stepStatus } }",
            "variables": { "id": id } } }),
    )
    .await;
    ws_send(
        &mut ws,
        json!({ "id": "e", "type": "subscribe", "payload": {
            "query": "subscription($w: ID!) { executionEvents(filter: { workflowId: $w }) { executionId kind sequence status } }",
            "variables": { "w": wf } } }),
    )
    .await;
    ws
}

/// Collects both subscriptions' events until `executionUpdated` completes and
/// `executionEvents` has delivered `id`'s terminal event; returns (updated, events).
pub(crate) async fn collect(
    ws: &mut crate::helpers::Ws,
    id: &str,
    secs: u64,
) -> (Vec<Value>, Vec<Value>) {
    let mut updated = Vec::new();
    let mut events = Vec::new();
    let mut updated_done = false;
    let mut events_done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !(updated_done && events_done) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams did not complete: updated {updated:?} events {events:?}"
        );
        let msg = ws_next_json(ws).await;
        match (msg["type"].as_str(), msg["id"].as_str()) {
            (Some("next"), Some("u")) => {
                updated.push(msg["payload"]["data"]["executionUpdated"].clone())
            }
            (Some("next"), Some("e")) => {
                let ev = msg["payload"]["data"]["executionEvents"].clone();
                if ev["executionId"] == id {
                    if ev["kind"] == "STATUS_CHANGED"
                        && !matches!(ev["status"].as_str(), Some("QUEUED" | "RUNNING"))
                    {
                        events_done = true;
                    }
                    events.push(ev);
                }
            }
            (Some("complete"), Some("u")) => updated_done = true,
            (Some("next"), Some("h")) => {}
            other => panic!("unexpected message {other:?}: {msg}"),
        }
    }
    (updated, events)
}

/// The sequence number a stream's first live event must carry.
pub(crate) fn first_live(evs: &[Value]) -> i64 {
    let first = &evs[0];
    let seq = first["sequence"].as_i64().expect("sequence");
    if first["kind"] == "SNAPSHOT" {
        seq + 1
    } else {
        seq
    }
}

/// Sequence numbers of a stream, checked to run without holes or repeats.
pub(crate) fn assert_in_order(evs: &[Value], from: i64) {
    let seqs: Vec<i64> = evs
        .iter()
        .filter(|e| e["kind"] != "SNAPSHOT")
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect();
    let expected: Vec<i64> = (from..from + i64::try_from(seqs.len()).expect("len")).collect();
    assert_eq!(
        seqs, expected,
        "events out of order, repeated or missing: {evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_a_worker_process_on_one_database_stream_every_event_in_order() {
    // The API has no workers; a separate `agentplane worker` runs everything. On SQLite
    // that used to leave subscribers on `serve` waiting forever.
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "remote",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "{\"v\": 1}" } },
            { "id": "b", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 200 } },
            { "id": "c", "kind": "transform", "dependsOn": ["b"], "config": { "template": "{\"v\": 2}" } },
        ]}),
    )
    .await;
    // A long poll interval: pickup must come from the wake-up, not from polling.
    let mut worker = worker_process_with(&app.db.url, &[("AGENTPLANE_POLL_MS", "30000")]).await;
    for round in 0..3 {
        let started = start(&app, &owner, json!({ "workflowId": wf })).await;
        let id = started["execution"]["id"].as_str().expect("id").to_owned();
        let mut ws = watch(&app, &owner, &id, &wf).await;
        let (updated, events) = collect(&mut ws, &id, 20).await;
        assert_eq!(
            updated.last().expect("events")["status"],
            "SUCCEEDED",
            "round {round}: {updated:?}"
        );
        assert_in_order(&updated, first_live(&updated));
        assert_in_order(&events, first_live(&events));
        let e = execution(&app, &owner, &id).await;
        assert_eq!(
            events.last().expect("last")["sequence"],
            e["sequence"],
            "every event reached executionEvents"
        );
    }
    worker.kill().await.expect("kill");
}

/// The next `executionEvents` payload on subscription `sub`.
async fn next_event(ws: &mut crate::helpers::Ws, sub: &str) -> Value {
    loop {
        let msg = ws_next_json(ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        if msg["id"] == sub {
            return msg["payload"]["data"]["executionEvents"].clone();
        }
    }
}

/// Reads `sub`'s events until `id` reached a terminal status; returns `id`'s events.
async fn events_of(ws: &mut crate::helpers::Ws, sub: &str, id: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let ev = next_event(ws, sub).await;
        if ev["executionId"] != id {
            continue;
        }
        let done = ev["kind"] == "STATUS_CHANGED"
            && !matches!(ev["status"].as_str(), Some("QUEUED" | "RUNNING"));
        got.push(ev);
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn execution_events_fill_holes_catch_up_after_lag_skip_repeats_and_resume() {
    use agentplane::executions::model::ExecutionStatus;
    use agentplane::executions::store::{Guard, Patch};
    // No workers: the test moves executions itself, choosing which events reach the bus.
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let a = app.state.app.clone();
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(10);
    let wf = published(
        &app,
        &owner,
        "steps",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "{}" } },
            { "id": "b", "kind": "transform", "dependsOn": ["a"], "config": { "template": "{}" } },
        ]}),
    )
    .await;
    let new_execution = || async {
        let s = start(&app, &owner, json!({ "workflowId": wf })).await;
        s["execution"]["id"].as_str().expect("id").to_owned()
    };
    let now = || agentplane::db::ids::db_time(a.clock.now());
    let envelope = |e: &agentplane::executions::model::ExecutionEvent| a.bus.envelope(e);
    // Written and stored, but never published: the event a relay lost.
    let unpublished = |id: String, to: ExecutionStatus| {
        let (a, envelope) = (&a, &envelope);
        async move {
            a.db.tx("", async |conn| {
                agentplane::executions::store::transition(
                    conn,
                    exec_uuid(&id),
                    to,
                    Guard::Any,
                    Patch::default(),
                    now(),
                    envelope,
                )
                .await
            })
            .await
            .expect("transition")
            .expect("applied");
        }
    };
    let published_cancel = |id: String| {
        let a = &a;
        async move {
            agentplane::executions::service::transition(
                a,
                exec_uuid(&id),
                ExecutionStatus::Cancelled,
                Guard::Any,
                Patch::default(),
            )
            .await
            .expect("cancel")
            .expect("applied");
        }
    };
    // The subscription's SNAPSHOT of a queued execution proves it is registered.
    let first = new_execution().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "e", "type": "subscribe", "payload": {
            "query": "subscription { executionEvents { executionId sequence kind status } }" } }),
    )
    .await;
    let snap = next_event(&mut ws, "e").await;
    assert_eq!(snap["kind"], "SNAPSHOT", "{snap}");
    published_cancel(first.clone()).await;
    assert_in_order(&events_of(&mut ws, "e", &first).await, 2);

    // A hole: the RUNNING event never reached the bus; the next one did.
    let hole = new_execution().await;
    unpublished(hole.clone(), ExecutionStatus::Running).await;
    published_cancel(hole.clone()).await;
    let evs = events_of(&mut ws, "e", &hole).await;
    assert_in_order(&evs, 1);
    assert!(evs.iter().any(|e| e["status"] == "RUNNING"), "{evs:?}");

    // A lost tail: the terminal event never reached the bus; the relay reconnecting
    // (here: its resync signal) makes the stream re-read the log.
    let tail = new_execution().await;
    unpublished(tail.clone(), ExecutionStatus::Cancelled).await;
    a.bus.request_resync();
    assert_in_order(&events_of(&mut ws, "e", &tail).await, 1);
    // And again: the stream waits for the next signal after acting on one.
    let tail2 = new_execution().await;
    unpublished(tail2.clone(), ExecutionStatus::Cancelled).await;
    a.bus.request_resync();
    assert_in_order(&events_of(&mut ws, "e", &tail2).await, 1);

    // `executionUpdated` re-reads the log on the same signal, and goes on waiting for it:
    // one stream through three signals (the first finds nothing new).
    let followed = new_execution().await;
    let mut ws_u = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws_u,
        json!({ "id": "u", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { sequence kind status } }",
            "variables": { "id": followed } } }),
    )
    .await;
    let snap = ws_next_json(&mut ws_u).await;
    assert_eq!(
        snap["payload"]["data"]["executionUpdated"]["kind"], "SNAPSHOT",
        "{snap}"
    );
    a.bus.request_resync();
    unpublished(followed.clone(), ExecutionStatus::Running).await;
    a.bus.request_resync();
    unpublished(followed.clone(), ExecutionStatus::Cancelled).await;
    a.bus.request_resync();
    let mut statuses = Vec::new();
    loop {
        let msg = ws_next_json(&mut ws_u).await;
        if msg["type"] == "complete" {
            break;
        }
        let ev = &msg["payload"]["data"]["executionUpdated"];
        assert_eq!(ev["sequence"], statuses.len() + 2, "{msg}");
        statuses.push(ev["status"].as_str().expect("status").to_owned());
    }
    // RUNNING, then the cancellation's events (its steps' and its own), all of them.
    assert_eq!(statuses.first().map(String::as_str), Some("RUNNING"));
    assert_eq!(statuses.last().map(String::as_str), Some("CANCELLED"));
    assert_eq!(
        i64::try_from(statuses.len() + 1).expect("small"),
        execution(&app, &owner, &followed).await["sequence"]
            .as_i64()
            .expect("seq"),
        "{statuses:?}"
    );

    // A slow subscriber: a burst larger than the bus holds overruns it.
    let lagged = new_execution().await;
    let noise = {
        let mut ev = agentplane::executions::store::events_after(
            &a.db,
            tenant_uuid(&tenant),
            exec_uuid(&first),
            0,
        )
        .await
        .expect("events")
        .remove(0);
        ev.tenant_id = agentplane::tenancy::TenantId::new();
        ev
    };
    published_cancel(lagged.clone()).await;
    for _ in 0..20_000 {
        a.bus.publish(noise.clone());
    }
    assert_in_order(&events_of(&mut ws, "e", &lagged).await, 1);

    // Repeats (a relay and a log follower both delivering) arrive once.
    for ev in agentplane::executions::store::events_after(
        &a.db,
        tenant_uuid(&tenant),
        exec_uuid(&hole),
        0,
    )
    .await
    .expect("events")
    {
        a.bus.publish(ev);
    }
    let last = new_execution().await;
    published_cancel(last.clone()).await;
    loop {
        let ev = next_event(&mut ws, "e").await;
        assert_ne!(
            ev["executionId"], hole,
            "a repeated event was delivered: {ev}"
        );
        if ev["executionId"] == last
            && ev["status"] == "CANCELLED"
            && ev["kind"] == "STATUS_CHANGED"
        {
            break;
        }
    }

    // A dashboard reconnecting with `since` gets every stored event, in order per
    // execution.
    ws_send(
        &mut ws,
        json!({ "id": "r", "type": "subscribe", "payload": {
            "query": "subscription($s: DateTime!) { executionEvents(since: $s) { executionId sequence kind status } }",
            "variables": { "s": since.to_rfc3339() } } }),
    )
    .await;
    let mut per: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut remaining = 0;
    for id in [&first, &hole, &tail, &tail2, &followed, &lagged, &last] {
        remaining += execution(&app, &owner, id).await["sequence"]
            .as_i64()
            .expect("seq");
    }
    while remaining > 0 {
        let ev = next_event(&mut ws, "r").await;
        per.entry(ev["executionId"].as_str().expect("id").to_owned())
            .or_default()
            .push(ev);
        remaining -= 1;
    }
    for id in [&first, &hole, &tail, &tail2, &followed, &lagged, &last] {
        assert_in_order(&per[id.as_str()], 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_keeps_websockets_open_and_answers_unavailable() {
    if !TestDb::is_postgres() {
        return; // the embedded database cannot go away under a running server
    }
    let proxy = DbProxy::start(&postgres_host_port()).await;
    let app = TestApp::spawn_through(&proxy, &[]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "outage",
        json!({ "steps": [
            { "id": "a", "kind": "delay", "config": { "ms": 3000 } },
            { "id": "b", "kind": "transform", "dependsOn": ["a"], "config": { "template": "{\"done\": true}" } },
        ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 20, step_status("a", "RUNNING")).await;
    let mut ws = watch(&app, &owner, &id, &wf).await;
    ws_send(
        &mut ws,
        json!({ "id": "h", "type": "subscribe", "payload": {
            "query": "subscription { heartbeat(intervalSeconds: 1) { at } }" } }),
    )
    .await;
    // All three subscriptions are live (each sent its first message) before the cut.
    let mut live: std::collections::HashMap<String, Value> = Default::default();
    while live.len() < 3 {
        let msg = ws_next_json(&mut ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        live.entry(msg["id"].as_str().expect("id").to_owned())
            .or_insert(msg);
    }
    let snapshot_seq = |sub: &str, field: &str| {
        let first = &live[sub]["payload"]["data"][field];
        assert_eq!(first["kind"], "SNAPSHOT", "{first}");
        first["sequence"].as_i64().expect("sequence")
    };
    let (u_from, e_from) = (
        snapshot_seq("u", "executionUpdated") + 1,
        snapshot_seq("e", "executionEvents") + 1,
    );

    proxy.cut();
    let outage = tokio::time::Instant::now();
    // HTTP: a clear, retryable answer, fast.
    let t = tokio::time::Instant::now();
    let (status, headers, body) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&owner))
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("UNAVAILABLE"),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["retryAfterSeconds"], 5,
        "{body}"
    );
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5")
    );
    // A new socket cannot be checked now: a retryable close, not 4401.
    let mut fresh = ws_connect(&app.ws_url(), "graphql-transport-ws").await;
    ws_send(
        &mut fresh,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {owner}") } }),
    )
    .await;
    assert_eq!(ws_close_code(&mut fresh, 10).await, Some(1013));
    // The open socket lives through 10 s of outage (two credential re-checks).
    let mut beats = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let msg = ws_next_json(&mut ws).await;
        assert_eq!(
            msg["id"], "h",
            "nothing else can happen without a database: {msg}"
        );
        beats += 1;
    }
    assert!(beats >= 5, "heartbeats stopped during the outage");
    proxy.restore();
    // The execution's streams complete after recovery.
    let (updated, events) = collect(&mut ws, &id, 60).await;
    let last = updated.last().expect("events");
    assert_eq!(last["status"], "SUCCEEDED", "{updated:?}");
    let e = execution(&app, &owner, &id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    // Every event after the snapshots arrived once, in order, on both streams.
    assert_in_order(&updated, u_from);
    assert_in_order(&events, e_from);
    assert_eq!(last["sequence"], e["sequence"]);
    assert_eq!(events.last().expect("events")["sequence"], e["sequence"]);
    assert_eq!(e["claims"], 1, "the outage was shorter than the lease: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_and_serve_fail_at_once_with_a_clear_message_when_the_database_is_down() {
    for command in ["worker", "serve"] {
        let t = tokio::time::Instant::now();
        let out = tokio::process::Command::new(bin())
            .arg(command)
            .env_clear()
            .env(
                "DATABASE_URL",
                "postgres://agentplane@127.0.0.1:1/agentplane",
            )
            .env("AGENTPLANE_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .output()
            .await
            .expect("runs");
        assert!(!out.status.success(), "{command}: {out:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{command} took {:?} to fail",
            t.elapsed()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot reach the database at postgres://agentplane@127.0.0.1:1"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_lease_wakes_another_worker_at_once() {
    // Two engines that poll once a minute: the hand-over must come from the wake-up.
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_POLL_MS", "60000"),
        ("AGENTPLANE_SHUTDOWN_GRACE_SECS", "1"),
    ])
    .await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "handover",
        json!({ "steps": [
            { "id": "w", "kind": "delay", "config": { "ms": 3000 } },
        ]}),
    )
    .await;
    let one = agentplane::executions::engine::start(app.state.app.clone(), 1)
        .expect("engine")
        .expect("started");
    let two = agentplane::executions::engine::start(app.state.app.clone(), 1)
        .expect("engine")
        .expect("started");
    // Let both claim loops reach their (long) wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 20, step_status("w", "RUNNING")).await;
    let row = agentplane::executions::store::find(
        &app.state.app.db,
        tenant_uuid(&tenant),
        exec_uuid(&id),
    )
    .await
    .expect("find")
    .expect("row");
    let holder = row.lease_owner.expect("leased");
    let (stopping, other) = if holder.starts_with(&one.engine.owner) {
        (one, two)
    } else {
        (two, one)
    };
    stopping.shutdown(Duration::ZERO).await;
    // The other engine claims it at once (its next poll is a minute away).
    let released = tokio::time::Instant::now();
    let e = wait_for(&app, &owner, &id, 20, |e| e["claims"] == 2).await;
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "hand-over took {:?}: {e}",
        released.elapsed()
    );
    let e = wait_for(&app, &owner, &id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    other.shutdown(Duration::from_secs(1)).await;
}

/// NOTIFY channels belong to the database, not to a schema: two servers on one PostgreSQL
/// database in different schemas (deployments side by side; every test here) heard each
/// other's execution events and queue wake-ups. Now neither hears the other. (On SQLite
/// the two servers have files of their own: trivially true.)
#[tokio::test(flavor = "multi_thread")]
async fn servers_in_other_schemas_of_one_database_do_not_hear_each_other() {
    let quiet = [("AGENTPLANE_WORKERS", "0")];
    let a = TestApp::spawn_with(&quiet).await;
    let b = TestApp::spawn_with(&quiet).await;
    let (_, owner) = a.tenant_with_owner("acme").await;
    let mut heard_by_a = a.state.app.bus.subscribe();
    let mut heard_by_b = b.state.app.bus.subscribe();
    let wf = published(
        &a,
        &owner,
        "alone",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    let started = start(&a, &owner, json!({ "workflowId": wf })).await;
    let id = exec_uuid(started["execution"]["id"].as_str().expect("id"));
    // Its own server publishes it.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), heard_by_a.recv())
            .await
            .expect("a never published its own event")
            .expect("bus");
        if ev.execution_id == id {
            break;
        }
    }
    // The other, listening all along, hears nothing of it (NOTIFY is sent after commit,
    // within milliseconds; two seconds is ample).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(ev) = tokio::time::timeout_at(deadline, heard_by_b.recv()).await {
        let ev = ev.expect("bus");
        assert_ne!(ev.execution_id, id, "a server heard another schema's event");
    }
}
