//! Executions: the engine end to end (parallel DAGs, retries, timeouts, cancellation,
//! idempotency, step kinds, SSRF guard), crash recovery across processes, schedules,
//! subscriptions, isolation and the statement-count bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, first_error_code};

pub use crate::workers::worker_process_with;

const CREATE: &str =
    "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }";
const PUBLISH: &str =
    "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }";
pub(crate) const START: &str = "mutation($i: StartExecutionInput!) { startExecution(input: $i) { deduplicated execution { id status sequence } } }";
pub(crate) const EXEC: &str = "query($id: ID!) { execution(id: $id) { id status error output claims promptTokens completionTokens costUsd sequence trigger retryOf { id } steps { stepId status attempt output error promptTokens completionTokens costUsd } } }";

/// Creates and publishes a workflow; returns its ID.
pub async fn published(app: &TestApp, token: &str, name: &str, definition: Value) -> String {
    let out = app
        .gql_as(
            token,
            CREATE,
            json!({ "i": { "name": name, "definition": definition } }),
        )
        .await;
    let id = out["data"]["createWorkflow"]["workflow"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {out}"))
        .to_owned();
    let out = app
        .gql_as(token, PUBLISH, json!({ "i": { "workflowId": id } }))
        .await;
    assert_eq!(
        out["data"]["publishWorkflow"]["version"]["version"], 1,
        "{out}"
    );
    id
}

/// Starts an execution; returns the payload.
pub async fn start(app: &TestApp, token: &str, input: Value) -> Value {
    let out = app.gql_as(token, START, json!({ "i": input })).await;
    assert!(
        out["data"]["startExecution"].is_object(),
        "start failed: {out}"
    );
    out["data"]["startExecution"].clone()
}

pub async fn execution(app: &TestApp, token: &str, id: &str) -> Value {
    let out = app.gql_as(token, EXEC, json!({ "id": id })).await;
    assert!(out["data"]["execution"].is_object(), "{out}");
    out["data"]["execution"].clone()
}

/// Polls until `pred` holds (or panics after `secs`).
pub async fn wait_for(
    app: &TestApp,
    token: &str,
    id: &str,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let e = execution(app, token, id).await;
        if pred(&e) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {secs} s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn finished(e: &Value) -> bool {
    !matches!(e["status"].as_str(), Some("QUEUED" | "RUNNING"))
}

pub fn step<'a>(e: &'a Value, id: &str) -> &'a Value {
    e["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stepId"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {e}"))
}

pub fn step_status(id: &'static str, status: &'static str) -> impl Fn(&Value) -> bool {
    move |e| step(e, id)["status"] == status
}

/// A loopback HTTP server whose handler sees each request's number (0-based).
pub async fn loopback(
    handler: impl Fn(usize, axum::http::HeaderMap, String) -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let handler = Arc::new(handler);
    let router =
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: String| {
            let h = h.clone();
            let handler = handler.clone();
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = handler(n, headers, body);
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    [("content-type", "application/json")],
                    body,
                )
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), hits)
}

pub fn tenant_uuid(global: &str) -> agentplane::tenancy::TenantId {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(global)
        .expect("base64");
    let text = String::from_utf8(raw).expect("utf8");
    let uuid = text.split_once(':').expect("kind:uuid").1;
    agentplane::tenancy::TenantId(uuid::Uuid::parse_str(uuid).expect("uuid"))
}

