//! Tenant isolation with PostgreSQL row-level security as a second wall.

use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::helpers::{TestApp, TestDb, first_error_code};

/// The whole identity flow works when the server runs as a role that does not own the
/// tables (RLS in force on PostgreSQL), and tenants stay apart.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_works_under_row_level_security() {
    let app = TestApp::spawn_as_app_role().await;
    let (_, a) = app.tenant_with_owner("alpha").await;
    let (_, b) = app.tenant_with_owner("bravo").await;
    let team = app
        .gql_as(
            &a,
            "mutation { createTeam(input: {name: \"t\"}) { team { id } } }",
            json!({}),
        )
        .await;
    let team_id = team["data"]["createTeam"]["team"]["id"].clone();
    assert!(team_id.is_string(), "{team}");
    let out = app
        .gql_as(
            &b,
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": team_id }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("NOT_FOUND"));
    let users = app.gql_as(&a, "{ users { totalCount } }", json!({})).await;
    assert_eq!(users["data"]["users"]["totalCount"], 1, "{users}");
    let key = app
        .gql_as(
            &a,
            "mutation { createApiKey(input: {name: \"k\", roleId: \"VIEWER\"}) { secret } }",
            json!({}),
        )
        .await;
    assert!(key["data"]["createApiKey"]["secret"].is_string(), "{key}");
}

/// The policy itself: with the tenant setting in force, another tenant's rows are
/// invisible and cannot be written, even by a query that forgets its own filter.
#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_hides_and_refuses_other_tenants_rows() {
    if !TestDb::is_postgres() {
        // SQLite has no RLS; the application filter is proven by the isolation tests.
        assert!(
            agentplane::db::migrate::embedded_versions(agentplane::db::Backend::Sqlite)
                .expect("versions")
                .iter()
                .any(|v| v.ends_with("000003"))
        );
        return;
    }
    let app = TestApp::spawn_as_app_role().await;
    app.tenant_with_owner("alpha").await;
    app.tenant_with_owner("bravo").await;
    let agentplane::db::DbPool::Postgres(pool) = &app.state.app.db else {
        panic!("postgres pool");
    };
    let mut conn = pool.get().await.expect("conn");
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let alpha: Vec<Row> = diesel::sql_query("SELECT id FROM tenants WHERE slug = 'alpha'")
        .load(&mut *conn)
        .await
        .expect("query");
    let alpha = alpha[0].id.clone();
    let bravo: Vec<Row> = diesel::sql_query("SELECT id FROM tenants WHERE slug = 'bravo'")
        .load(&mut *conn)
        .await
        .expect("query");
    let bravo = bravo[0].id.clone();
    diesel::sql_query("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    agentplane::db::set_tenant(&mut conn, &alpha)
        .await
        .expect("set");
    // No tenant filter in the query: RLS alone decides.
    let visible: Vec<Row> = diesel::sql_query("SELECT tenant_id AS id FROM users")
        .load(&mut *conn)
        .await
        .expect("query");
    assert_eq!(visible.len(), 1);
    assert!(visible.iter().all(|r| r.id == alpha));
    let tenants: Vec<Row> = diesel::sql_query("SELECT id FROM tenants")
        .load(&mut *conn)
        .await
        .expect("query");
    assert_eq!(tenants.len(), 1);
    // Writing a row for another tenant is refused.
    let err = diesel::sql_query(
        "INSERT INTO teams (id, tenant_id, name, description, created_at, updated_at) \
         SELECT 'x', id, 'sneaky', '', now(), now() FROM tenants WHERE slug = 'bravo'",
    )
    .execute(&mut *conn)
    .await;
    // bravo is invisible, so nothing is selected to insert...
    assert_eq!(err.expect("no error"), 0);
    let err = diesel::sql_query(format!(
        "INSERT INTO teams (id, tenant_id, name, description, created_at, updated_at) \
         VALUES ('y', '{bravo}', 'sneaky', '', now(), now())"
    ))
    .execute(&mut *conn)
    .await;
    // ...and a row naming another (existing) tenant violates the policy.
    let msg = format!("{:?}", err.expect_err("refused"));
    assert!(msg.contains("row-level security"), "{msg}");
    let _ = diesel::sql_query("ROLLBACK").execute(&mut *conn).await;
}
