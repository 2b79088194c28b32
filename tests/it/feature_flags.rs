//! Feature flags that gate (#19 item 6): a catalogue (`llm_steps`, `gpu_steps`,
//! `schedules`, `audit_export`), plan defaults, unknown names refused, and each flag
//! checked where its feature is used: `FORBIDDEN`, reason `FEATURE_DISABLED`, the flag in
//! `extensions.flag`. Another tenant is not affected.

use serde_json::{Value, json};

use crate::helpers::*;

const PLAN: &str = "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { plan featureFlags } } }";
const CREATE: &str =
    "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }";
const PUBLISH: &str =
    "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }";
const START: &str =
    "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }";
const SCHEDULE: &str =
    "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { schedule { id } } }";
const REPORT: &str =
    "query($f: DateTime!, $t: DateTime!) { complianceReport(from: $f, to: $t) { totalEvents } }";

fn assert_disabled(body: &Value, flag: &str) {
    assert_eq!(
        first_error_code(body).as_deref(),
        Some("FORBIDDEN"),
        "{body}"
    );
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(ext["reason"], "FEATURE_DISABLED", "{body}");
    assert_eq!(ext["flag"], flag, "{body}");
}

async fn workflow(app: &TestApp, owner: &str, name: &str, step: Value) -> Value {
    let out = app
        .gql_as(
            owner,
            CREATE,
            json!({ "i": { "name": name, "definition": { "steps": [step] } } }),
        )
        .await;
    out["data"]["createWorkflow"]["workflow"]["id"]
        .as_str()
        .map(|s| json!(s))
        .unwrap_or_else(|| panic!("{out}"))
}

fn llm_step() -> Value {
    json!({ "id": "ask", "kind": "llm", "config": {
        "baseUrl": "http://127.0.0.1:9/v1", "model": "m",
        "messages": [ { "role": "user", "content": "hi" } ] } })
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_gate_their_features_and_plans_set_defaults() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;
    let flags = app
        .gql_as(&owner, "{ tenant { plan featureFlags } }", json!({}))
        .await;
    assert_eq!(
        flags["data"]["tenant"],
        json!({ "plan": "PRO", "featureFlags": ["audit_export", "gpu_steps", "llm_steps", "schedules", "sso"] }),
        "PRO turns every flag on"
    );
    let llm = workflow(&app, &owner, "ask", llm_step()).await;
    let published = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": llm } }))
        .await;
    assert!(published["errors"].is_null(), "{published}");

    // Unknown names are refused, naming the catalogue.
    let bad = app
        .gql_as(
            &admin,
            PLAN,
            json!({ "i": { "tenantId": acme, "plan": "PRO", "featureFlags": ["beta.ui"] } }),
        )
        .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("llm_steps") && m.contains("audit_export")),
        "{bad}"
    );

    // Only schedules on.
    let set = app
        .gql_as(
            &admin,
            PLAN,
            json!({ "i": { "tenantId": acme, "plan": "PRO", "featureFlags": ["schedules"] } }),
        )
        .await;
    assert_eq!(
        set["data"]["updateTenantPlan"]["tenant"]["featureFlags"],
        json!(["schedules"]),
        "{set}"
    );
    // llm_steps: a version published before still cannot start; a new one cannot publish.
    let refused = app
        .gql_as(&owner, START, json!({ "i": { "workflowId": llm } }))
        .await;
    assert_disabled(&refused, "llm_steps");
    let refused = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": llm } }))
        .await;
    assert_disabled(&refused, "llm_steps");
    // gpu_steps.
    let gpu = workflow(
        &app,
        &owner,
        "train",
        json!({ "id": "t", "kind": "transform", "config": { "template": "{}" },
                "resources": { "gpuMemoryMb": 1024, "gpuCount": 1 } }),
    )
    .await;
    let refused = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": gpu } }))
        .await;
    assert_disabled(&refused, "gpu_steps");
    // A workflow without gated steps publishes and starts; schedules are on.
    let plain = workflow(
        &app,
        &owner,
        "plain",
        json!({ "id": "t", "kind": "transform", "config": { "template": "{}" } }),
    )
    .await;
    let ok = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": plain } }))
        .await;
    assert!(ok["errors"].is_null(), "{ok}");
    let ok = app
        .gql_as(&owner, START, json!({ "i": { "workflowId": plain } }))
        .await;
    assert!(ok["errors"].is_null(), "{ok}");
    let schedule = app
        .gql_as(
            &owner,
            SCHEDULE,
            json!({ "i": { "workflowId": plain, "cron": "0 3 * * *", "timezone": "UTC" } }),
        )
        .await;
    assert!(schedule["errors"].is_null(), "{schedule}");
    // audit_export: the report and the HTTP export.
    let window = json!({ "f": "2020-01-01T00:00:00Z", "t": "2100-01-01T00:00:00Z" });
    let refused = app.gql_as(&owner, REPORT, window.clone()).await;
    assert_disabled(&refused, "audit_export");
    let resp = app
        .http
        .get(format!("{}/audit/export?format=ndjson", app.base))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_disabled(&body, "audit_export");

    // schedules off: creating one is refused.
    app.gql_as(
        &admin,
        PLAN,
        json!({ "i": { "tenantId": acme, "plan": "PRO", "featureFlags": ["llm_steps"] } }),
    )
    .await;
    let refused = app
        .gql_as(
            &owner,
            SCHEDULE,
            json!({ "i": { "workflowId": plain, "cron": "0 4 * * *", "timezone": "UTC" } }),
        )
        .await;
    assert_disabled(&refused, "schedules");

    // Another tenant keeps its plan's flags.
    let ok = app.gql_as(&other, REPORT, window).await;
    assert!(
        ok["data"]["complianceReport"]["totalEvents"].is_number(),
        "{ok}"
    );

    // A plan change without flags sets the plan's defaults.
    let free = app
        .gql_as(
            &admin,
            PLAN,
            json!({ "i": { "tenantId": acme, "plan": "FREE" } }),
        )
        .await;
    assert_eq!(
        free["data"]["updateTenantPlan"]["tenant"],
        json!({ "plan": "FREE", "featureFlags": ["llm_steps", "schedules"] }),
        "{free}"
    );
}
