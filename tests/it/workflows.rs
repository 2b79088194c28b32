//! Workflows: validation, drafts, immutable versions, queries, visibility, quota, isolation.

use serde_json::{Value, json};

use crate::helpers::{TestApp, first_error_code};

const CREATE: &str = "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id name latestVersion } } }";
const UPDATE: &str = "mutation($i: UpdateWorkflowInput!) { updateWorkflow(input: $i) { workflow { id definition } } }";
const PUBLISH: &str = "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version definition } workflow { latestVersion } } }";

fn diamond() -> Value {
    json!({ "steps": [
        { "id": "fetch", "kind": "http", "config": { "method": "GET", "url": "https://example.com/{{ input.id }}" } },
        { "id": "summarize", "kind": "llm", "dependsOn": ["fetch"],
          "config": { "baseUrl": "https://llm.example.com/v1", "model": "m", "messages": [{ "role": "user", "content": "{{ steps.fetch.body }}" }] },
          "retry": { "maxAttempts": 3 }, "timeoutSeconds": 60 },
        { "id": "classify", "kind": "transform", "dependsOn": ["fetch"], "config": { "template": "{{ steps.fetch.status }}" } },
        { "id": "wait", "kind": "delay", "dependsOn": ["summarize", "classify"], "config": { "ms": 10 } },
    ]})
}

async fn create(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql_as(token, CREATE, json!({ "i": input })).await
}

