//! Subscriptions over both websocket subprotocols.

use serde_json::json;

use crate::helpers::{
    TestApp, ws_authed, ws_close_code, ws_close_frame, ws_next_json, ws_next_of_type, ws_send,
};

#[tokio::test(flavor = "multi_thread")]
async fn graphql_transport_ws_streams_a_subscription() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { heartbeat(intervalSeconds: 1) { at uptimeSeconds } }" } }),
    )
    .await;
    for _ in 0..2 {
        let msg = ws_next_json(&mut ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        assert_eq!(msg["id"], "1");
        assert!(msg["payload"]["data"]["heartbeat"]["at"].is_string());
    }
    ws_send(&mut ws, json!({ "id": "1", "type": "complete" })).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_graphql_ws_streams_a_subscription() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-ws", &token).await;
    ws_send(
        &mut ws,
        json!({ "id": "7", "type": "start",
                "payload": { "query": "subscription { heartbeat(intervalSeconds: 1) { uptimeSeconds } }" } }),
    )
    .await;
    let msg = ws_next_json(&mut ws).await;
    assert_eq!(msg["type"], "data", "{msg}");
    assert_eq!(msg["id"], "7");
    assert!(msg["payload"]["data"]["heartbeat"]["uptimeSeconds"].is_i64());
    ws_send(&mut ws, json!({ "id": "7", "type": "stop" })).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_errors_carry_codes() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { heartbeat(intervalSeconds: 0) { at } }" } }),
    )
    .await;
    let msg = ws_next_json(&mut ws).await;
    let code = msg["payload"][0]["extensions"]["code"]
        .as_str()
        .or_else(|| msg["payload"]["errors"][0]["extensions"]["code"].as_str());
    assert_eq!(code, Some("BAD_USER_INPUT"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_subprotocols_are_refused() {
    let app = TestApp::spawn().await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = app.ws_url().into_client_request().expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("value"));
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_sockets_with_going_away() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    app.state.app.shutdown.cancel();
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(1001));
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_without_valid_credentials_are_closed_with_4401() {
    let app = TestApp::spawn().await;
    for payload in [json!({}), json!({ "Authorization": "Bearer not-a-token" })] {
        let mut ws = crate::helpers::ws_connect(&app.ws_url(), "graphql-transport-ws").await;
        ws_send(
            &mut ws,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        assert_eq!(ws_close_code(&mut ws, 5).await, Some(4401));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiring_token_closes_its_socket() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    app.clock.advance(chrono::Duration::minutes(20));
    let (code, reason) = ws_close_frame(&mut ws, 5).await.expect("closed");
    assert_eq!(code, 4401);
    assert!(reason.starts_with("TOKEN_EXPIRED"), "{reason}");
}

const REFRESH: &str =
    "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken refreshToken } }";

/// A socket keeps going past its first token when the client sends a fresh one in a
/// `ping`; it gets HTTP's leeway, and closes with `TOKEN_EXPIRED` when the last token ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_takes_a_fresh_token_by_ping_and_gets_the_http_leeway() {
    let app = TestApp::spawn().await;
    let (email, password) = (crate::helpers::ADMIN_EMAIL, crate::helpers::ADMIN_PASSWORD);
    let (access, refresh) = app.login(email, password).await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &access).await;

    // Ten minutes on, the client refreshes its session and hands the socket the new token.
    app.clock.advance(chrono::Duration::minutes(10));
    let out = app
        .gql(REFRESH, json!({ "i": { "refreshToken": refresh } }))
        .await;
    let fresh = out["data"]["refreshSession"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    ws_send(
        &mut ws,
        json!({ "type": "ping", "payload": { "Authorization": format!("Bearer {fresh}") } }),
    )
    .await;
    let pong = ws_next_of_type(&mut ws, "pong").await;
    assert_eq!(pong["payload"]["credentials"], "ACCEPTED", "{pong}");
    assert!(pong["payload"]["expiresAt"].is_string(), "{pong}");
    // A plain ping still gets a plain pong.
    ws_send(&mut ws, json!({ "type": "ping" })).await;
    let pong = ws_next_of_type(&mut ws, "pong").await;
    assert!(pong["payload"].is_null(), "{pong}");

    // Twenty minutes after the first token was issued it has expired; the socket lives on
    // the fresh one and still runs operations.
    app.clock.advance(chrono::Duration::minutes(10));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { heartbeat(intervalSeconds: 30) { at } }" } }),
    )
    .await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "next");
    ws_send(&mut ws, json!({ "id": "1", "type": "complete" })).await;

    // The fresh token ends 15 minutes after it was issued. Within HTTP's 60 s leeway both
    // HTTP and the socket still take it.
    app.clock.advance(chrono::Duration::seconds(5 * 60 + 30));
    let http = app.gql_as(&fresh, "{ me { email } }", json!({})).await;
    assert_eq!(http["data"]["me"]["email"], email, "{http}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    ws_send(&mut ws, json!({ "type": "ping" })).await;
    ws_next_of_type(&mut ws, "pong").await;

    // Past the leeway: closed, and the reason says what to do.
    app.clock.advance(chrono::Duration::seconds(60));
    let (code, reason) = ws_close_frame(&mut ws, 5).await.expect("closed");
    assert_eq!(code, 4401);
    assert!(reason.starts_with("TOKEN_EXPIRED"), "{reason}");
}

/// A refresh by ping must be the same principal with the same rights; a bad token ends
/// the socket with the reason HTTP would give.
#[tokio::test(flavor = "multi_thread")]
async fn a_ping_refresh_refuses_other_principals_and_bad_tokens() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, owner) = app.tenant_with_owner("pingco").await;

    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &admin).await;
    ws_send(
        &mut ws,
        json!({ "type": "ping", "payload": { "Authorization": format!("Bearer {owner}") } }),
    )
    .await;
    let (code, _) = ws_close_frame(&mut ws, 5).await.expect("closed");
    assert_eq!(code, 4403);

    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &admin).await;
    ws_send(
        &mut ws,
        json!({ "type": "ping", "payload": { "Authorization": "Bearer not-a-token" } }),
    )
    .await;
    let (code, reason) = ws_close_frame(&mut ws, 5).await.expect("closed");
    assert_eq!(code, 4401);
    assert!(reason.contains("TOKEN_INVALID"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_closes_its_socket() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    let out = app
        .gql_as(&token, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    let (code, reason) = ws_close_frame(&mut ws, 10).await.expect("closed");
    assert_eq!(code, 4401);
    assert!(reason.starts_with("TOKEN_REVOKED"), "{reason}");
}

/// Every event of a subscription reads the execution as it is at that event: nested
/// fields (steps) are not answered from what an earlier event of the same subscription
/// read (the request's loaders cache).
#[tokio::test(flavor = "multi_thread")]
async fn each_subscription_event_reads_the_execution_afresh() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("fresh").await;
    let wf = crate::executions::published(
        &app,
        &owner,
        "two",
        json!({ "steps": [
            { "id": "a", "kind": "delay", "config": { "ms": 200 } },
            { "id": "b", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 200 } },
        ]}),
    )
    .await;
    let started = crate::executions::start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionUpdated(id: $id) { kind status execution { status steps { stepId status } } } }",
            "variables": { "id": id } } }),
    )
    .await;
    let last = loop {
        let msg = ws_next_json(&mut ws).await;
        assert_eq!(msg["type"], "next", "{msg}");
        let u = msg["payload"]["data"]["executionUpdated"].clone();
        if u["kind"] == "STATUS_CHANGED" && u["status"] == "SUCCEEDED" {
            break u;
        }
    };
    assert_eq!(last["execution"]["status"], "SUCCEEDED", "{last}");
    let steps: Vec<&str> = last["execution"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(steps, ["SUCCEEDED", "SUCCEEDED"], "{last}");
}
