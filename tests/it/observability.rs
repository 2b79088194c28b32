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

/// A tiny OTLP/HTTP receiver: every body POSTed to `/v1/traces` (JSON), kept in order.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: String| {
            let kept = kept.clone();
            async move {
                kept.lock().expect("lock").push(body);
                (
                    axum::http::StatusCode::OK,
                    [("content-type", "application/json")],
                    "{}",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), bodies)
}

async fn gql_at(
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: serde_json::Value,
    traceparent: Option<&str>,
) -> serde_json::Value {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    req.send().await.expect("send").json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_an_execution_from_the_api_process_through_the_queue_to_a_worker() {
    let (otlp, bodies) = otlp_receiver().await;
    let traced = |role: &'static str| {
        vec![
            ("AGENTPLANE_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("agentplane.test.role={role}"),
            ),
        ]
    };
    let api_env = traced("api");
    let mut env: Vec<(&str, &str)> = api_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("AGENTPLANE_WORKERS", "0"));
    let api = ServerProcess::start(&env).await;
    let worker_env = traced("worker");
    let mut wenv: Vec<(&str, &str)> = worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The worker serves no API: its metrics have a listener of their own.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    wenv.push(("AGENTPLANE_METRICS_LISTEN", metrics_addr.as_str()));
    let _worker = crate::executions::worker_process_with(&api.db.url, &wenv).await;

    let login = gql_at(
        &api.base,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        json!({ "i": { "email": "admin@agentplane.local", "password": ADMIN_PASSWORD } }),
        None,
    )
    .await;
    let admin = login["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let tenant = gql_at(
        &api.base,
        Some(&admin),
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { setPasswordToken } }",
        json!({ "i": { "slug": "traced", "name": "traced", "plan": "PRO",
                       "owner": { "email": "owner@traced.example", "displayName": "Owner" } } }),
        None,
    )
    .await;
    gql_at(
        &api.base,
        None,
        "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
        json!({ "i": { "token": tenant["data"]["createTenant"]["setPasswordToken"], "password": OWNER_PASSWORD } }),
        None,
    )
    .await;
    let login = gql_at(
        &api.base,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        json!({ "i": { "email": "owner@traced.example", "password": OWNER_PASSWORD } }),
        None,
    )
    .await;
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let created = gql_at(
        &api.base,
        Some(&token),
        "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
        json!({ "i": { "name": "traced", "definition": { "steps": [
            { "id": "t", "kind": "transform", "config": { "template": "\"x\"" } },
            { "id": "w", "kind": "delay", "dependsOn": ["t"], "config": { "ms": 10 } },
        ]}}}),
        None,
    )
    .await;
    let wf = created["data"]["createWorkflow"]["workflow"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    gql_at(
        &api.base,
        Some(&token),
        "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }",
        json!({ "i": { "workflowId": wf } }),
        None,
    )
    .await;
    // The client's own trace: everything below must join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let started = gql_at(
        &api.base,
        Some(&token),
        crate::executions::START,
        json!({ "i": { "workflowId": wf } }),
        Some(&traceparent),
    )
    .await;
    let id = started["data"]["startExecution"]["execution"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let e = gql_at(
            &api.base,
            Some(&token),
            crate::executions::EXEC,
            json!({ "id": id }),
            None,
        )
        .await;
        if e["data"]["execution"]["status"] == "SUCCEEDED" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never finished: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Spans of the trace from each process, by name.
    let spans_of = |role: &str| -> std::collections::BTreeSet<String> {
        let bodies = bodies.lock().expect("lock").clone();
        let mut names = std::collections::BTreeSet::new();
        for b in bodies {
            let v: serde_json::Value = serde_json::from_str(&b).expect("OTLP JSON");
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                let attrs = rs["resource"]["attributes"].to_string();
                if !attrs.contains(&format!("\"{role}\"")) {
                    continue;
                }
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        if s["traceId"] == trace_id {
                            names.insert(s["name"].as_str().unwrap_or("").to_owned());
                        }
                    }
                }
            }
        }
        names
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (api_spans, worker_spans) = loop {
        let (a, w) = (spans_of("api"), spans_of("worker"));
        let done = [
            "http.request",
            "graphql.operation",
            "execution.enqueue",
            "db.transaction",
        ]
        .iter()
        .all(|n| a.contains(*n))
            && ["execution.run", "step.run", "db.transaction"]
                .iter()
                .all(|n| w.contains(*n));
        if done || std::time::Instant::now() > deadline {
            break (a, w);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Statements have spans of their own where the driver runs them in the caller's
    // task (PostgreSQL); their transaction's span stands for them on SQLite.
    let mut api_wanted = vec![
        "http.request",
        "graphql.operation",
        "execution.enqueue",
        "db.transaction",
    ];
    let mut worker_wanted = vec!["execution.run", "step.run", "db.transaction"];
    if TestDb::is_postgres() {
        api_wanted.push("db.statement");
        worker_wanted.push("db.statement");
    }
    for n in api_wanted {
        assert!(
            api_spans.contains(n),
            "no {n} span of the trace from the API process: {api_spans:?}"
        );
    }
    for n in worker_wanted {
        assert!(
            worker_spans.contains(n),
            "no {n} span of the trace from the worker process: {worker_spans:?}"
        );
    }
    // The worker's own metrics: the steps it ran.
    let scrape = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("worker metrics")
        .text()
        .await
        .expect("body");
    assert!(
        scrape.contains("agentplane_step_attempts_total{kind=\"transform\",outcome=\"succeeded\"}"),
        "the worker's scrape has no step attempts:\n{scrape}"
    );
    // No statement text or bound value travels in a span.
    let all = bodies.lock().expect("lock").join("\n");
    assert!(!all.contains(ADMIN_PASSWORD), "a secret in the traces");
    assert!(!all.contains("INSERT INTO"), "statement text in the traces");
}

/// Logs at their most verbose (`RUST_LOG=debug`, JSON) carry the trace id of the request
/// and never a password, token, API key, secret value or the master key.
#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_carry_trace_ids_and_never_a_secret() {
    use tokio::io::AsyncBufReadExt as _;
    let (otlp, _bodies) = otlp_receiver().await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("server.log");
    let master_key = "c2VjcmV0LW1hc3Rlci1rZXktZm9yLWxvZy10ZXN0cyE=";
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("AGENTPLANE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .env("AGENTPLANE_LOG_FORMAT", "json")
        .env("AGENTPLANE_OTLP_ENDPOINT", &otlp)
        .env("AGENTPLANE_MASTER_KEY", master_key)
        .env("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("server starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("listen line")
            .expect("read")
            .expect("a line");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let login = |email: &'static str, password: &'static str| {
        let base = base.clone();
        async move {
            gql_at(
                &base,
                None,
                "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
                json!({ "i": { "email": email, "password": password } }),
                None,
            )
            .await
        }
    };
    let admin = login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let admin_token = admin["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let tenant = gql_at(
        &base,
        Some(&admin_token),
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { setPasswordToken } }",
        json!({ "i": { "slug": "logs", "name": "logs", "plan": "PRO",
                       "owner": { "email": "owner@logs.example", "displayName": "Owner" } } }),
        Some(&traceparent),
    )
    .await;
    let set_token = tenant["data"]["createTenant"]["setPasswordToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{tenant}"))
        .to_owned();
    gql_at(
        &base,
        None,
        "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
        json!({ "i": { "token": set_token, "password": OWNER_PASSWORD } }),
        None,
    )
    .await;
    // A refused sign-in names neither the password tried nor the right one.
    login("owner@logs.example", "a-wrong-password-123").await;
    let owner = login("owner@logs.example", OWNER_PASSWORD).await;
    let owner_token = owner["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let refresh = owner["data"]["login"]["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let key = gql_at(
        &base,
        Some(&owner_token),
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
        json!({ "i": { "name": "ci", "roleId": "DEVELOPER" } }),
        None,
    )
    .await;
    let api_key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{key}"))
        .to_owned();
    let secret_value = "sk-live-do-not-log-this-0123456789";
    let set = gql_at(
        &base,
        Some(&owner_token),
        "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name } } }",
        json!({ "i": { "name": "OPENAI_API_KEY", "value": secret_value } }),
        None,
    )
    .await;
    assert!(set["errors"].is_null(), "{set}");
    gql_at(&base, Some(&api_key), "{ me { id } }", json!({}), None).await;
    gql_at(
        &base,
        None,
        "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }",
        json!({ "i": { "refreshToken": refresh } }),
        None,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = child.start_kill();
    let _ = child.wait().await;

    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.lines().count() > 20,
        "the debug log is nearly empty:\n{log}"
    );
    for (what, secret) in [
        ("the admin password", ADMIN_PASSWORD),
        ("the owner password", OWNER_PASSWORD),
        ("a wrong password tried", "a-wrong-password-123"),
        ("the set-password token", set_token.as_str()),
        ("an access token", admin_token.as_str()),
        ("an access token", owner_token.as_str()),
        ("a refresh token", refresh.as_str()),
        ("an API key", api_key.as_str()),
        ("a tenant secret", secret_value),
        ("the master key", master_key),
    ] {
        assert!(!log.contains(secret), "{what} is in the debug log");
    }
    // Lines written while serving the traced request carry its trace id.
    let traced = log.lines().filter(|l| l.contains(trace_id)).count();
    assert!(
        traced > 0,
        "no log line carries the request's trace id:\n{}",
        &log[..log.len().min(4000)]
    );
    // The operation's lines name the caller's tenant (the platform admin's).
    assert!(
        log.lines()
            .any(|l| l.contains(trace_id) && l.contains("\"tenant\":")),
        "no line of the traced operation names its tenant"
    );
}
