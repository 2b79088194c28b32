//! Stored enums are typed: a value the code does not know is an error, never a guess.

use diesel_async::RunQueryDsl as _;
use serde_json::json;

use crate::executions::{published, start};
use crate::helpers::{TestApp, first_error_code};

async fn run_sql(app: &TestApp, sql: &str) {
    let db = &app.state.app.db;
    let res: Result<(), agentplane::error::AppError> = async {
        agentplane::db_run!(db, |conn| {
            diesel::sql_query(sql).execute(conn).await?;
        });
        Ok(())
    }
    .await;
    res.expect("statement runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_stored_status_is_an_error_not_failed() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "wf",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "1" } } ] }),
    )
    .await;
    let exec = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = exec["execution"]["id"].as_str().expect("id").to_owned();
    let query = "query($id: ID!) { execution(id: $id) { status } }";
    let before = app.gql_as(&owner, query, json!({ "id": id })).await;
    assert_eq!(before["data"]["execution"]["status"], "QUEUED", "{before}");

    // A value written by a newer version (or by hand) that this one does not know.
    run_sql(&app, "UPDATE executions SET status = 'PAUSED_BY_OPERATOR'").await;
    let after = app.gql_as(&owner, query, json!({ "id": id })).await;
    assert_eq!(
        first_error_code(&after).as_deref(),
        Some("INTERNAL"),
        "{after}"
    );
    assert!(
        after["data"]["execution"].is_null(),
        "an unknown status must not be reported as anything: {after}"
    );

    // The same for a workflow's visibility: no guess that could widen who sees it.
    run_sql(&app, "UPDATE workflows SET visibility = 'EVERYONE'").await;
    let list = app
        .gql_as(
            &owner,
            "{ workflows(first: 5) { edges { node { id visibility } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        first_error_code(&list).as_deref(),
        Some("INTERNAL"),
        "{list}"
    );
}
