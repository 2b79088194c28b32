//! The websocket transport under attack: the graphql-transport-ws close codes, limits on
//! sockets and operations, rights re-resolved per operation, and one shared audit tail.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    TestApp, user_with_role, ws_authed, ws_close_code, ws_connect, ws_next_json, ws_send,
};

const HEARTBEAT: &str = "subscription { heartbeat(intervalSeconds: 30) { at } }";

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({ "id": id, "type": "subscribe", "payload": { "query": query } })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_protocol_close_codes_follow_graphql_transport_ws() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WS_INIT_TIMEOUT_SECS", "1")]).await;
    let token = app.admin_token().await;
    let url = app.ws_url();

    // No connection_init in time: 4408 (it used to stay open for ever).
    let mut ws = ws_connect(&url, "graphql-transport-ws").await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4408));

    // subscribe before connection_init: 4401 Unauthorized (it was 1011).
    let mut ws = ws_connect(&url, "graphql-transport-ws").await;
    ws_send(&mut ws, subscribe("1", HEARTBEAT)).await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4401));

    // Malformed messages: 4400 (it was 1002).
    for bad in [
        "not json".to_owned(),
        json!({ "type": "subscribe", "payload": { "query": "{ serverInfo { version } }" } })
            .to_string(),
        json!({ "type": "no-such-type" }).to_string(),
    ] {
        let mut ws = ws_authed(&url, "graphql-transport-ws", &token).await;
        use futures_util::SinkExt as _;
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            bad.clone().into(),
        ))
        .await
        .expect("send");
        assert_eq!(ws_close_code(&mut ws, 5).await, Some(4400), "{bad}");
    }

    // A second subscribe with a running operation's id: 4409 (it silently replaced it).
    let mut ws = ws_authed(&url, "graphql-transport-ws", &token).await;
    // An id whose operation completed may be used again.
    for _ in 0..2 {
        ws_send(&mut ws, subscribe("q", "{ serverInfo { version } }")).await;
        assert_eq!(ws_next_json(&mut ws).await["type"], "next");
        assert_eq!(ws_next_json(&mut ws).await["type"], "complete");
    }
    ws_send(&mut ws, subscribe("s", HEARTBEAT)).await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "next");
    ws_send(&mut ws, subscribe("s", HEARTBEAT)).await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4409));
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_per_address_and_operations_per_socket_and_principal_are_capped() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WS_MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ("AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_SOCKET", "2"),
        ("AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_PRINCIPAL", "3"),
    ])
    .await;
    let token = app.admin_token().await;
    let url = app.ws_url();
    let mut a = ws_authed(&url, "graphql-transport-ws", &token).await;
    let mut b = ws_authed(&url, "graphql-transport-ws", &token).await;
    let c = ws_connect(&url, "graphql-transport-ws").await;

    // A fourth socket from this address is refused with 429 before the upgrade.
    let refused = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("value"),
        );
        tokio_tungstenite::connect_async(req).await
    };
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("RATE_LIMITED"), "{body}");
        }
        other => panic!("a fourth socket must be refused: {other:?}"),
    }
    // Closing one frees its place.
    drop(c);
    let mut reopened = None;
    for _ in 0..50 {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("value"),
        );
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(req).await {
            reopened = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed socket's place is given back");

    // Two operations per socket: the third is refused with RATE_LIMITED.
    for id in ["1", "2"] {
        ws_send(&mut a, subscribe(id, HEARTBEAT)).await;
        assert_eq!(ws_next_json(&mut a).await["type"], "next");
    }
    ws_send(&mut a, subscribe("3", HEARTBEAT)).await;
    let refused = ws_next_json(&mut a).await;
    assert_eq!(refused["id"], "3", "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert_eq!(ws_next_json(&mut a).await["type"], "complete");

    // Three per principal over all its sockets.
    ws_send(&mut b, subscribe("1", HEARTBEAT)).await;
    assert_eq!(ws_next_json(&mut b).await["type"], "next");
    ws_send(&mut b, subscribe("2", HEARTBEAT)).await;
    let refused = ws_next_json(&mut b).await;
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert_eq!(ws_next_json(&mut b).await["type"], "complete");

    // Completing one gives its slot back.
    ws_send(&mut a, json!({ "id": "1", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws_send(&mut b, subscribe("3", HEARTBEAT)).await;
    let ok = ws_next_json(&mut b).await;
    assert_eq!(ok["type"], "next", "{ok}");
    assert!(ok["payload"]["errors"].is_null(), "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_user_keeps_no_rights_on_an_open_socket() {
    let app = TestApp::spawn().await;
    let (_tenant, owner) = app.tenant_with_owner("demote").await;
    let (admin_id, admin) = user_with_role(&app, &owner, "ops@demote.test", json!("ADMIN")).await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &admin).await;
    let create = |id: &str, email: &str| {
        json!({ "id": id, "type": "subscribe", "payload": {
            "query": "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } } }",
            "variables": { "i": { "email": email, "displayName": "X", "roleId": "VIEWER" } } } })
    };
    // As ADMIN the socket may create users.
    ws_send(&mut ws, create("1", "first@demote.test")).await;
    let out = ws_next_json(&mut ws).await;
    assert!(
        out["payload"]["data"]["createUser"]["user"]["id"].is_string(),
        "{out}"
    );
    assert_eq!(ws_next_json(&mut ws).await["type"], "complete");

    let demoted = app
        .gql_as(
            &owner,
            "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id } } }",
            json!({ "i": { "userId": admin_id, "roleId": "VIEWER" } }),
        )
        .await;
    assert!(demoted["errors"].is_null(), "{demoted}");

    // The next mutation over the same socket is not run with the old rights, and the
    // socket is closed with 4403 so the client reconnects with its new ones.
    ws_send(&mut ws, create("2", "second@demote.test")).await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4403));
    let users = app
        .gql_as(
            &owner,
            "{ users(first: 50) { edges { node { email } } } }",
            json!({}),
        )
        .await;
    assert!(users.to_string().contains("first@demote.test"), "{users}");
    assert!(!users.to_string().contains("second@demote.test"), "{users}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_subscriptions_share_one_tail_per_tenant() {
    let app = TestApp::spawn_with(&[
        // Quiet background work, so the statements counted are the tails'.
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_SCHEDULER_TICK_MS", "60000"),
        ("AGENTPLANE_HEARTBEAT_MS", "60000"),
        ("AGENTPLANE_NODE_OFFLINE_AFTER_MS", "120000"),
    ])
    .await;
    let (_tenant, owner) = app.tenant_with_owner("tail").await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    let subs = 60;
    let statements = &app.state.app.statements;
    let idle_statements = || async {
        // Let subscriptions start, then count the statements of an idle period.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = statements.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        statements.load(std::sync::atomic::Ordering::SeqCst) - before
    };
    ws_send(
        &mut ws,
        subscribe("0", "subscription { auditEvents { sequence action } }"),
    )
    .await;
    let one = idle_statements().await;
    for i in 1..subs {
        ws_send(
            &mut ws,
            subscribe(
                &i.to_string(),
                "subscription { auditEvents { sequence action } }",
            ),
        )
        .await;
    }
    let sixty = idle_statements().await;
    assert_eq!(app.state.app.audit_tails.followers(), 1);
    eprintln!("statements in 3 idle seconds: {one} with one subscription, {sixty} with {subs}");
    // With one loop per subscription, 59 more added at least 59 × 3 reads here.
    assert!(
        sixty <= one + 30,
        "{sixty} statements in 3 idle seconds with {subs} subscriptions, {one} with one"
    );

    // Every subscription still sees a new record, once.
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } } }",
            json!({ "i": { "email": "seen@tail.test", "displayName": "S", "roleId": "VIEWER" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < subs && Instant::now() < deadline {
        let m = ws_next_json(&mut ws).await;
        assert_eq!(m["type"], "next", "{m}");
        if m["payload"]["data"]["auditEvents"]["action"] == "user.created" {
            *seen
                .entry(m["id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), subs);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    drop(ws);
    // The follower ends with its last subscriber.
    for _ in 0..50 {
        if app.state.app.audit_tails.followers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.state.app.audit_tails.followers(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fragment_spread_explosion_over_a_socket_is_refused_before_validation() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    let t = Instant::now();
    ws_send(&mut ws, subscribe("b", &crate::security::fragment_bomb(22))).await;
    let out = ws_next_json(&mut ws).await;
    let took = t.elapsed();
    assert_eq!(
        out["payload"]["errors"][0]["extensions"]["limit"], "maxSelections",
        "{out}"
    );
    assert!(took < Duration::from_secs(2), "refusing took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_no_larger_than_a_request_body_and_errors_carry_codes() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_BODY_LIMIT_BYTES", "65536")]).await;
    let token = app.admin_token().await;
    // 200 KB of JSON in connection_init, before any credential was checked: refused
    // (it was parsed whole, tens of times its size in memory).
    let mut ws = ws_connect(&app.ws_url(), "graphql-transport-ws").await;
    let junk = "[[[[]]]],".repeat(22_000);
    ws_send(
        &mut ws,
        serde_json::from_str(&format!(
            r#"{{"type":"connection_init","payload":{{"junk":[{}[]]}}}}"#,
            junk
        ))
        .expect("json"),
    )
    .await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(1009));
    // The same over a signed-in socket, as variables.
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "{ serverInfo { version } }", "variables": { "junk": "x".repeat(100_000) } } }),
    )
    .await;
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(1009));

    // Refusals async-graphql makes itself carry a code on sockets, as over HTTP.
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &token).await;
    let heavy: Vec<String> = (0..1000)
        .map(|i| format!("a{i}: auditLog {{ totalCount }}"))
        .collect();
    ws_send(
        &mut ws,
        subscribe("c", &format!("{{ {} }}", heavy.join(" "))),
    )
    .await;
    let out = ws_next_json(&mut ws).await;
    assert_eq!(
        out["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{out}"
    );
    assert!(
        out["payload"]["errors"][0]["extensions"]["requestId"].is_string(),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_subscription_ends_as_soon_as_its_rights_change() {
    // The periodic re-check is an hour away: only the change itself can end the socket.
    let app = TestApp::spawn_with(&[("AGENTPLANE_WS_RECHECK_SECS", "3600")]).await;
    let (_tenant, owner) = app.tenant_with_owner("live").await;
    let (admin_id, admin) = user_with_role(&app, &owner, "ops@live.test", json!("ADMIN")).await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &admin).await;
    ws_send(
        &mut ws,
        subscribe("a", "subscription { auditEvents { sequence action } }"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let out = app
        .gql_as(
            &owner,
            "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id } } }",
            json!({ "i": { "userId": admin_id, "roleId": "VIEWER" } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    // Whatever the stream still sent, the socket closes with 4403 right away (a VIEWER
    // may not read the audit trail).
    assert_eq!(ws_close_code(&mut ws, 5).await, Some(4403));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
