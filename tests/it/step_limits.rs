//! What a workflow author cannot do to the server or to a secret: templates and responses
//! are bounded in size and time and render off the runtime, and secret values stay
//! write-only whatever a step's peer sends back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::executions::{finished, loopback, published, start, step, wait_for};
use crate::helpers::TestApp;

const SET_SECRET: &str =
    "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name allowedHosts } } }";

async fn run_one(app: &TestApp, token: &str, name: &str, steps: Value) -> Value {
    let wf = published(app, token, name, json!({ "steps": steps })).await;
    let started = start(app, token, json!({ "workflowId": wf, "input": {} })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(app, token, &id, 30, finished).await
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_are_bounded_in_size_and_time_and_do_not_stall_requests() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_TEMPLATE_TIMEOUT_MS", "500")]).await;
    let (_, owner) = app.tenant_with_owner("tpl").await;
    let retry = json!({ "maxAttempts": 3, "initialBackoffMs": 10 });

    // A probe keeps answering while the templates run.
    let probe = {
        let (http, url) = (app.http.clone(), format!("{}/graphql", app.base));
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for _ in 0..40 {
                let t = Instant::now();
                let _ = http
                    .post(&url)
                    .json(&json!({ "query": "{ serverInfo { version } }" }))
                    .send()
                    .await;
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            worst
        })
    };

    // 100 MB of output (within minijinja's own limits) fails at once, without retries.
    let e = run_one(
        &app,
        &owner,
        "big",
        json!([{ "id": "t", "kind": "transform", "retry": retry,
                 "config": { "template": "{{ \"x\" * 100000000 }}" } }]),
    )
    .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    let t = step(&e, "t");
    assert_eq!(t["attempt"], 1, "{t}");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 1048576 bytes")),
        "{t}"
    );

    // A loop of expensive statements stops at the deadline.
    let e = run_one(
        &app,
        &owner,
        "slow",
        json!([{ "id": "t", "kind": "transform", "retry": retry, "config": { "template":
            "{% for i in range(5000) %}{% set s = \"y\" * 50000000 %}{{ s|length }}{% endfor %}" } }]),
    )
    .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    let t = step(&e, "t");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|m| m.contains("longer than 500 ms")),
        "{t}"
    );
    assert_eq!(t["attempt"], 1, "{t}");

    let worst = probe.await.expect("probe");
    // Rendered on a runtime worker, each of these held requests for seconds.
    assert!(
        worst < Duration::from_millis(1500),
        "slowest probe {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_larger_than_a_step_output_is_not_read_in() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("AGENTPLANE_MAX_STEP_OUTPUT_BYTES", "65536"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("big").await;
    let (base, _) = loopback(|_, _, _| (200, format!("\"{}\"", "z".repeat(200_000)))).await;
    let e = run_one(
        &app,
        &owner,
        "fetch",
        json!([{ "id": "h", "kind": "http",
                 "config": { "method": "GET", "url": base, "maxResponseBytes": 67_108_864 } }]),
    )
    .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    let h = step(&e, "h");
    assert!(
        h["error"]
            .as_str()
            .is_some_and(|m| m.contains("larger than 65536 bytes")),
        "{h}"
    );
    // A smaller answer passes.
    let (small, _) = loopback(|_, _, _| (200, "{\"ok\": true}".to_owned())).await;
    let e = run_one(
        &app,
        &owner,
        "small",
        json!([{ "id": "h", "kind": "http", "config": { "method": "GET", "url": small } }]),
    )
    .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_values_stay_write_only_whatever_the_peer_sends_back() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("echo").await;
    let key = "sk-live-0123456789abcdef";
    let out = app
        .gql_as(
            &owner,
            SET_SECRET,
            json!({ "i": { "name": "openai", "value": key } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    // An "LLM" that echoes the request's Authorization header back as its answer.
    let (echo, _) = loopback(|_, headers, _| {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            200,
            json!({ "model": "m", "choices": [{ "message": { "content": format!("you sent {auth}") } }] })
                .to_string(),
        )
    })
    .await;
    // A provider whose error quotes the key.
    let (quoting, _) = loopback(|_, headers, _| {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            401,
            json!({ "error": format!("invalid key {auth}") }).to_string(),
        )
    })
    .await;
    let llm = |id: &str, base: &str| {
        json!({ "id": id, "kind": "llm", "config": { "baseUrl": base, "model": "m",
                "apiKeySecret": "openai", "messages": [{ "role": "user", "content": "hi" }] } })
    };
    let e = run_one(&app, &owner, "echo", json!([llm("e", &echo)])).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(
        step(&e, "e")["output"]["content"],
        "you sent Bearer [secret openai]"
    );
    let e = run_one(&app, &owner, "quote", json!([llm("q", &quoting)])).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    let q = step(&e, "q");
    assert!(
        q["error"]
            .as_str()
            .is_some_and(|m| m.contains("[secret openai]")),
        "{q}"
    );
    assert!(!e.to_string().contains(key), "{e}");
    let events = app
        .gql_as(
            &owner,
            "{ auditLog(first: 100) { edges { node { changes } } } }",
            json!({}),
        )
        .await;
    assert!(!events.to_string().contains(key));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_pinned_to_hosts_is_sent_nowhere_else() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("pin").await;
    let out = app
        .gql_as(
            &owner,
            SET_SECRET,
            json!({ "i": { "name": "openai", "value": "sk-pinned-secret",
                           "allowedHosts": ["API.OpenAI.com", "api.openai.com"] } }),
        )
        .await;
    assert_eq!(
        out["data"]["setSecret"]["secret"]["allowedHosts"],
        json!(["api.openai.com"]),
        "{out}"
    );
    let bad = app
        .gql_as(
            &owner,
            SET_SECRET,
            json!({ "i": { "name": "x", "value": "v", "allowedHosts": ["https://evil.test/x"] } }),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );

    let (server, hits) = loopback(|_, _, _| {
        (
            200,
            json!({ "choices": [{ "message": { "content": "ok" } }] }).to_string(),
        )
    })
    .await;
    let steps = json!([{ "id": "a", "kind": "llm", "config": { "baseUrl": server, "model": "m",
        "apiKeySecret": "openai", "messages": [{ "role": "user", "content": "hi" }] } }]);
    let e = run_one(&app, &owner, "elsewhere", steps.clone()).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert!(
        step(&e, "a")["error"]
            .as_str()
            .is_some_and(|m| m.contains("only to api.openai.com")),
        "{e}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent"
    );

    // Pinned to where the step calls, it is sent.
    let out = app
        .gql_as(
            &owner,
            SET_SECRET,
            json!({ "i": { "name": "openai", "value": "sk-pinned-secret", "allowedHosts": ["127.0.0.1"] } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let e = run_one(&app, &owner, "here", steps).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
}
