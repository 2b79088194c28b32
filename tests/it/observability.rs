//! Observability (#18): `/metrics` in Prometheus text format, behind its scrape token,
//! with bounded labels that never carry ids, e-mail addresses or free text.

use serde_json::json;

use crate::executions::{finished, published, start, wait_for};
use crate::helpers::*;

const SCRAPE_TOKEN: &str = "scrape-token-0123456789abcdef";

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut req = app.http.get(format!("{}/metrics", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The value of the first sample of `series` (a name with its exact label set).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_scrape_token_and_count_what_happened() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_METRICS_TOKEN", SCRAPE_TOKEN),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0"),
    ])
    .await;
    assert_eq!(scrape(&app, None).await.0, 401, "no token");
    assert_eq!(
        scrape(&app, Some("scrape-token-wrong-0000000")).await.0,
        401
    );

    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "metrics",
        json!({ "steps": [
            { "id": "t", "kind": "transform", "config": { "template": "\"x\"" } },
        ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    let e = wait_for(&app, &owner, &id, 20, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    // A failed sign-in with an e-mail address, and a request with a refused token.
    let body = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "victim@example.com", "password": "not the password" } }),
        )
        .await;
    assert_eq!(first_error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
    // More distinct operation names than the label keeps.
    for i in 0..(agentplane::metrics::OPERATION_NAMES + 20) {
        app.gql_as(
            &owner,
            &format!("query Probe{i} {{ __typename }}"),
            json!({}),
        )
        .await;
    }

    let (status, text) = scrape(&app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(status, 200);
    for family in [
        "# TYPE agentplane_http_requests_total counter",
        "# TYPE agentplane_http_request_duration_seconds histogram",
        "# TYPE agentplane_graphql_operations_total counter",
        "# TYPE agentplane_executions_finished_total counter",
        "# TYPE agentplane_execution_start_latency_seconds histogram",
        "# TYPE agentplane_step_attempts_total counter",
        "# TYPE agentplane_execution_queue_depth gauge",
        "# TYPE agentplane_db_pool_connections gauge",
        "# TYPE agentplane_db_statements_total counter",
        "# TYPE agentplane_audit_records_total counter",
        "# TYPE agentplane_auth_failures_total counter",
        "# TYPE agentplane_node_health_score gauge",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    // The recorder is the process's: other tests count into it too, so only lower bounds.
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= n, "{series} = {v}, expected ≥ {n}");
    };
    at_least(
        "agentplane_executions_finished_total{status=\"SUCCEEDED\"}",
        1.0,
    );
    at_least(
        "agentplane_step_attempts_total{kind=\"transform\",outcome=\"succeeded\"}",
        1.0,
    );
    at_least("agentplane_auth_failures_total{reason=\"BAD_LOGIN\"}", 1.0);
    at_least(
        "agentplane_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"401\"}",
        2.0,
    );
    at_least(
        "agentplane_graphql_operations_total{type=\"query\",name=\"other\",outcome=\"ok\"}",
        1.0,
    );
    let names: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("agentplane_graphql_operations_total{"))
        .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        names.len() <= agentplane::metrics::OPERATION_NAMES + 2,
        "{} operation names kept",
        names.len()
    );
    // No label value is an e-mail address, a UUID, a global ID or a token.
    let uuid = regex_lite_uuid();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, r)| r.rsplit_once('}'))
            .map(|(l, _)| l);
        let Some(labels) = labels else { continue };
        assert!(!labels.contains('@'), "an e-mail in a label: {line}");
        assert!(!uuid(labels), "an id in a label: {line}");
        assert!(!labels.contains(&owner[..12]), "a token in a label: {line}");
        assert!(
            !labels.contains(&id[..12]),
            "a global id in a label: {line}"
        );
    }
}

/// Whether `s` holds something shaped like a UUID (8-4-4-4-12 hex digits).
fn regex_lite_uuid() -> impl Fn(&str) -> bool {
    |s: &str| {
        let b = s.as_bytes();
        let shape = [8, 4, 4, 4, 12];
        (0..b.len()).any(|start| {
            let mut i = start;
            for (n, len) in shape.iter().enumerate() {
                if i + len > b.len() || !b[i..i + len].iter().all(u8::is_ascii_hexdigit) {
                    return false;
                }
                i += len;
                if n < 4 {
                    if b.get(i) != Some(&b'-') {
                        return false;
                    }
                    i += 1;
                }
            }
            true
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn system_health_shows_what_the_alerts_watch_to_platform_admins_only() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    const Q: &str = "{ systemHealth { status checkedAt checks { name status detail } } }";
    let refused = app.gql_as(&owner, Q, json!({})).await;
    assert_eq!(
        first_error_code(&refused).as_deref(),
        Some("FORBIDDEN"),
        "{refused}"
    );

    let check = |body: &serde_json::Value, name: &str| {
        body["data"]["systemHealth"]["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no check {name} in {body}"))
    };
    let body = app.gql_as(&admin, Q, json!({})).await;
    let h = &body["data"]["systemHealth"];
    // (The report's overall status may already be CRITICAL: the audit check counts this
    // test process's verifications, and other tests break chains on purpose.)
    for name in [
        "AgentplaneQueueBacklog",
        "AgentplaneNodeOffline",
        "AgentplaneLlmSpendHigh",
    ] {
        assert_eq!(check(&body, name)["status"], "OK", "{body}");
    }
    let names: Vec<&str> = h["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    // Every check is an alert of deploy/observability/alerts.yml.
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability/alerts.yml"),
    )
    .expect("alerts.yml");
    for n in &names {
        assert!(
            rules.contains(&format!("alert: {n}")),
            "{n} is not an alert rule"
        );
    }
    assert!(names.contains(&"AgentplaneQueueBacklog"), "{names:?}");

    // Work waits with no worker to run it: once it is older than the limit, the queue
    // check (and so the whole report) says WARNING.
    let wf = published(
        &app,
        &owner,
        "waits",
        json!({ "steps": [{ "id": "t", "kind": "transform", "config": { "template": "1" } }] }),
    )
    .await;
    start(&app, &owner, json!({ "workflowId": wf })).await;
    app.clock.advance(chrono::Duration::minutes(10));
    let body = app.gql_as(&admin, Q, json!({})).await;
    let h = &body["data"]["systemHealth"];
    assert_ne!(h["status"], "OK", "{body}");
    let queue = check(&body, "AgentplaneQueueBacklog");
    assert_eq!(queue["status"], "WARNING", "{queue}");
    assert!(
        queue["detail"]
            .as_str()
            .unwrap_or("")
            .contains("1 executions queued"),
        "{queue}"
    );
}
