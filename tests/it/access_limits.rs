//! Per-tenant rate limits, expensive-operation limits and GraphQL cost budgets (#19 item
//! 4): limits by plan, overridable by platform admins; refusals are `RATE_LIMITED` with
//! `retryAfterSeconds` and `limit`, HTTP 429 with `Retry-After`; admitted requests carry
//! `RateLimit-*` headers; every response carries `extensions.cost`. (Trusted documents,
//! item 5: `trusted_documents.rs`.)

use std::time::Duration;

use serde_json::{Value, json};

use crate::executions::published;
use crate::helpers::*;

const PLAN: &str = "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { quotas { requestsPerMinute expensiveOperationsPerMinute queryCostPerMinute } } } }";
const START: &str =
    "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }";

async fn set_limits(app: &TestApp, admin: &str, tenant: &str, limits: Value) -> Value {
    let out = app
        .gql_as(
            admin,
            PLAN,
            json!({ "i": { "tenantId": tenant, "plan": "PRO", "quotas": limits } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    out["data"]["updateTenantPlan"]["tenant"]["quotas"].clone()
}

fn assert_rate_limited(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    limit: &str,
) {
    assert_eq!(status, 429, "{body}");
    assert!(
        headers.get("retry-after").is_some(),
        "429 without Retry-After"
    );
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(ext["code"], "RATE_LIMITED", "{body}");
    assert_eq!(ext["limit"], limit, "{body}");
    assert!(
        ext["retryAfterSeconds"].as_u64().is_some_and(|s| s >= 1),
        "{body}"
    );
}

pub(crate) async fn post(
    app: &TestApp,
    token: &str,
    body: Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    app.post_raw(&body, Some(token)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_shares_one_request_budget_and_plans_set_it() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;

    // Plans set the defaults, shown on the tenant.
    let q = app
        .gql_as(&owner, "{ tenant { quotas { requestsPerMinute expensiveOperationsPerMinute queryCostPerMinute } } }", json!({}))
        .await;
    assert_eq!(
        q["data"]["tenant"]["quotas"],
        json!({ "requestsPerMinute": 30_000, "expensiveOperationsPerMinute": 3_000, "queryCostPerMinute": 2_000_000 }),
        "{q}"
    );
    // Admitted requests say what is left, for the tightest budget and every policy.
    let (status, headers, body) = post(&app, &owner, json!({ "query": "{ me { id } }" })).await;
    assert_eq!(status, 200, "{body}");
    let policy = headers
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(policy.contains("30000;w=60;burst=5000"), "{policy}");
    assert!(headers.get("ratelimit-remaining").is_some(), "{headers:?}");
    assert!(headers.get("ratelimit-limit").is_some(), "{headers:?}");

    // Negative and absurd limits are refused.
    let bad = app
        .gql_as(&admin, PLAN, json!({ "i": { "tenantId": acme, "plan": "PRO", "quotas": { "requestsPerMinute": -1 } } }))
        .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );

    // 12 a minute: bursts of 2, shared by the tenant's owner and its API key.
    set_limits(&app, &admin, &acme, json!({ "requestsPerMinute": 12 })).await;
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "svc", "roleId": "VIEWER" } }),
        )
        .await;
    // The limit reaches the cached principals at once (the tenant trigger); the key
    // creation above may have been the first of the burst.
    let key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .map(str::to_owned);
    let mut refused = None;
    for i in 0..4 {
        let token = if i % 2 == 0 {
            owner.as_str()
        } else {
            key.as_deref().unwrap_or(&owner)
        };
        let (status, headers, body) = post(&app, token, json!({ "query": "{ me { id } }" })).await;
        if status != 200 {
            refused = Some((i, status, headers, body));
            break;
        }
    }
    let (i, status, headers, body) = refused.expect("the tenant's budget ran out");
    assert!(i <= 2, "refused only after {i} requests");
    assert_rate_limited(status, &headers, &body, "requests_per_tenant");
    assert_eq!(
        headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("0")
    );
    // Another tenant is not affected.
    let (status, _, body) = post(&app, &other, json!({ "query": "{ me { id } }" })).await;
    assert_eq!(status, 200, "{body}");

    // 0 turns the limit off.
    let quotas = set_limits(&app, &admin, &acme, json!({ "requestsPerMinute": 0 })).await;
    assert_eq!(quotas["requestsPerMinute"], 0);
    for _ in 0..5 {
        let (status, _, body) = post(&app, &owner, json!({ "query": "{ me { id } }" })).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expensive_operations_have_their_own_budget_and_nothing_is_half_written() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "one",
        json!({ "steps": [ { "id": "a", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    // 6 a minute: a burst of 1.
    set_limits(
        &app,
        &admin,
        &acme,
        json!({ "expensiveOperationsPerMinute": 6 }),
    )
    .await;
    let start = json!({ "query": START, "variables": { "i": { "workflowId": wf } } });
    let (status, _, body) = post(&app, &owner, start.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let (status, headers, body) = post(&app, &owner, start.clone()).await;
    assert_rate_limited(status, &headers, &body, "expensive_operations_per_tenant");
    assert!(body["data"]["startExecution"].is_null(), "{body}");
    // Reports count against the same budget; cheap reads do not.
    let report = app
        .gql_as(
            &owner,
            "query($f: DateTime!, $t: DateTime!) { complianceReport(from: $f, to: $t) { totalEvents } }",
            json!({ "f": "2020-01-01T00:00:00Z", "t": "2030-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(
        report["errors"][0]["extensions"]["limit"], "expensive_operations_per_tenant",
        "{report}"
    );
    let export = app
        .http
        .get(format!("{}/audit/export", app.base))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(export.status(), 429);
    assert!(export.headers().get("retry-after").is_some());
    let n = app
        .gql_as(&owner, "{ executions { totalCount } }", json!({}))
        .await;
    assert_eq!(
        n["data"]["executions"]["totalCount"], 1,
        "only the admitted start ran: {n}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_cost_is_reported_charged_and_given_back() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;

    // Every response reports the requested and the actual cost, and the budget.
    let (_, _, body) = post(&app, &owner, json!({ "query": "{ me { id email } }" })).await;
    let cost = &body["extensions"]["cost"];
    assert_eq!(cost["requestedQueryCost"], 3, "{body}");
    assert_eq!(cost["actualQueryCost"], 3, "{body}");
    assert_eq!(cost["budget"]["perMinute"], 2_000_000, "{body}");

    // A page of 100 users is asked for, one exists: what was not used is given back.
    set_limits(&app, &admin, &acme, json!({ "queryCostPerMinute": 1000 })).await;
    let (status, _, body) = post(
        &app,
        &owner,
        json!({ "query": "{ users(first: 100) { edges { node { id } } } }" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cost = &body["extensions"]["cost"];
    let requested = cost["requestedQueryCost"].as_u64().expect("requested");
    let actual = cost["actualQueryCost"].as_u64().expect("actual");
    assert!(requested >= 200 && actual <= 5, "{cost}");
    let remaining = cost["budget"]["remaining"].as_u64().expect("remaining");
    assert!(
        remaining >= 1000 - actual - 10,
        "the unused cost came back: {cost}"
    );

    // More than the whole budget at once: refused as an input problem (no waiting
    // makes it fit), saying what to do.
    set_limits(&app, &admin, &acme, json!({ "queryCostPerMinute": 500 })).await;
    let (status, headers, body) = post(
        &app,
        &owner,
        json!({ "query": "{ users(first: 100) { edges { node { id email displayName status createdAt } } } }" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("BAD_USER_INPUT"),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "COST_OVER_BUDGET",
        "{body}"
    );
    assert!(body["errors"][0].get("locations").is_none(), "{body}");

    // An operation refused by the batch's complexity budget is not charged.
    set_limits(&app, &admin, &acme, json!({ "queryCostPerMinute": 20_000 })).await;
    let big = "{ users(first: 100) { edges { node { a0: id a1: id a2: id a3: id a4: id a5: id a6: id a7: id a8: id a9: id a10: id a11: id a12: id a13: id a14: id a15: id a16: id a17: id a18: id a19: id a20: id a21: id a22: id a23: id a24: id a25: id a26: id a27: id a28: id a29: id a30: id a31: id a32: id a33: id a34: id a35: id a36: id a37: id a38: id a39: id a40: id a41: id a42: id a43: id a44: id a45: id a46: id a47: id a48: id a49: id a50: id a51: id a52: id a53: id a54: id a55: id a56: id a57: id } } } }";
    let (_, _, body) = post(&app, &owner, json!([{ "query": big }, { "query": big }])).await;
    let remaining = body[0]["extensions"]["cost"]["budget"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        body[1]["errors"][0]["extensions"]["limit"] == "maxComplexity",
        "{body}"
    );
    assert!(
        remaining > 19_000,
        "the refused operation's 6001 was not spent: {body}"
    );

    // Work beyond the static cost (a `nodes` list is one field however long) is charged
    // after the fact.
    let users = app
        .gql_as(
            &owner,
            "{ users(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    let id = users["data"]["users"]["edges"][0]["node"]["id"].clone();
    let ids: Vec<Value> = (0..50).map(|_| id.clone()).collect();
    let (_, _, body) = post(
        &app,
        &owner,
        json!({ "query": "query($ids: [ID!]!) { nodes(ids: $ids) { id ... on User { email displayName } } }", "variables": { "ids": ids } }),
    )
    .await;
    let cost = &body["extensions"]["cost"];
    assert!(
        cost["actualQueryCost"].as_u64() > cost["requestedQueryCost"].as_u64(),
        "{cost}"
    );
    let before = remaining;
    let after = cost["budget"]["remaining"].as_u64().expect("remaining");
    assert!(
        before - after >= cost["actualQueryCost"].as_u64().expect("actual") - 10,
        "the overrun was charged: {before} -> {after}, {cost}"
    );

    // Spending it: each page of 100 charges its requested cost until nothing is left.
    set_limits(&app, &admin, &acme, json!({ "queryCostPerMinute": 60 })).await;
    let mut refused = None;
    for _ in 0..40 {
        let (status, headers, body) = post(
            &app,
            &owner,
            json!({ "query": "{ me { id email displayName } }" }),
        )
        .await;
        if status != 200 {
            refused = Some((status, headers, body));
            break;
        }
    }
    let (status, headers, body) = refused.expect("the budget ran out");
    assert_rate_limited(status, &headers, &body, "query_cost_per_tenant");
    // Callers without credentials spend their address's budget.
    let anon = app.gql("{ serverInfo { version } }", json!({})).await;
    assert_eq!(
        anon["extensions"]["cost"]["requestedQueryCost"], 2,
        "{anon}"
    );
    assert_eq!(
        anon["extensions"]["cost"]["budget"]["perMinute"], 100_000,
        "{anon}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_count_each_operation_and_refused_credentials_count_too() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "60"),
        ("AGENTPLANE_RATE_LIMIT_BURST", "6"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    // The schema is introspected once per document, not once per alias.
    let twice = app
        .gql(
            "{ a: __schema { queryType { name } } b: __schema { queryType { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        twice["errors"][0]["extensions"]["limit"], "introspection",
        "{twice}"
    );
    let batch = json!([{ "query": "{ me { id } }" }, { "query": "{ me { id } }" }, { "query": "{ me { id } }" }, { "query": "{ me { id } }" }]);
    let (status, _, body) = post(&app, &owner, batch.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = post(&app, &owner, batch).await;
    assert_rate_limited(status, &headers, &body, "requests_per_principal");

    // Made-up API keys from one address: counted like anonymous requests, then 429.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (status, _, _) = post(
            &app,
            &format!("agp_{i:0>40}"),
            json!({ "query": "{ me { id } }" }),
        )
        .await;
        statuses.push(status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_caller_has_an_expensive_operation_budget_of_its_own() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_EXPENSIVE_OPERATIONS_PER_MINUTE", "6"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "one",
        json!({ "steps": [ { "id": "a", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "svc", "roleId": "OPERATOR" } }),
        )
        .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let start = json!({ "query": START, "variables": { "i": { "workflowId": wf } } });
    let (status, _, body) = post(&app, &owner, start.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = post(&app, &owner, start.clone()).await;
    assert_rate_limited(
        status,
        &headers,
        &body,
        "expensive_operations_per_principal",
    );
    // The key's budget is its own: a runaway caller does not spend the tenant's.
    let (status, _, body) = post(&app, &key, start).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
}

/// A subscription is charged its requested cost once, when it starts. Its events are
/// neither charged nor given back and carry no `extensions.cost`: each event used to be
/// settled against the subscription's requested cost, so a subscription whose events
/// held more than it asked for (a list of steps) ran its tenant's budget into debt, and
/// one whose events held less minted budget at every event.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_is_charged_when_it_starts_not_per_event() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let steps: Vec<Value> = (0..20)
        .map(|i| json!({ "id": format!("s{i}"), "kind": "transform", "config": { "template": "1" } }))
        .collect();
    let wf = published(&app, &owner, "wide", json!({ "steps": steps })).await;
    let started = crate::executions::start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    set_limits(&app, &admin, &acme, json!({ "queryCostPerMinute": 1200 })).await;

    // Asks for 9 fields; an event with 20 steps holds 66.
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { kind status execution { status steps { stepId status output } } } }",
            "variables": { "id": id } } }),
    )
    .await;
    let snapshot = ws_next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "next", "{snapshot}");
    let engine = agentplane::executions::engine::start(app.state.app.clone(), 1)
        .expect("engine")
        .expect("started");
    let mut events = 1;
    let mut msg = snapshot;
    loop {
        assert!(
            msg["payload"]["extensions"]["cost"].is_null(),
            "an event settled a cost: {msg}"
        );
        let u = &msg["payload"]["data"]["executionUpdated"];
        if u["kind"] == "STATUS_CHANGED" && u["status"] == "SUCCEEDED" {
            break;
        }
        msg = ws_next_json(&mut ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        events += 1;
    }
    assert!(events > 20, "{events} events");

    // The budget paid for the subscription once (9), not the events' 57 more each
    // (over 2,000 in all: a debt that refused every request for minutes).
    let (status, _, body) = post(&app, &owner, json!({ "query": "{ me { id } }" })).await;
    assert_eq!(status, 200, "{body}");
    let remaining = body["extensions"]["cost"]["budget"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(remaining >= 1200 - 9 - 2 - 20, "{body}");

    // Sent where it cannot stream (an HTTP POST), a subscription is refused in one
    // response, which is settled like a query: nothing used, the charge given back.
    let (_, _, body) = post(
        &app,
        &owner,
        json!({ "query": "subscription { heartbeat { at uptimeSeconds } }" }),
    )
    .await;
    assert!(body["errors"].is_array(), "{body}");
    let cost = &body["extensions"]["cost"];
    assert_eq!(cost["requestedQueryCost"], 3, "{body}");
    assert_eq!(cost["actualQueryCost"], 0, "{body}");
    engine.shutdown(Duration::from_secs(1)).await;
}
