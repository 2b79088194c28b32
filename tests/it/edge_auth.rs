//! Authentication at the edge: one extractor for every route, one joined query per
//! credential.

use std::sync::atomic::Ordering;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::helpers::{TestApp, user_with_role, ws_next_json, ws_send};

/// Statements an authenticated `{ __typename }` costs (the query itself needs none), the
/// fewest of five tries so a background statement cannot make a run look worse.
async fn statements_for(app: &TestApp, credential: &str) -> u64 {
    let mut fewest = u64::MAX;
    for _ in 0..5 {
        let before = app.state.app.statements.load(Ordering::SeqCst);
        let out = app.gql_as(credential, "{ __typename }", json!({})).await;
        let after = app.state.app.statements.load(Ordering::SeqCst);
        assert_eq!(out["data"]["__typename"], "Query", "{out}");
        fewest = fewest.min(after - before);
    }
    fewest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_is_resolved_with_one_joined_query() {
    // The principal cache off: every request takes the database path counted here (the
    // cached path costs nothing: `hot_path`).
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_AUTH_CACHE_SECS", "0"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    // A platform lookup outside a row-level-security transaction: no BEGIN; set_config;
    // …; COMMIT around it on PostgreSQL either.
    let wrap = 0;

    // An access token: session, user, tenant, custom role and revocation in one read
    // (it was five reads on four connections).
    assert_eq!(statements_for(&app, &owner).await, 1 + wrap);

    // A custom role costs nothing more: it is joined, not looked up.
    let custom = app
        .gql_as(
            &owner,
            "mutation($i: CreateRoleInput!) { createRole(input: $i) { role { id } } }",
            json!({ "i": { "name": "readers", "permissions": ["workflows.read"] } }),
        )
        .await;
    let role_id = custom["data"]["createRole"]["role"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("role created: {custom}"))
        .to_owned();
    let (_, reader) = user_with_role(&app, &owner, "reader@acme.test", json!(role_id)).await;
    assert_eq!(statements_for(&app, &reader).await, 1 + wrap);
    let denied = app
        .gql_as(
            &reader,
            "{ users(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        crate::helpers::first_error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "the joined custom role still limits: {denied}"
    );

    // An API key: the key with its tenant and role in one read, its creator in another.
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
        )
        .await;
    let secret = key["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("key created: {key}"))
        .to_owned();
    // The first use stamps `lastUsedAt`; later uses within a minute only read.
    let _ = app.gql_as(&secret, "{ __typename }", json!({})).await;
    assert_eq!(statements_for(&app, &secret).await, 2 + wrap);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_edge_refuses_a_bad_credential_on_every_route() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let client = reqwest::Client::new();
    let routes = [
        ("POST", format!("{}/graphql", app.base)),
        (
            "GET",
            format!("{}/graphql?query=%7B__typename%7D", app.base),
        ),
        ("GET", format!("{}/audit/export", app.base)),
    ];
    for (method, url) in &routes {
        let req = if *method == "POST" {
            client.post(url).json(&json!({ "query": "{ __typename }" }))
        } else {
            client.get(url)
        };
        let resp = req
            .header("authorization", "Bearer not-a-token")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401, "{method} {url}");
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{method} {url}"
        );
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert!(body["errors"][0]["extensions"]["requestId"].is_string());
    }
    // The export needs a credential at all; GraphQL serves anonymous callers.
    let resp = client
        .get(format!("{}/audit/export", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(format!("{}/audit/export", app.base))
        .header("authorization", format!("Bearer {owner}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // The websocket upgrade goes through the same extractor: a bad credential on the
    // upgrade request is refused before the socket opens.
    let mut req = app.ws_url().into_client_request().expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    req.headers_mut().insert(
        "authorization",
        "Bearer not-a-token".parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
        }
        other => panic!("the upgrade should be refused with 401: {other:?}"),
    }

    // A good one on the upgrade request stands for a `connection_init` without payload.
    let mut req = app.ws_url().into_client_request().expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {owner}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade with a credential");
    ws_send(&mut ws, json!({ "type": "connection_init" })).await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "connection_ack");
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ tenant { slug } }" } }),
    )
    .await;
    let next = ws_next_json(&mut ws).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["payload"]["data"]["tenant"]["slug"], "acme", "{next}");
}
