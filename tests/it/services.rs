//! The service layer (#14): rules that hold whichever caller reaches them, over stores
//! that share the service's transaction; loaders that read the app's clock.

use serde_json::json;

use crate::executions::{published, start};
use crate::helpers::{OWNER_PASSWORD, TestApp};

/// Workflow statistics cover the last 30 days of the *app's* clock, not the host's: a
/// manual clock moved 31 days ahead leaves yesterday's execution out of them.
#[tokio::test(flavor = "multi_thread")]
async fn workflow_stats_cover_thirty_days_of_the_app_clock() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "stats",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "1" } } ] }),
    )
    .await;
    start(&app, &owner, json!({ "workflowId": wf })).await;
    const STATS: &str = "query($id: ID!) { workflow(id: $id) { stats { total queued } } }";
    let out = app.gql_as(&owner, STATS, json!({ "id": wf })).await;
    assert_eq!(out["data"]["workflow"]["stats"]["total"], 1, "{out}");
    assert_eq!(out["data"]["workflow"]["stats"]["queued"], 1, "{out}");

    app.clock.advance(chrono::Duration::days(31));
    // The old token expired with the move; a new sign-in runs on the moved clock too.
    let (token, _) = app.login("owner@acme.example", OWNER_PASSWORD).await;
    let out = app.gql_as(&token, STATS, json!({ "id": wf })).await;
    assert_eq!(
        out["data"]["workflow"]["stats"]["total"], 0,
        "an execution 31 days old is outside the 30-day window: {out}"
    );
}

/// A custom role is deleted or granted, never both: rounds of `deleteRole` racing
/// `updateUserRole` and `createApiKey` that grant the same role never leave a user or a
/// key holding a role that no longer exists. (The holders used to be counted outside the
/// delete's transaction, and the grant checked the role before its own.)
#[tokio::test(flavor = "multi_thread")]
async fn a_role_is_never_granted_and_deleted_at_once() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } } }",
            json!({ "i": { "email": "dev@acme.example", "displayName": "Dev", "roleId": "VIEWER" } }),
        )
        .await;
    let user = out["data"]["createUser"]["user"]["id"].clone();
    assert!(user.is_string(), "{out}");
    let mut collisions = 0;
    for round in 0..16 {
        let out = app
            .gql_as(
                &owner,
                "mutation($i: CreateRoleInput!) { createRole(input: $i) { role { id } } }",
                json!({ "i": { "name": format!("r{round}"), "permissions": ["workflows.read"] } }),
            )
            .await;
        let role = out["data"]["createRole"]["role"]["id"].clone();
        assert!(role.is_string(), "{out}");
        let (deleted, granted, keyed) = tokio::join!(
            app.gql_as(
                &owner,
                "mutation($i: DeleteRoleInput!) { deleteRole(input: $i) { deletedRoleId } }",
                json!({ "i": { "roleId": role } }),
            ),
            app.gql_as(
                &owner,
                "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id } } }",
                json!({ "i": { "userId": user, "roleId": role } }),
            ),
            app.gql_as(
                &owner,
                "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }",
                json!({ "i": { "name": format!("k{round}"), "roleId": role } }),
            ),
        );
        let ok = |v: &serde_json::Value| v["errors"].is_null();
        for v in [&deleted, &granted, &keyed] {
            if !ok(v) {
                let code = crate::helpers::first_error_code(v);
                assert!(
                    matches!(code.as_deref(), Some("CONFLICT" | "NOT_FOUND")),
                    "round {round}: a lost race is CONFLICT or NOT_FOUND: {v}"
                );
            }
        }
        if ok(&deleted) && !ok(&granted) || ok(&deleted) && !ok(&keyed) {
            collisions += 1;
        }
        assert!(
            !(ok(&deleted) && (ok(&granted) || ok(&keyed))),
            "round {round}: the role was deleted and granted at once:\n{deleted}\n{granted}\n{keyed}"
        );
    }
    // The rounds exercise both orders: some deletions won over a grant.
    eprintln!("{collisions} of 16 rounds had a deletion beat a grant");
}
