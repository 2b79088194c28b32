//! HTTP surface: GraphQL over HTTP, errors, limits, health, GraphiQL.

use serde_json::json;

use crate::helpers::{TestApp, first_error_code};

#[tokio::test(flavor = "multi_thread")]
async fn server_info_reports_version_and_backend() {
    let app = TestApp::spawn().await;
    let body = app
        .gql(
            "{ serverInfo { version backend uptimeSeconds } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["serverInfo"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let expected = if crate::helpers::TestDb::is_postgres() {
        "POSTGRESQL"
    } else {
        "SQLITE"
    };
    assert_eq!(body["data"]["serverInfo"]["backend"], expected);
    assert!(
        body["data"]["serverInfo"]["uptimeSeconds"]
            .as_i64()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_media_types_are_served() {
    let app = TestApp::spawn().await;
    for (accept, ct) in [
        ("application/json", "application/json"),
        (
            "application/graphql-response+json, application/json;q=0.9",
            "application/graphql-response+json",
        ),
    ] {
        let resp = app
            .http
            .post(format!("{}/graphql", app.base))
            .header("accept", accept)
            .json(&json!({ "query": "{ serverInfo { version } }" }))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], ct);
    }
    // A request error under graphql-response+json is a 400; under application/json a 200.
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": "{ nope }" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);
    let (status, _, _) = app.post_raw(&json!({ "query": "{ nope }" }), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_a_code_and_the_request_id() {
    let app = TestApp::spawn().await;
    let (_, headers, body) = app.post_raw(&json!({ "query": "{ nope }" }), None).await;
    assert_eq!(first_error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
    let rid = headers["x-request-id"].to_str().expect("ascii");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], rid);

    // `node` needs a signed-in caller; then a malformed global ID is bad input.
    let body = app.gql("{ node(id: \"garbage\") { id } }", json!({})).await;
    assert_eq!(first_error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
    let token = app.admin_token().await;
    let body = app
        .gql_as(&token, "{ node(id: \"garbage\") { id } }", json!({}))
        .await;
    assert_eq!(first_error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
    let tenant_id = agentplane::graphql::relay::to_global_id(
        agentplane::graphql::relay::NodeKind::Tenant,
        uuid::Uuid::now_v7(),
    );
    let body = app
        .gql(
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": tenant_id }),
        )
        .await;
    assert_eq!(first_error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
    assert!(body["data"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_request_ids_are_echoed_only_when_plain() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .expect("sent");
    let id = resp.headers()["x-request-id"].to_str().expect("ascii");
    assert_ne!(id, "bad id\twith spaces");
    assert!(uuid::Uuid::parse_str(id).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_runs_queries_and_refuses_mutations() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .get(format!("{}/graphql", app.base))
        .query(&[("query", "{ serverInfo { version } }")])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        body["data"]["serverInfo"]["version"],
        env!("CARGO_PKG_VERSION")
    );

    let resp = app
        .http
        .get(format!("{}/graphql", app.base))
        .query(&[("query", "mutation { anything }")])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 405);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(first_error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn too_deep_queries_get_a_clear_error() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_GRAPHQL_MAX_DEPTH", "2")]).await;
    let ok = app.gql("{ serverInfo { version } }", json!({})).await;
    assert!(ok["errors"].is_null(), "{ok}");
    let deep = app
        .gql(
            "{ node(id: \"x\") { ... on Tenant { settings { dataRetentionDays } } } }",
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&deep).as_deref(), Some("BAD_USER_INPUT"));
    let msg = deep["errors"][0]["message"].as_str().expect("message");
    assert!(msg.contains("nested too deep"), "{msg}");
}

/// The exact query graphql-js 16 (`getIntrospectionQuery` with descriptions,
/// specifiedByUrl, directiveIsRepeatable, schemaDescription and inputValueDeprecation)
/// produces: what GraphiQL, GraphQL Code Generator, Postman and Insomnia send.
const GRAPHQL_JS_INTROSPECTION: &str = include_str!("fixtures/graphql-js-16-introspection.graphql");

#[tokio::test(flavor = "multi_thread")]
async fn the_standard_introspection_query_passes_the_default_limits() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("introspect").await;
    for token in [None, Some(owner.as_str())] {
        let (status, _, body) = app
            .post_raw(
                &json!({ "query": GRAPHQL_JS_INTROSPECTION, "operationName": "IntrospectionQuery" }),
                token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["errors"].is_null(),
            "signed in: {}: {body}",
            token.is_some()
        );
        let types = body["data"]["__schema"]["types"].as_array().expect("types");
        assert!(
            types.iter().any(|t| t["name"] == "Workflow"),
            "the schema's own types are listed"
        );
    }
    // Outside introspection the default depth still applies (12 levels).
    let mut deep = String::from("{ tenant ");
    for _ in 0..12 {
        deep.push_str("{ teams ");
    }
    deep.push_str("{ name }");
    for _ in 0..13 {
        deep.push('}');
    }
    let out = app.gql_as(&owner, &deep, json!({})).await;
    let msg = out["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("nested too deep"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_and_wrong_media_types_are_refused() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_BODY_LIMIT_BYTES", "2048")]).await;
    let big = "x".repeat(4096);
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .json(&json!({ "query": format!("{{ serverInfo {{ version }} }} # {big}") }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 413);

    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("content-type", "text/plain")
        .body("{ serverInfo { version } }")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 415);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let resp = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);

    // Forget the newest migration behind the server's back: not ready, and it says why.
    let newest = agentplane::db::migrate::embedded_versions(app.state.app.db.backend())
        .expect("versions")
        .pop()
        .expect("at least one");
    {
        use diesel_async::RunQueryDsl;
        let sql = format!("DELETE FROM __diesel_schema_migrations WHERE version = '{newest}'");
        let db = &app.state.app.db;
        let run = async {
            agentplane::db_run!(db, |conn| {
                diesel::sql_query(&sql).execute(conn).await.expect("delete");
            });
            Ok::<(), agentplane::db::PoolError>(())
        };
        run.await.expect("pool");
    }
    let resp = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert!(
        body["reason"].as_str().expect("reason").contains(&newest),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_is_served_without_any_external_resource() {
    let app = TestApp::spawn().await;
    let resp = app
        .http
        .get(format!("{}/graphql", app.base))
        .header("accept", "text/html")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("default-src 'self'")
    );
    let html = resp.text().await.expect("text");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
    let mut assets = 0;
    for part in html.split(['"', '\'']) {
        if let Some(path) = part.strip_prefix("/graphql/assets/") {
            let resp = app
                .http
                .get(format!("{}/graphql/assets/{path}", app.base))
                .send()
                .await
                .expect("sent");
            assert_eq!(resp.status(), 200, "{path}");
            let ct = resp.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(
                ct.starts_with("text/javascript") || ct.starts_with("text/css"),
                "{ct}"
            );
            assert!(!resp.bytes().await.expect("body").is_empty());
            assets += 1;
        }
    }
    assert_eq!(
        assets, 6,
        "css, react, react-dom, graphql-ws, graphiql, init"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_CORS_ORIGINS", "https://app.example.com")]).await;
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.example", false),
    ] {
        let resp = app
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
            .await
            .expect("sent");
        let got = resp.headers().get("access-control-allow-origin").cloned();
        assert_eq!(got.is_some(), allowed, "{origin}");
    }
}