pub fn exec_uuid(global: &str) -> agentplane::executions::model::ExecutionId {
    agentplane::executions::model::ExecutionId(tenant_uuid(global).0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_runs_its_middle_steps_in_parallel() {
    let app = TestApp::spawn().await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "diamond",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } },
            { "id": "b", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 400 } },
            { "id": "c", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 400 } },
            { "id": "d", "kind": "transform", "dependsOn": ["b", "c"],
              "config": { "template": "{\"total\": {{ steps.a.output.n + steps.b.output.waitedMs + steps.c.output.waitedMs }}}" } },
        ]}),
    )
    .await;
    let started = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "input": { "n": 1 } }),
    )
    .await;
    assert_eq!(started["execution"]["status"], "QUEUED");
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    let e = wait_for(&app, &owner, &id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!({ "d": { "total": 801 } }));
    for s in ["a", "b", "c", "d"] {
        assert_eq!(step(&e, s)["status"], "SUCCEEDED");
        assert_eq!(step(&e, s)["attempt"], 1);
    }
    // The event log shows b and c both started before either finished.
    let events = agentplane::executions::store::events_after(
        &app.state.app.db,
        tenant_uuid(&tenant),
        exec_uuid(&id),
        0,
    )
    .await
    .expect("events");
    let pos = |sid: &str, st: &str| {
        events
            .iter()
            .position(|ev| {
                ev.step_id.as_deref() == Some(sid) && ev.step_status.map(|s| s.as_str()) == Some(st)
            })
            .unwrap_or_else(|| panic!("no {sid} {st} event"))
    };
    let last_start = pos("b", "RUNNING").max(pos("c", "RUNNING"));
    let first_end = pos("b", "SUCCEEDED").min(pos("c", "SUCCEEDED"));
    assert!(last_start < first_end, "b and c overlapped: {events:?}");
    // Sequence numbers run 1..=n without gaps.
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(seqs.len()).expect("len")).collect::<Vec<_>>()
    );
    assert_eq!(e["sequence"], json!(seqs.len()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_http_step_is_retried_until_it_succeeds() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (base, hits) = loopback(|n, _, _| {
        if n < 2 {
            (503, "{\"error\":\"busy\"}".into())
        } else {
            (200, "{\"ok\":true}".into())
        }
    })
    .await;
    let wf = published(
        &app,
        &owner,
        "flaky",
        json!({ "steps": [
            { "id": "call", "kind": "http", "config": { "method": "POST", "url": format!("{base}/hook/{{{{ input.id }}}}"), "body": { "id": "{{ input.id }}" } },
              "retry": { "maxAttempts": 3, "initialBackoffMs": 20, "backoffMultiplier": 2 } },
        ]}),
    )
    .await;
    let started = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "input": { "id": "x1" } }),
    )
    .await;
    let id = started["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let s = step(&e, "call");
    assert_eq!(s["attempt"], 3);
    assert_eq!(s["output"]["status"], 200);
    assert_eq!(s["output"]["body"], json!({ "ok": true }));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_steps_may_not_reach_loopback_by_default() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (base, hits) = loopback(|_, _, _| (200, "{}".into())).await;
    for url in [
        format!("{base}/internal"),
        "http://localhost:9/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let wf = published(
            &app,
            &owner,
            "ssrf",
            json!({ "steps": [
                { "id": "call", "kind": "http", "config": { "method": "GET", "url": url },
                  "retry": { "maxAttempts": 3, "initialBackoffMs": 10 } },
            ]}),
        )
        .await;
        let started = start(&app, &owner, json!({ "workflowId": wf })).await;
        let id = started["execution"]["id"].as_str().expect("id");
        let e = wait_for(&app, &owner, id, 20, finished).await;
        assert_eq!(e["status"], "FAILED", "{e}");
        let s = step(&e, "call");
        assert_eq!(s["status"], "FAILED");
        assert_eq!(s["attempt"], 1, "a refusal is not retried: {s}");
        assert!(
            s["error"]
                .as_str()
                .expect("error")
                .contains("refused to connect"),
            "{s}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the loopback server was never called"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn step_and_execution_timeouts() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let slow_step = published(
        &app,
        &owner,
        "slow-step",
        json!({ "steps": [
            { "id": "wait", "kind": "delay", "config": { "ms": 5000 }, "timeoutSeconds": 1 },
        ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": slow_step })).await;
    let id = started["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 10, finished).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(step(&e, "wait")["status"], "TIMED_OUT");
    assert!(
        e["error"].as_str().expect("error").contains("timed out"),
        "{e}"
    );

    let slow_run = published(
        &app,
        &owner,
        "slow-run",
        json!({ "steps": [
            { "id": "wait", "kind": "delay", "config": { "ms": 20000 } },
            { "id": "after", "kind": "delay", "dependsOn": ["wait"], "config": { "ms": 1 } },
        ]}),
    )
    .await;
    let started = start(
        &app,
        &owner,
        json!({ "workflowId": slow_run, "timeoutSeconds": 1 }),
    )
    .await;
    let id = started["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 10, finished).await;
    assert_eq!(e["status"], "TIMED_OUT", "{e}");
    assert_eq!(step(&e, "wait")["status"], "CANCELLED");
    assert_eq!(step(&e, "after")["status"], "SKIPPED");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_interrupts_a_running_execution_and_retry_links_a_new_one() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "long",
        json!({ "steps": [ { "id": "wait", "kind": "delay", "config": { "ms": 30000 } } ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 10, step_status("wait", "RUNNING")).await;
    let t0 = std::time::Instant::now();
    let out = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { status error } } }",
            json!({ "i": { "executionId": id } }),
        )
        .await;
    assert_eq!(
        out["data"]["cancelExecution"]["execution"]["status"], "CANCELLED",
        "{out}"
    );
    let e = execution(&app, &owner, &id).await;
    assert_eq!(step(&e, "wait")["status"], "CANCELLED");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Ending twice is a conflict.
    let again = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { status } } }",
            json!({ "i": { "executionId": id } }),
        )
        .await;
    assert_eq!(first_error_code(&again).as_deref(), Some("CONFLICT"));
    // Retry: a new execution pointing back at the cancelled one.
    let out = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { retryExecution(input: $i) { execution { id status retryOf { id } } } }",
            json!({ "i": { "executionId": id } }),
        )
        .await;
    let retry = &out["data"]["retryExecution"]["execution"];
    assert_eq!(retry["retryOf"]["id"], json!(id), "{out}");
    assert_ne!(retry["id"], json!(id));
    let rid = retry["id"].as_str().expect("id").to_owned();
    let cancel = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { status } } }",
            json!({ "i": { "executionId": rid } }),
        )
        .await;
    assert_eq!(
        cancel["data"]["cancelExecution"]["execution"]["status"],
        "CANCELLED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_returns_the_same_execution_for_24_hours() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "idem",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "1" } } ]}),
    )
    .await;
    let a = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "idempotencyKey": "order-42" }),
    )
    .await;
    let b = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "idempotencyKey": "order-42" }),
    )
    .await;
    assert_eq!(a["deduplicated"], false);
    assert_eq!(b["deduplicated"], true);
    assert_eq!(a["execution"]["id"], b["execution"]["id"]);
    let c = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "idempotencyKey": "order-43" }),
    )
    .await;
    assert_ne!(a["execution"]["id"], c["execution"]["id"]);
    app.clock.advance(chrono::Duration::hours(25));
    let owner = app
        .login("owner@acme.example", crate::helpers::OWNER_PASSWORD)
        .await
        .0;
    let d = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "idempotencyKey": "order-42" }),
    )
    .await;
    assert_eq!(d["deduplicated"], false);
    assert_ne!(a["execution"]["id"], d["execution"]["id"]);
    // Concurrent starts with one key make one execution.
    let key = json!({ "workflowId": wf, "idempotencyKey": "burst" });
    let outs =
        futures_util::future::join_all((0..8).map(|_| start(&app, &owner, key.clone()))).await;
    let ids: std::collections::HashSet<String> = outs
        .iter()
        .map(|o| o["execution"]["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{outs:?}");
    // Unpublished workflows and unknown versions are clear errors.
    let out = app
        .gql_as(
            &owner,
            START,
            json!({ "i": { "workflowId": wf, "version": 7 } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("BAD_USER_INPUT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_step_calls_an_openai_compatible_server_with_the_tenant_secret() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32"),
        (
            "AGENTPLANE_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        ("AGENTPLANE_LLM_PRICES", "tiny-model=2:10"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    let s2 = seen.clone();
    let (base, _) = loopback(move |_, headers, body| {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let model = req["model"].clone();
        s2.lock().expect("lock").push((auth, req));
        (
            200,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": "Bonjour, Ada" } }],
                "usage": { "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500 }
            })
            .to_string(),
        )
    })
    .await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name } } }",
            json!({ "i": { "name": "openai", "value": "sk-test-123" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let wf = published(
        &app,
        &owner,
        "greet",
        json!({ "steps": [
            { "id": "ask", "kind": "llm", "config": {
                "baseUrl": format!("{base}/v1"), "model": "tiny-model", "apiKeySecret": "openai",
                "temperature": 0.2, "maxTokens": 50,
                "messages": [ { "role": "system", "content": "Translate to French." },
                              { "role": "user", "content": "Hello, {{ input.name }}" } ] } },
        ]}),
    )
    .await;
    let started = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "input": { "name": "Ada" } }),
    )
    .await;
    let id = started["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let s = step(&e, "ask");
    assert_eq!(s["output"]["content"], "Bonjour, Ada");
    assert_eq!(s["promptTokens"], 1200);
    assert_eq!(s["completionTokens"], 300);
    // 1200 × $2/M + 300 × $10/M = $0.0054
    let cost = s["costUsd"].as_f64().expect("cost");
    assert!((cost - 0.0054).abs() < 1e-9, "{cost}");
    assert_eq!(e["promptTokens"], 1200);
    assert!((e["costUsd"].as_f64().expect("cost") - 0.0054).abs() < 1e-9);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "Bearer sk-test-123");
    assert_eq!(seen[0].1["model"], "tiny-model");
    assert_eq!(seen[0].1["max_tokens"], 50);
    assert_eq!(seen[0].1["messages"][1]["content"], "Hello, Ada");
    // The secret's value never appears in the API.
    let out = app.gql_as(&owner, "{ secrets { name } }", json!({})).await;
    assert!(!out.to_string().contains("sk-test-123"));
    assert!(!e.to_string().contains("sk-test-123"));

    // A model without a price: tokens are counted, the cost is unknown (null), never $0,
    // and the step's output says why.
    let wf = published(
        &app,
        &owner,
        "unpriced",
        json!({ "steps": [
            { "id": "ask", "kind": "llm", "config": {
                "baseUrl": format!("{base}/v1"), "model": "mystery-model", "apiKeySecret": "openai",
                "messages": [ { "role": "user", "content": "Hi" } ] } },
        ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let s = step(&e, "ask");
    assert_eq!(s["promptTokens"], 1200, "{e}");
    assert!(s["costUsd"].is_null(), "{e}");
    assert!(e["costUsd"].is_null(), "{e}");
    assert!(s["output"]["costUsd"].is_null(), "{e}");
    assert!(
        s["output"]["costNote"]
            .as_str()
            .is_some_and(|n| n.contains("mystery-model") && n.contains("AGENTPLANE_LLM_PRICES")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_condition_skips_the_branch_it_does_not_choose() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "branch",
        json!({ "steps": [
            { "id": "check", "kind": "condition",
              "config": { "expression": "input.amount > 100", "ifTrue": ["review"], "ifFalse": ["approve"] } },
            { "id": "review", "kind": "transform", "dependsOn": ["check"], "config": { "template": "\"review\"" } },
            { "id": "approve", "kind": "transform", "dependsOn": ["check"], "config": { "template": "\"approve\"" } },
            { "id": "notify", "kind": "transform", "dependsOn": ["approve"], "config": { "template": "\"sent\"" } },
            { "id": "done", "kind": "transform", "dependsOn": ["review", "approve"], "config": { "template": "\"done\"" } },
        ]}),
    )
    .await;
    let big = start(
        &app,
        &owner,
        json!({ "workflowId": wf, "input": { "amount": 500 } }),
    )
    .await;
    let id = big["execution"]["id"].as_str().expect("id");
    let e = wait_for(&app, &owner, id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(step(&e, "check")["output"], json!({ "result": true }));
    assert_eq!(step(&e, "review")["status"], "SUCCEEDED");
    assert_eq!(step(&e, "approve")["status"], "SKIPPED");
    assert_eq!(
        step(&e, "notify")["status"],
        "SKIPPED",
        "all its dependencies were skipped"
    );
    assert_eq!(step(&e, "done")["status"], "SUCCEEDED");
}
