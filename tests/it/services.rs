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