fn wf_id(out: &Value) -> Value {
    out["data"]["createWorkflow"]["workflow"]["id"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_definitions_name_the_step_and_field() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = create(
        &app,
        &owner,
        json!({ "name": "bad", "definition": { "steps": [
            { "id": "a", "kind": "delay", "config": { "ms": 1 }, "dependsOn": ["b"] },
            { "id": "b", "kind": "delay", "config": { "ms": 1 }, "dependsOn": ["a"] },
        ]}}),
    )
    .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("BAD_USER_INPUT"));
    assert!(
        out["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("cycle")
    );
    let out = create(
        &app,
        &owner,
        json!({ "name": "bad", "definition": { "steps": [
            { "id": "ask", "kind": "llm", "config": { "baseUrl": "https://x", "messages": [] } },
        ]}}),
    )
    .await;
    let ext = &out["errors"][0]["extensions"];
    assert_eq!(ext["step"], "ask", "{out}");
    assert!(
        ext["field"]
            .as_str()
            .expect("field")
            .starts_with("definition.steps[0].config.")
    );
    let fields: Vec<&str> = ext["errors"]
        .as_array()
        .expect("all errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"definition.steps[0].config.model"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"definition.steps[0].config.messages"),
        "{fields:?}"
    );
    // Nothing was half-written.
    let list = app
        .gql_as(&owner, "{ workflows { totalCount } }", json!({}))
        .await;
    assert_eq!(list["data"]["workflows"]["totalCount"], 0);
}

/// Saved definitions are checked as far as they can be before they run: unknown keys
/// (a `depends_on` typo), templates that do not compile, and a read of a step that does
/// not run first are errors naming the step and field; a secret that does not exist is
/// a warning in the payload. At run time an undefined value names itself.
#[tokio::test(flavor = "multi_thread")]
async fn definitions_are_checked_when_saved_and_undefined_values_name_themselves() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = create(
        &app,
        &owner,
        json!({ "name": "typo", "definition": { "steps": [
            { "id": "a", "kind": "delay", "config": { "ms": 1 } },
            { "id": "b", "kind": "transform", "depends_on": ["a"],
              "config": { "template": "{{ steps.a.output.waitedMs }" } },
        ]}}),
    )
    .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("BAD_USER_INPUT"),
        "{out}"
    );
    let ext = &out["errors"][0]["extensions"];
    assert_eq!(ext["step"], "b", "{out}");
    assert_eq!(ext["field"], "definition.steps[1].depends_on", "{out}");
    let errors: Vec<(&str, &str)> = ext["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|(f, m)| *f == "definition.steps[1].depends_on"
                && m.contains("did you mean `dependsOn`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, m)| *f == "definition.steps[1].config.template"
                && m.starts_with("does not compile")),
        "{errors:?}"
    );

    // Valid, but the LLM key it names is not there yet: saved, with a warning.
    const CREATE_WARN: &str = "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } warnings { step field message } } }";
    let out = app
        .gql_as(
            &owner,
            CREATE_WARN,
            json!({ "i": { "name": "ask", "definition": { "steps": [
                { "id": "ask", "kind": "llm", "config": { "baseUrl": "https://llm.example/v1",
                  "model": "m", "apiKeySecret": "LLM_KEY",
                  "messages": [{ "role": "user", "content": "hi" }] } },
            ]}}}),
        )
        .await;
    let warnings = &out["data"]["createWorkflow"]["warnings"];
    assert_eq!(warnings[0]["step"], "ask", "{out}");
    assert_eq!(
        warnings[0]["field"], "definition.steps[0].config.apiKeySecret",
        "{out}"
    );
    assert!(
        warnings[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("LLM_KEY") && m.contains("setSecret")),
        "{out}"
    );

    // At run time: the misspelt input field is named, with what the input has.
    let id = crate::executions::published(
        &app,
        &owner,
        "greet",
        json!({ "steps": [
            { "id": "greet", "kind": "transform", "config": { "template": "Hello {{ input.nme }}" } },
        ]}),
    )
    .await;
    let started = crate::executions::start(
        &app,
        &owner,
        json!({ "workflowId": id, "input": { "name": "Ada" } }),
    )
    .await;
    let exec_id = started["execution"]["id"].as_str().expect("id").to_owned();
    let done =
        crate::executions::wait_for(&app, &owner, &exec_id, 20, crate::executions::finished).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = crate::executions::step(&done, "greet")["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("`input.nme` is undefined; `input` has: name"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drafts_change_but_published_versions_do_not() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = create(
        &app,
        &owner,
        json!({ "name": "pipeline", "tags": ["ml"], "definition": diamond() }),
    )
    .await;
    let id = wf_id(&out);
    assert_eq!(
        out["data"]["createWorkflow"]["workflow"]["latestVersion"],
        Value::Null,
        "{out}"
    );

    let v1 = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": id } }))
        .await;
    assert_eq!(
        v1["data"]["publishWorkflow"]["version"]["version"], 1,
        "{v1}"
    );
    let one_step = json!({ "steps": [{ "id": "only", "kind": "delay", "config": { "ms": 5 } }] });
    let upd = app
        .gql_as(
            &owner,
            UPDATE,
            json!({ "i": { "workflowId": id, "definition": one_step } }),
        )
        .await;
    assert_eq!(
        upd["data"]["updateWorkflow"]["workflow"]["definition"]["steps"][0]["id"],
        "only"
    );
    let v2 = app
        .gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": id } }))
        .await;
    assert_eq!(v2["data"]["publishWorkflow"]["version"]["version"], 2);
    assert_eq!(
        v2["data"]["publishWorkflow"]["workflow"]["latestVersion"],
        2
    );

    let wf = app
        .gql_as(
            &owner,
            "query($id: ID!) { workflow(id: $id) { latestVersion versions { version definition publishedBy } } }",
            json!({ "id": id }),
        )
        .await;
    let versions = &wf["data"]["workflow"]["versions"];
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[1]["version"], 1);
    assert_eq!(
        versions[1]["definition"]["steps"].as_array().map(Vec::len),
        Some(4),
        "v1 is unchanged"
    );
    assert!(
        versions[0]["publishedBy"]
            .as_str()
            .expect("by")
            .starts_with("user:")
    );

    let del = app
        .gql_as(
            &owner,
            "mutation($id: ID!) { deleteWorkflow(input: {workflowId: $id}) { deletedWorkflowId } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(del["data"]["deleteWorkflow"]["deletedWorkflowId"], id);
    let gone = app
        .gql_as(
            &owner,
            "query($id: ID!) { workflow(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(first_error_code(&gone).as_deref(), Some("NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_ordering_and_pages() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    for (name, env, tag) in [
        ("Alpha report", "PRODUCTION", "ml"),
        ("beta Report", "STAGING", "ml"),
        ("gamma", "PRODUCTION", "etl"),
        ("delta_report", "DEVELOPMENT", "ml_x"),
    ] {
        let out = create(
            &app,
            &owner,
            json!({ "name": name, "environment": env, "tags": [tag], "definition": diamond() }),
        )
        .await;
        assert!(out["errors"].is_null(), "{out}");
    }
    let names = |v: &Value| -> Vec<String> {
        v["data"]["workflows"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["node"]["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let q = "query($f: WorkflowFilter, $o: WorkflowOrder, $first: Int, $after: String) {
        workflows(filter: $f, orderBy: $o, first: $first, after: $after) {
          totalCount pageInfo { hasNextPage endCursor } edges { node { name } } } }";
    let by_name = json!({ "field": "NAME", "direction": "ASC" });
    let out = app
        .gql_as(&owner, q, json!({ "f": { "tag": "ml" }, "o": by_name }))
        .await;
    assert_eq!(
        names(&out),
        ["Alpha report", "beta Report"],
        "tag match is exact, `_` is literal"
    );
    let out = app
        .gql_as(
            &owner,
            q,
            json!({ "f": { "nameContains": "REPORT" }, "o": by_name }),
        )
        .await;
    assert_eq!(names(&out), ["Alpha report", "beta Report", "delta_report"]);
    let out = app
        .gql_as(
            &owner,
            q,
            json!({ "f": { "environment": "PRODUCTION" }, "o": by_name }),
        )
        .await;
    assert_eq!(names(&out), ["Alpha report", "gamma"]);
    let out = app
        .gql_as(
            &owner,
            q,
            json!({ "f": { "nameContains": "_" }, "o": by_name }),
        )
        .await;
    assert_eq!(names(&out), ["delta_report"]);

    // Two pages of two, by name descending.
    let desc = json!({ "field": "NAME", "direction": "DESC" });
    let p1 = app
        .gql_as(&owner, q, json!({ "o": desc, "first": 2 }))
        .await;
    assert_eq!(names(&p1), ["gamma", "delta_report"]);
    assert_eq!(p1["data"]["workflows"]["totalCount"], 4);
    assert_eq!(p1["data"]["workflows"]["pageInfo"]["hasNextPage"], true);
    let cursor = p1["data"]["workflows"]["pageInfo"]["endCursor"].clone();
    let p2 = app
        .gql_as(&owner, q, json!({ "o": desc, "first": 2, "after": cursor }))
        .await;
    assert_eq!(names(&p2), ["beta Report", "Alpha report"]);
    assert_eq!(p2["data"]["workflows"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn visibility_private_team_and_tenant() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let mk_user = |email: &'static str| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let out = app
                .gql_as(
                    &owner,
                    "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } setPasswordToken } }",
                    json!({ "i": { "email": email, "displayName": "D", "roleId": "DEVELOPER" } }),
                )
                .await;
            let p = &out["data"]["createUser"];
            app.gql(
                "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
                json!({ "i": { "token": p["setPasswordToken"], "password": "developer-password" } }),
            )
            .await;
            (
                p["user"]["id"].clone(),
                app.login(email, "developer-password").await.0,
            )
        }
    };
    let (_, alice) = mk_user("alice@acme.example").await;
    let (bob_id, bob) = mk_user("bob@acme.example").await;
    let team = app
        .gql_as(
            &owner,
            "mutation { createTeam(input: {name: \"ml\"}) { team { id } } }",
            json!({}),
        )
        .await["data"]["createTeam"]["team"]["id"]
        .clone();

    let private = wf_id(
        &create(
            &app,
            &alice,
            json!({ "name": "mine", "visibility": "PRIVATE", "definition": diamond() }),
        )
        .await,
    );
    let teamed = wf_id(&create(&app, &alice, json!({ "name": "ours", "visibility": "TEAM", "teamId": team, "definition": diamond() })).await);
    let shared = wf_id(
        &create(
            &app,
            &alice,
            json!({ "name": "all", "definition": diamond() }),
        )
        .await,
    );
    let no_team = create(
        &app,
        &alice,
        json!({ "name": "x", "visibility": "TEAM", "definition": diamond() }),
    )
    .await;
    assert_eq!(no_team["errors"][0]["extensions"]["field"], "teamId");

    let count = |token: String| {
        let app = &app;
        async move {
            app.gql_as(&token, "{ workflows { totalCount } }", json!({}))
                .await["data"]["workflows"]["totalCount"]
                .clone()
        }
    };
    assert_eq!(count(alice.clone()).await, 3);
    assert_eq!(
        count(bob.clone()).await,
        1,
        "bob sees only the TENANT workflow"
    );
    assert_eq!(
        count(owner.clone()).await,
        3,
        "user managers see everything"
    );
    for id in [&private, &teamed] {
        let out = app
            .gql_as(
                &bob,
                "query($id: ID!) { workflow(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(first_error_code(&out).as_deref(), Some("NOT_FOUND"));
        let out = app
            .gql_as(&bob, PUBLISH, json!({ "i": { "workflowId": id } }))
            .await;
        assert_eq!(first_error_code(&out).as_deref(), Some("NOT_FOUND"));
    }
    let out = app
        .gql_as(
            &bob,
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": shared }),
        )
        .await;
    assert_eq!(out["data"]["node"]["id"], shared);

    // Joining the team reveals the TEAM workflow.
    app.gql_as(
        &owner,
        "mutation($t: ID!, $u: ID!) { addTeamMember(input: {teamId: $t, userId: $u}) { team { id } } }",
        json!({ "t": team, "u": bob_id }),
    )
    .await;
    assert_eq!(count(bob.clone()).await, 2);
    let out = app
        .gql_as(
            &bob,
            "query($id: ID!) { workflow(id: $id) { name team { id } } }",
            json!({ "id": teamed }),
        )
        .await;
    assert_eq!(out["data"]["workflow"]["name"], "ours", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workflow_quota_and_tenant_isolation_hold() {
    let app = TestApp::spawn().await;
    let (tenant_id, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("other").await;
    let admin = app.admin_token().await;
    app.gql_as(
        &admin,
        "mutation($id: ID!) { updateTenantPlan(input: {tenantId: $id, plan: FREE, quotas: {maxWorkflows: 1}}) { tenant { id } } }",
        json!({ "id": tenant_id }),
    )
    .await;
    let id = wf_id(
        &create(
            &app,
            &owner,
            json!({ "name": "one", "definition": diamond() }),
        )
        .await,
    );
    let over = create(
        &app,
        &owner,
        json!({ "name": "two", "definition": diamond() }),
    )
    .await;
    assert_eq!(first_error_code(&over).as_deref(), Some("QUOTA_EXCEEDED"));
    assert_eq!(over["errors"][0]["extensions"]["quota"], "maxWorkflows");

    for (q, v) in [
        (
            "query($id: ID!) { workflow(id: $id) { id } }",
            json!({ "id": id }),
        ),
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": id }),
        ),
        (
            UPDATE,
            json!({ "i": { "workflowId": id, "name": "stolen" } }),
        ),
        (PUBLISH, json!({ "i": { "workflowId": id } })),
        (
            "mutation($id: ID!) { deleteWorkflow(input: {workflowId: $id}) { deletedWorkflowId } }",
            json!({ "id": id }),
        ),
    ] {
        let out = app.gql_as(&other, q, v).await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("NOT_FOUND"),
            "{q}: {out}"
        );
    }
    let mine = app
        .gql_as(
            &owner,
            "query($id: ID!) { workflow(id: $id) { name } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(mine["data"]["workflow"]["name"], "one");
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_reads_cost_the_same_statements_whatever_the_page_size() {
    // No workers: their claim polls share the counted pool and would land in the window.
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let team = app
        .gql_as(
            &owner,
            "mutation { createTeam(input: {name: \"ml\"}) { team { id } } }",
            json!({}),
        )
        .await["data"]["createTeam"]["team"]["id"]
        .clone();
    for i in 0..50 {
        let id = wf_id(
            &create(
                &app,
                &owner,
                json!({ "name": format!("wf{i:02}"), "visibility": "TEAM", "teamId": team, "definition": diamond() }),
            )
            .await,
        );
        app.gql_as(&owner, PUBLISH, json!({ "i": { "workflowId": id } }))
            .await;
    }
    let q = "query($n: Int) { workflows(first: $n) { edges { node {
        name owner { email } team { name } versions { version } } } } }";
    let statements = |n: i64| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let before = app
                .state
                .app
                .statements
                .load(std::sync::atomic::Ordering::SeqCst);
            let out = app.gql_as(&owner, q, json!({ "n": n })).await;
            assert!(out["errors"].is_null(), "{out}");
            let edges = out["data"]["workflows"]["edges"]
                .as_array()
                .expect("edges")
                .len();
            assert_eq!(edges as i64, n);
            assert_eq!(
                out["data"]["workflows"]["edges"][0]["node"]["versions"][0]["version"],
                1
            );
            app.state
                .app
                .statements
                .load(std::sync::atomic::Ordering::SeqCst)
                - before
        }
    };
    let small = statements(5).await;
    let large = statements(50).await;
    assert_eq!(small, large, "statements must not grow with the page size");
    assert!(large <= 40, "{large} statements for one request");
}
