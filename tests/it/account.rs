//! Account lifecycle (#19 item 7): self-service password reset and e-mail change with
//! one-time tokens delivered by the notifier (a signed webhook here, a real loopback
//! receiver), answers that never tell whether an account exists, sessions signed out by
//! a reset, and `lastActiveAt`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A webhook receiver: (headers, body) of every POST.
pub type Mailbox = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// The secret the test server signs webhook messages with.
pub const WEBHOOK_SECRET: &str = "0123456789abcdef0123456789abcdef-test";

/// Starts a webhook receiver on loopback; returns its URL and what it received.
pub async fn mailbox() -> (String, Mailbox) {
    let received: Mailbox = Arc::default();
    let r = received.clone();
    let (url, _) = crate::executions::loopback(move |_, headers, body| {
        r.lock().expect("lock").push((headers, body));
        (204, String::new())
    })
    .await;
    (url, received)
}

/// Server settings that send account messages to `url`.
pub fn webhook_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AGENTPLANE_NOTIFIER", "webhook".into()),
        ("AGENTPLANE_NOTIFIER_WEBHOOK_URL", url.to_owned()),
        ("AGENTPLANE_NOTIFIER_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
    ]
}

/// Waits for the `n`th (0-based) message and checks its signature; returns its body.
pub async fn message(mailbox: &Mailbox, n: usize) -> Value {
    for _ in 0..100 {
        let got = mailbox.lock().expect("lock").get(n).cloned();
        if let Some((headers, body)) = got {
            let ts: i64 = headers["x-agentplane-timestamp"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("timestamp");
            assert_eq!(
                headers["x-agentplane-signature"].to_str().expect("ascii"),
                agentplane::auth::notify::signature(WEBHOOK_SECRET.as_bytes(), ts, body.as_bytes()),
                "the message is signed"
            );
            return serde_json::from_str(&body).expect("json");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no message {n} arrived");
}

const RESET: &str =
    "mutation($i: RequestPasswordResetInput!) { requestPasswordReset(input: $i) { ok } }";
const SET: &str = "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }";
const CHANGE: &str =
    "mutation($i: RequestEmailChangeInput!) { requestEmailChange(input: $i) { ok } }";
const CONFIRM: &str =
    "mutation($i: ConfirmEmailChangeInput!) { confirmEmailChange(input: $i) { email } }";

async fn spawn_with_mailbox() -> (TestApp, Mailbox) {
    let (url, mailbox) = mailbox().await;
    let env = webhook_env(&url);
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("AGENTPLANE_WORKERS", "0"));
    (TestApp::spawn_with(&extra).await, mailbox)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_is_sent_once_spent_once_and_signs_every_session_out() {
    let (app, mailbox) = spawn_with_mailbox().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let email = "owner@acme.example";

    // Known and unknown addresses get the same answer; only the known one gets mail.
    let known = app.gql(RESET, json!({ "i": { "email": email } })).await;
    let unknown = app
        .gql(RESET, json!({ "i": { "email": "nobody@acme.example" } }))
        .await;
    assert_eq!(known["data"], unknown["data"], "{known} / {unknown}");
    assert_eq!(known["data"]["requestPasswordReset"]["ok"], true, "{known}");
    let msg = message(&mailbox, 0).await;
    assert_eq!(msg["type"], "password_reset");
    assert_eq!(msg["email"], email);
    assert_eq!(msg["tenant"], "acme");
    let token = msg["token"].as_str().expect("token").to_owned();
    // Asking again within the minute sends nothing more (the answer is the same).
    let again = app.gql(RESET, json!({ "i": { "email": email } })).await;
    assert_eq!(again["data"]["requestPasswordReset"]["ok"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mailbox.lock().expect("lock").len(),
        1,
        "one message a minute"
    );

    // The token sets a new password once, and every session of the user ends.
    let set = app
        .gql(
            SET,
            json!({ "i": { "token": token, "password": "a-new-password-42" } }),
        )
        .await;
    assert_eq!(set["data"]["setPassword"]["ok"], true, "{set}");
    let old = app.gql_as(&owner, "{ me { id } }", json!({})).await;
    assert_eq!(
        first_error_code(&old).as_deref(),
        Some("UNAUTHENTICATED"),
        "{old}"
    );
    let reused = app
        .gql(
            SET,
            json!({ "i": { "token": token, "password": "another-password-42" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&reused).as_deref(),
        Some("UNAUTHENTICATED"),
        "{reused}"
    );
    let (fresh, _) = app.login(email, "a-new-password-42").await;

    // lastActiveAt follows use of the credentials (written in the background).
    let mut seen = Value::Null;
    for _ in 0..50 {
        let me = app
            .gql_as(&fresh, "{ me { lastActiveAt lastLoginAt } }", json!({}))
            .await;
        seen = me["data"]["me"]["lastActiveAt"].clone();
        if seen.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.is_string(), "lastActiveAt was recorded: {seen}");

    // Something that is not an address is an input error (it says nothing about accounts).
    let bad = app
        .gql(RESET, json!({ "i": { "email": "not an address" } }))
        .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_is_confirmed_by_the_new_address() {
    let (app, mailbox) = spawn_with_mailbox().await;
    let (_, owner) = app.tenant_with_owner("acme").await;

    let wrong = app
        .gql_as(
            &owner,
            CHANGE,
            json!({ "i": { "newEmail": "boss@acme.example", "currentPassword": "not-the-password" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&wrong).as_deref(),
        Some("BAD_USER_INPUT"),
        "{wrong}"
    );
    assert_eq!(wrong["errors"][0]["extensions"]["field"], "currentPassword");

    let asked = app
        .gql_as(
            &owner,
            CHANGE,
            json!({ "i": { "newEmail": "Boss@Acme.example", "currentPassword": OWNER_PASSWORD } }),
        )
        .await;
    assert_eq!(asked["data"]["requestEmailChange"]["ok"], true, "{asked}");
    let msg = message(&mailbox, 0).await;
    assert_eq!(msg["type"], "email_change");
    assert_eq!(msg["email"], "boss@acme.example", "sent to the new address");
    // Once a minute.
    let soon = app
        .gql_as(
            &owner,
            CHANGE,
            json!({ "i": { "newEmail": "other@acme.example", "currentPassword": OWNER_PASSWORD } }),
        )
        .await;
    assert_eq!(
        first_error_code(&soon).as_deref(),
        Some("RATE_LIMITED"),
        "{soon}"
    );

    // Confirmed (signed out is fine): the new address signs in, the old one does not.
    let done = app
        .gql(CONFIRM, json!({ "i": { "token": msg["token"] } }))
        .await;
    assert_eq!(
        done["data"]["confirmEmailChange"]["email"], "boss@acme.example",
        "{done}"
    );
    let _ = app.login("boss@acme.example", OWNER_PASSWORD).await;
    let old = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "owner@acme.example", "password": OWNER_PASSWORD } }),
        )
        .await;
    assert!(old["errors"].is_array(), "{old}");
    // Spent.
    let twice = app
        .gql(CONFIRM, json!({ "i": { "token": msg["token"] } }))
        .await;
    assert_eq!(
        first_error_code(&twice).as_deref(),
        Some("UNAUTHENTICATED"),
        "{twice}"
    );

    // An address another account took meanwhile: CONFLICT, nothing changed.
    app.clock.advance(chrono::Duration::seconds(61));
    let (boss, _) = app.login("boss@acme.example", OWNER_PASSWORD).await;
    let asked = app
        .gql_as(
            &boss,
            CHANGE,
            json!({ "i": { "newEmail": "taken@acme.example", "currentPassword": OWNER_PASSWORD } }),
        )
        .await;
    assert_eq!(asked["data"]["requestEmailChange"]["ok"], true, "{asked}");
    let msg = message(&mailbox, 1).await;
    let _ = user_with_role(&app, &boss, "taken@acme.example", json!("VIEWER")).await;
    let clash = app
        .gql(CONFIRM, json!({ "i": { "token": msg["token"] } }))
        .await;
    assert_eq!(
        first_error_code(&clash).as_deref(),
        Some("CONFLICT"),
        "{clash}"
    );
    let me = app.gql_as(&boss, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "boss@acme.example", "{me}");
}

/// Rows of `tenant` (raw id) in `table`, read behind the API.
async fn rows(app: &TestApp, table: &str, tenant: &str) -> i64 {
    let q = format!("SELECT COUNT(*) AS n FROM {table} WHERE tenant_id = $1");
    count_behind_api(app, &q, tenant).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_tenant_is_exported_first_then_removed_and_recorded_in_the_system_chain() {
    // As a role that does not own the tables (PostgreSQL): row-level security in force,
    // audit records deletable only through the guarded function.
    let app = TestApp::spawn_as_app_role_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;
    let raw = crate::audit_coverage::uuid_of(&acme);
    // Data in many tables: workflows and versions, an execution, a team, a key, a
    // trusted document, sessions; and the other tenant's workflow.
    let wf = crate::executions::published(
        &app,
        &owner,
        "one",
        json!({ "steps": [ { "id": "a", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    let _ = crate::executions::published(
        &app,
        &other,
        "theirs",
        json!({ "steps": [ { "id": "a", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    let started = app
        .gql_as(
            &owner,
            "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
            json!({ "i": { "workflowId": wf } }),
        )
        .await;
    let exec = started["data"]["startExecution"]["execution"]["id"].clone();
    for (q, v) in [
        (
            "mutation($i: CreateTeamInput!) { createTeam(input: $i) { team { id } } }",
            json!({ "i": { "name": "ml" } }),
        ),
        (
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "svc", "roleId": "VIEWER" } }),
        ),
        (
            "mutation($i: RegisterTrustedDocumentInput!) { registerTrustedDocument(input: $i) { created } }",
            json!({ "i": { "document": "{ me { id } }" } }),
        ),
    ] {
        let out = app.gql_as(&owner, q, v).await;
        assert!(out["errors"].is_null(), "{out}");
    }
    const DELETE: &str = "mutation($i: DeleteTenantInput!) { deleteTenant(input: $i) { deletedTenantId exportPath exportSha256 exportAuditRecords rowsDeleted } }";
    let delete = |slug: &str| json!({ "i": { "tenantId": acme, "confirmSlug": slug } });

    // Refused while active, with the wrong slug, while an execution is queued, and for
    // the system tenant; only platform admins may ask.
    let active = app.gql_as(&admin, DELETE, delete("acme")).await;
    assert_eq!(
        first_error_code(&active).as_deref(),
        Some("CONFLICT"),
        "{active}"
    );
    assert_eq!(
        active["errors"][0]["extensions"]["reason"],
        "TENANT_NOT_SUSPENDED"
    );
    let mine = app.gql_as(&owner, DELETE, delete("acme")).await;
    assert_eq!(
        first_error_code(&mine).as_deref(),
        Some("FORBIDDEN"),
        "{mine}"
    );
    let out = app
        .gql_as(
            &admin,
            "mutation($i: SuspendTenantInput!) { suspendTenant(input: $i) { tenant { status } } }",
            json!({ "i": { "tenantId": acme, "reason": "closing the account" } }),
        )
        .await;
    assert_eq!(
        out["data"]["suspendTenant"]["tenant"]["status"], "SUSPENDED",
        "{out}"
    );
    let wrong = app.gql_as(&admin, DELETE, delete("acm")).await;
    assert_eq!(
        wrong["errors"][0]["extensions"]["field"], "confirmSlug",
        "{wrong}"
    );
    let busy = app.gql_as(&admin, DELETE, delete("acme")).await;
    assert_eq!(
        busy["errors"][0]["extensions"]["reason"], "EXECUTIONS_ACTIVE",
        "{busy}"
    );
    // Cancel it behind the API (the tenant's own users are refused while suspended).
    {
        let id = crate::audit_coverage::uuid_of(exec.as_str().expect("id"));
        let db = &app.state.app.db;
        let q = if TestDb::is_postgres() {
            "UPDATE executions SET status = 'CANCELLED' WHERE id = $1"
        } else {
            "UPDATE executions SET status = 'CANCELLED' WHERE id = ?"
        };
        let r: Result<usize, agentplane::error::AppError> = async {
            Ok(agentplane::db_run!(db, |conn| {
                diesel_async::RunQueryDsl::execute(
                    diesel::sql_query(q).bind::<diesel::sql_types::Text, _>(&id),
                    conn,
                )
                .await?
            }))
        }
        .await;
        assert_eq!(r.expect("cancel"), 1);
    }
    let records_before = rows(&app, "audit_log", &raw).await;
    assert!(records_before > 5);

    let done = app.gql_as(&admin, DELETE, delete("acme")).await;
    let d = &done["data"]["deleteTenant"];
    assert!(d.is_object(), "{done}");
    assert_eq!(d["exportAuditRecords"], records_before, "{done}");
    assert!(d["rowsDeleted"].as_u64().is_some_and(|n| n > 20), "{done}");

    // The export: the tenant, then its whole chain, hashes included; its digest as said.
    let path = d["exportPath"].as_str().expect("path");
    assert!(
        path.starts_with(&app.exports.path().display().to_string()),
        "{path}"
    );
    let bytes = std::fs::read(path).expect("export file");
    use sha2::Digest as _;
    assert_eq!(
        format!("{:x}", sha2::Sha256::digest(&bytes)),
        d["exportSha256"]
    );
    let text = String::from_utf8(bytes).expect("utf8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines[0]["type"], "tenant");
    assert_eq!(lines[0]["slug"], "acme");
    assert_eq!(i64::try_from(lines.len()).expect("len") - 1, records_before);
    assert!(
        lines[1..].iter().all(|r| r["hash"].is_string()),
        "chain hashes kept"
    );

    // Gone from every table; the other tenant untouched; recorded in the system chain.
    for table in [
        "audit_log",
        "users",
        "workflows",
        "executions",
        "api_keys",
        "teams",
        "trusted_documents",
        "sessions",
    ] {
        assert_eq!(rows(&app, table, &raw).await, 0, "{table}");
    }
    let theirs = app
        .gql_as(&other, "{ workflows { totalCount } }", json!({}))
        .await;
    assert_eq!(theirs["data"]["workflows"]["totalCount"], 1, "{theirs}");
    let gone = app
        .gql_as(
            &admin,
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": acme }),
        )
        .await;
    assert_eq!(
        first_error_code(&gone).as_deref(),
        Some("NOT_FOUND"),
        "{gone}"
    );
    let login = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "owner@acme.example", "password": OWNER_PASSWORD } }),
        )
        .await;
    assert_eq!(
        first_error_code(&login).as_deref(),
        Some("UNAUTHENTICATED"),
        "{login}"
    );
    let trail = app
        .gql_as(
            &admin,
            "{ auditLog(first: 5) { edges { node { action severity } } } }",
            json!({}),
        )
        .await;
    let deleted = trail["data"]["auditLog"]["edges"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["node"]["action"] == "tenant.deleted"))
        .unwrap_or_else(|| panic!("{trail}"));
    assert_eq!(deleted["node"]["severity"], "CRITICAL", "{trail}");
    // Again: nothing left to delete.
    let again = app.gql_as(&admin, DELETE, delete("acme")).await;
    assert_eq!(
        first_error_code(&again).as_deref(),
        Some("NOT_FOUND"),
        "{again}"
    );
}
