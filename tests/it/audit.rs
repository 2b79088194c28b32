//! Audit trail: records written with their changes, security events, filters and
//! pagination, and tamper evidence (an edited and a deleted record are each found).

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::executions::published;
use crate::helpers::{OWNER_PASSWORD, TestApp, first_error_code};

const LOG: &str = "query($f: AuditFilter, $n: Int, $a: String) { auditLog(filter: $f, first: $n, after: $a) { totalCount pageInfo { hasNextPage endCursor } edges { node { sequence actorType actorId action resourceType resourceId changes outcome reason severity ip requestId hash prevHash } } } }";
pub(crate) const VERIFY: &str =
    "{ verifyAuditChain { intact checked firstBrokenSequence firstBrokenId problem } }";

async fn log(app: &TestApp, token: &str, filter: Value) -> Vec<Value> {
    let out = app
        .gql_as(token, LOG, json!({ "f": filter, "n": 100 }))
        .await;
    out["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

fn actions(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Runs SQL behind the server's back, as the database owner, with the append-only
/// trigger out of the way (what an attacker with database access could do).
async fn tamper(app: &TestApp, sql: &str) {
    crate::audit_forgery::as_owner_without_triggers(app, vec![sql.to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_recorded_with_their_diff_and_a_rolled_back_change_is_not() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "audited",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ]}),
    )
    .await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: UpdateWorkflowInput!) { updateWorkflow(input: $i) { workflow { name } } }",
            json!({ "i": { "workflowId": wf, "name": "renamed" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    // Two concurrent publishes of version 2: one wins, the loser's record rolls back too.
    let publish =
        "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }";
    let (a, b) = tokio::join!(
        app.gql_as(&owner, publish, json!({ "i": { "workflowId": wf } })),
        app.gql_as(&owner, publish, json!({ "i": { "workflowId": wf } })),
    );
    let wins = [&a, &b].iter().filter(|r| r["errors"].is_null()).count();
    let records = log(&app, &owner, json!({ "actionPrefix": "workflow." })).await;
    let published_count = actions(&records)
        .iter()
        .filter(|a| *a == "workflow.published")
        .count();
    assert_eq!(published_count, 1 + wins, "{records:?}");
    assert_eq!(
        actions(&records)[records.len() - 2..],
        ["workflow.published", "workflow.created"],
        "newest first"
    );
    let update = records
        .iter()
        .find(|r| r["action"] == "workflow.updated")
        .expect("update recorded");
    assert_eq!(
        update["changes"]["name"],
        json!({ "before": "audited", "after": "renamed" })
    );
    assert_eq!(update["actorType"], "USER");
    assert_eq!(update["outcome"], "SUCCESS");
    assert_eq!(update["ip"], "127.0.0.1");
    assert!(update["requestId"].is_string());
    assert_eq!(update["resourceType"], "workflow");
    // One person, one pseudonym.
    assert!(
        records
            .iter()
            .all(|r| r["actorId"] == records[0]["actorId"])
    );
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    assert_eq!(out["data"]["verifyAuditChain"]["intact"], true, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_and_denied_requests_are_recorded_and_filterable() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("other").await;
    for _ in 0..2 {
        let out = app
            .gql(
                "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                json!({ "i": { "email": "owner@acme.example", "password": "not-the-password" } }),
            )
            .await;
        assert_eq!(first_error_code(&out).as_deref(), Some("UNAUTHENTICATED"));
    }
    // A tenant owner may not create tenants.
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } } }",
            json!({ "i": { "slug": "nope", "name": "nope", "plan": "FREE",
                           "owner": { "email": "x@nope.example", "displayName": "X" } } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("FORBIDDEN"));

    let failed = log(
        &app,
        &owner,
        json!({ "actionPrefix": "auth.", "outcome": "FAILURE" }),
    )
    .await;
    assert_eq!(actions(&failed), ["auth.login_failed", "auth.login_failed"]);
    assert_eq!(failed[0]["severity"], "WARNING");
    assert_eq!(failed[0]["actorType"], "ANONYMOUS");
    let denied = log(&app, &owner, json!({ "actionPrefix": "access." })).await;
    assert_eq!(actions(&denied), ["access.denied"]);
    assert_eq!(denied[0]["resourceId"], "createTenant");
    assert_eq!(
        denied[0]["changes"],
        json!({ "permission": "platform.tenants" })
    );
    let warnings = log(&app, &owner, json!({ "severity": "WARNING" })).await;
    assert_eq!(warnings.len(), 3);

    // Pages: newest first, no record twice.
    let page = |after: Option<String>| {
        let app = &app;
        let owner = owner.clone();
        async move {
            app.gql_as(
                &owner,
                LOG,
                json!({ "f": { "severity": "WARNING" }, "n": 2, "a": after }),
            )
            .await
        }
    };
    let p1 = page(None).await;
    let c = &p1["data"]["auditLog"];
    assert_eq!(c["totalCount"], 3);
    assert_eq!(c["pageInfo"]["hasNextPage"], true);
    let p2 = page(c["pageInfo"]["endCursor"].as_str().map(str::to_owned)).await;
    let seqs: Vec<i64> = [&p1, &p2]
        .iter()
        .flat_map(|p| {
            p["data"]["auditLog"]["edges"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| e["node"]["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");

    // The other tenant's trail has none of it.
    let theirs = log(&app, &other, json!({ "actionPrefix": "auth.login_failed" })).await;
    assert!(theirs.is_empty(), "{theirs:?}");
    // And the right password still works after two failures.
    app.login("owner@acme.example", OWNER_PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_record_and_a_deleted_record_are_each_found() {
    let app = TestApp::spawn().await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    for i in 0..4 {
        published(
            &app,
            &owner,
            &format!("wf{i}"),
            json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ]}),
        )
        .await;
    }
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    let v = &out["data"]["verifyAuditChain"];
    assert_eq!(v["intact"], true, "{out}");
    // The tenant's creation, the owner's password and sign-in, then two per workflow.
    assert_eq!(v["checked"], 11, "{out}");
    let tenant_uuid = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&tenant)
            .expect("b64");
        String::from_utf8(raw).expect("utf8")["Tenant:".len()..].to_owned()
    };
    // The application's own path cannot edit records (PostgreSQL trigger; SQLite trigger).
    let db = &app.state.app.db;
    let refused: Result<usize, agentplane::error::AppError> = async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel::sql_query(format!(
                "UPDATE audit_log SET action = 'x' WHERE tenant_id = '{tenant_uuid}'"
            ))
            .execute(conn)
            .await?
        }))
    }
    .await;
    assert!(refused.is_err(), "audit rows must not be updatable");

    tamper(
        &app,
        &format!("UPDATE audit_log SET action = 'workflow.renamed' WHERE tenant_id = '{tenant_uuid}' AND seq = 5"),
    )
    .await;
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    let v = &out["data"]["verifyAuditChain"];
    assert_eq!(v["intact"], false, "{out}");
    assert_eq!(v["firstBrokenSequence"], 5, "{out}");
    assert!(v["firstBrokenId"].is_string());
    assert!(
        v["problem"].as_str().unwrap_or("").contains("edited"),
        "{out}"
    );

    // Put it back, then delete one.
    tamper(
        &app,
        &format!("UPDATE audit_log SET action = 'workflow.published' WHERE tenant_id = '{tenant_uuid}' AND seq = 5"),
    )
    .await;
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    assert_eq!(out["data"]["verifyAuditChain"]["intact"], true, "{out}");
    tamper(
        &app,
        &format!("DELETE FROM audit_log WHERE tenant_id = '{tenant_uuid}' AND seq = 6"),
    )
    .await;
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    let v = &out["data"]["verifyAuditChain"];
    assert_eq!(v["intact"], false, "{out}");
    assert_eq!(v["firstBrokenSequence"], 6, "{out}");
    assert!(
        v["problem"].as_str().unwrap_or("").contains("missing"),
        "{out}"
    );
    // Deleting the newest record is found through the chain's head.
    tamper(
        &app,
        &format!("DELETE FROM audit_log WHERE tenant_id = '{tenant_uuid}' AND seq >= 6"),
    )
    .await;
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    let v = &out["data"]["verifyAuditChain"];
    assert_eq!(v["intact"], false, "{out}");
    assert_eq!(v["firstBrokenSequence"], 6, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_secrets_and_executions_are_recorded_without_secret_values() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }",
            json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
        )
        .await;
    let key_id = out["data"]["createApiKey"]["apiKey"]["id"].clone();
    let key_secret = out["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let out = app
        .gql_as(
            &owner,
            "mutation($i: RevokeApiKeyInput!) { revokeApiKey(input: $i) { apiKey { id } } }",
            json!({ "i": { "apiKeyId": key_id } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let out = app
        .gql_as(
            &owner,
            "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name } } }",
            json!({ "i": { "name": "OPENAI_KEY", "value": "sk-very-secret-value" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let out = app
        .gql_as(
            &owner,
            "mutation($i: DeleteSecretInput!) { deleteSecret(input: $i) { deletedName } }",
            json!({ "i": { "name": "OPENAI_KEY" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let wf = published(
        &app,
        &owner,
        "run",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ]}),
    )
    .await;
    let started = crate::executions::start(&app, &owner, json!({ "workflowId": wf })).await;
    let exec = started["execution"]["id"].clone();
    let out = app
        .gql_as(
            &owner,
            "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { status } } }",
            json!({ "i": { "executionId": exec } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");

    let records = log(&app, &owner, json!({})).await;
    let mut got = actions(&records);
    got.reverse();
    assert_eq!(
        got,
        [
            "tenant.created",
            "user.password_set",
            "auth.login",
            "apikey.created",
            "apikey.revoked",
            "secret.set",
            "secret.deleted",
            "workflow.created",
            "workflow.published",
            "execution.started",
            "execution.cancelled",
        ]
    );
    // No secret value or key secret anywhere in the trail.
    let all = serde_json::to_string(&records).expect("json");
    assert!(!all.contains("sk-very-secret-value"));
    assert!(!all.contains(&key_secret));
    let out = app.gql_as(&owner, VERIFY, json!({})).await;
    assert_eq!(out["data"]["verifyAuditChain"]["intact"], true, "{out}");
    assert_eq!(out["data"]["verifyAuditChain"]["checked"], 11, "{out}");
}

/// One ID format on the surface: audit records and triggers carry global IDs beside the
/// stored ones, filters and ID arguments take either form, and a malformed ID says what
/// an ID looks like.
#[tokio::test(flavor = "multi_thread")]
async fn records_and_triggers_show_global_ids_and_arguments_take_either_form() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("ids").await;
    let wf = crate::executions::published(
        &app,
        &owner,
        "ids",
        json!({ "steps": [{ "id": "a", "kind": "delay", "config": { "ms": 1 } }] }),
    )
    .await;
    let started = crate::executions::start(&app, &owner, json!({ "workflowId": wf })).await;
    let exec = started["execution"]["id"].as_str().expect("id").to_owned();

    // The record of the creation names the workflow both ways.
    let q = "query($f: AuditFilter) { auditLog(filter: $f) { totalCount edges { node { action resourceId resourceGlobalId } } } }";
    let by_global = app
        .gql_as(
            &owner,
            q,
            json!({ "f": { "resourceId": wf, "actionPrefix": "workflow.created" } }),
        )
        .await;
    assert_eq!(
        by_global["data"]["auditLog"]["totalCount"], 1,
        "{by_global}"
    );
    let node = &by_global["data"]["auditLog"]["edges"][0]["node"];
    assert_eq!(node["resourceGlobalId"], wf.as_str(), "{by_global}");
    let raw = node["resourceId"].as_str().expect("raw id").to_owned();
    assert!(uuid::Uuid::parse_str(&raw).is_ok(), "{raw}");
    let by_raw = app
        .gql_as(
            &owner,
            q,
            json!({ "f": { "resourceId": raw, "actionPrefix": "workflow.created" } }),
        )
        .await;
    assert_eq!(by_raw["data"]["auditLog"]["totalCount"], 1, "{by_raw}");

    // The raw id works wherever the global one does.
    let out = app
        .gql_as(
            &owner,
            "query($id: ID!) { workflow(id: $id) { id } }",
            json!({ "id": raw }),
        )
        .await;
    assert_eq!(out["data"]["workflow"]["id"], wf.as_str(), "{out}");

    // The trigger's global ID is the starter's.
    let me = app.gql_as(&owner, "{ me { id } }", json!({})).await;
    let e = app
        .gql_as(
            &owner,
            "query($id: ID!) { execution(id: $id) { trigger triggerId } }",
            json!({ "id": exec }),
        )
        .await;
    assert_eq!(
        e["data"]["execution"]["triggerId"], me["data"]["me"]["id"],
        "{e}"
    );
    assert!(
        e["data"]["execution"]["trigger"]
            .as_str()
            .is_some_and(|t| t.starts_with("user:")),
        "{e}"
    );

    // A malformed ID says what is expected.
    let bad = app
        .gql_as(
            &owner,
            "query($id: ID!) { workflow(id: $id) { id } }",
            json!({ "id": "wf-123" }),
        )
        .await;
    assert_eq!(
        crate::helpers::first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT")
    );
    let message = bad["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not a valid workflow ID") && message.contains("V29ya2Zsb3c6"),
        "{bad}"
    );

    // Another tenant's object stays invisible in either form.
    let (_, other) = app.tenant_with_owner("ids-other").await;
    for id in [wf.as_str(), raw.as_str()] {
        let out = app
            .gql_as(
                &other,
                "query($id: ID!) { workflow(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(
            crate::helpers::first_error_code(&out).as_deref(),
            Some("NOT_FOUND"),
            "{out}"
        );
    }
}
