//! Subscriptions over both websocket subprotocols.

use serde_json::json;

use crate::helpers::{TestApp, ws_authed, ws_close_code, ws_next_json, ws_send};

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
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4401));
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
    assert_eq!(ws_close_code(&mut ws, 10).await, Some(4401));
}
