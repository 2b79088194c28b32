//! Rules that span several writes hold under concurrency, and every way in (API, CLI,
//! first start) applies the same rules and leaves the same audit record.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::cli::run;
use crate::helpers::{TestApp, TestDb, first_error_code};
use agentplane::db::schema::{audit_log, tenants};

const CREATE_WORKFLOW: &str =
    "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }";
const CREATE_USER: &str =
    "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } } }";

fn codes(outs: &[Value]) -> (usize, usize) {
    let ok = outs.iter().filter(|o| o["errors"].is_null()).count();
    let quota = outs
        .iter()
        .filter(|o| first_error_code(o).as_deref() == Some("QUOTA_EXCEEDED"))
        .count();
    (ok, quota)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creations_cannot_pass_a_quota() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (tenant, owner) = app.tenant_with_owner("quota").await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": tenant, "plan": "CUSTOM",
                           "quotas": { "maxWorkflows": 3, "maxUsers": 3 } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    for i in 0..2 {
        let out = app
            .gql_as(
                &owner,
                CREATE_WORKFLOW,
                json!({ "i": { "name": format!("w{i}"), "definition": { "steps": [
                    { "id": "t", "kind": "transform", "config": { "template": "1" } } ] } } }),
            )
            .await;
        assert!(out["errors"].is_null(), "{out}");
    }
    // One place left, eight asking at once: exactly one gets it.
    let tries = (0..8).map(|i| {
        app.gql_as(
            &owner,
            CREATE_WORKFLOW,
            json!({ "i": { "name": format!("race{i}"), "definition": { "steps": [
                { "id": "t", "kind": "transform", "config": { "template": "1" } } ] } } }),
        )
    });
    let outs = futures_util::future::join_all(tries).await;
    assert_eq!(codes(&outs), (1, 7), "{outs:?}");

    // The owner is user 1 of 3; one more, then eight at once for the last place.
    let out = app
        .gql_as(
            &owner,
            CREATE_USER,
            json!({ "i": { "email": "u1@quota.test", "displayName": "U", "roleId": "VIEWER" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let tries = (0..8).map(|i| {
        app.gql_as(
            &owner,
            CREATE_USER,
            json!({ "i": { "email": format!("race{i}@quota.test"), "displayName": "R", "roleId": "VIEWER" } }),
        )
    });
    let outs = futures_util::future::join_all(tries).await;
    assert_eq!(codes(&outs), (1, 7), "{outs:?}");
    let users = app
        .gql_as(&owner, "{ users(first: 50) { totalCount } }", json!({}))
        .await;
    assert_eq!(users["data"]["users"]["totalCount"], 3, "{users}");
}

/// The audit actions of the tenant with `slug`, oldest first.
async fn actions(db_url: &str, slug: &str) -> Vec<String> {
    let url = agentplane::config::DatabaseUrl::parse(db_url).expect("url");
    let db = agentplane::db::DbPool::connect(&url).await.expect("pool");
    let slug = slug.to_owned();
    let res: Result<Vec<String>, agentplane::error::AppError> = async {
        Ok(agentplane::db_run!(&db, |conn| {
            let id: String = tenants::table
                .filter(tenants::slug.eq(&slug))
                .select(tenants::id)
                .first(conn)
                .await?;
            audit_log::table
                .filter(audit_log::tenant_id.eq(&id))
                .order(audit_log::seq.asc())
                .select(audit_log::action)
                .load(conn)
                .await?
        }))
    }
    .await;
    res.expect("actions")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_and_first_start_follow_the_api_rules_and_are_recorded() {
    let db = TestDb::create().await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        (
            "AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD",
            crate::helpers::ADMIN_PASSWORD,
        ),
    ];
    // A slug the API refuses is refused here too.
    let out = run(
        &[
            "admin",
            "create-tenant",
            "--slug",
            "Bad Slug!",
            "--name",
            "Bad",
            "--owner-email",
            "o@bad.test",
        ],
        &env,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("slug") && stderr.contains("a-z"),
        "{stderr}"
    );

    let out = run(
        &[
            "admin",
            "create-tenant",
            "--slug",
            "good-co",
            "--name",
            "Good",
            "--owner-email",
            "o@good.test",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "admin",
            "create-user",
            "--tenant",
            "good-co",
            "--email",
            "u@good.test",
            "--name",
            "U",
            "--role",
            "VIEWER",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        actions(&db.url, "good-co").await,
        ["tenant.created", "user.created"]
    );

    // First start records the system tenant and its admin the same way.
    let app = TestApp::spawn().await;
    let system = actions(&app.db.url, "system").await;
    assert_eq!(
        <[String]>::first(&system).map(String::as_str),
        Some("tenant.created"),
        "{system:?}"
    );
    let v = app
        .gql_as(
            &app.admin_token().await,
            "{ verifyAuditChain { intact } }",
            json!({}),
        )
        .await;
    assert_eq!(v["data"]["verifyAuditChain"]["intact"], true, "{v}");
}
