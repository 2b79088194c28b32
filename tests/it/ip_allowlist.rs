//! A tenant's `allowedIpRanges` (#19 item 3): enforced on sign-in, session refresh,
//! every HTTP request, websocket `connection_init` (and open sockets when the list
//! changes) and API-key use, with `FORBIDDEN` / reason `IP_NOT_ALLOWED`, recorded as
//! `auth.ip_denied`; an owner cannot lock themselves out by accident; other tenants are
//! untouched. The test server trusts 127.0.0.1 as a proxy, so each request names its
//! client address in `X-Forwarded-For`.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

const INSIDE: &str = "198.51.100.7";
const OUTSIDE: &str = "203.0.113.50";
const SETTINGS: &str = "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { settings { allowedIpRanges } } } }";

/// POSTs a GraphQL request from `ip`; returns (status, body).
async fn gql_from(
    app: &TestApp,
    ip: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("x-forwarded-for", ip)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

fn reason(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["reason"].as_str()
}

fn assert_ip_refused(status: u16, body: &Value) {
    assert_eq!(
        first_error_code(body).as_deref(),
        Some("FORBIDDEN"),
        "{body}"
    );
    assert_eq!(reason(body), Some("IP_NOT_ALLOWED"), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("allowedIpRanges"),
        "says what to do: {message}"
    );
    assert!(status == 200 || status == 403, "{status}");
}

async fn login_from(app: &TestApp, ip: &str, email: &str) -> (u16, Value) {
    gql_from(
        app,
        ip,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
        json!({ "i": { "email": email, "password": OWNER_PASSWORD } }),
    )
    .await
}

/// Opens a websocket from `ip` and sends `connection_init` with `token`.
async fn ws_from(app: &TestApp, ip: &str, token: &str) -> Ws {
    let mut req = app.ws_url().into_client_request().expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    req.headers_mut()
        .insert("x-forwarded-for", ip.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }),
    )
    .await;
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_ip_ranges_hold_for_every_use_of_a_credential() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (_, other_owner) = app.tenant_with_owner("globex").await;
    let key = gql_from(
        &app,
        INSIDE,
        Some(&owner),
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
        json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
    )
    .await
    .1["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let (_, signed_in) = login_from(&app, INSIDE, "owner@acme.example").await;
    let refresh = signed_in["data"]["login"]["refreshToken"]
        .as_str()
        .expect("refresh token")
        .to_owned();

    // Saving a list that leaves out the caller's own address needs a confirmation.
    let (_, refused) = gql_from(
        &app,
        OUTSIDE,
        Some(&owner),
        SETTINGS,
        json!({ "i": { "allowedIpRanges": ["198.51.100.0/24"] } }),
    )
    .await;
    assert_eq!(
        first_error_code(&refused).as_deref(),
        Some("BAD_USER_INPUT"),
        "{refused}"
    );
    assert_eq!(reason(&refused), Some("WOULD_LOCK_OUT_CALLER"));
    let (_, bad) = gql_from(
        &app,
        INSIDE,
        Some(&owner),
        SETTINGS,
        json!({ "i": { "allowedIpRanges": ["198.51.100.0/24", "example.com"] } }),
    )
    .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );
    // Open sockets from either side before the list is saved.
    let mut inside_ws = ws_from(&app, INSIDE, &owner).await;
    assert_eq!(ws_next_json(&mut inside_ws).await["type"], "connection_ack");
    let mut outside_ws = ws_from(&app, OUTSIDE, &owner).await;
    assert_eq!(
        ws_next_json(&mut outside_ws).await["type"],
        "connection_ack"
    );

    let (_, saved) = gql_from(
        &app,
        INSIDE,
        Some(&owner),
        SETTINGS,
        json!({ "i": { "allowedIpRanges": ["198.51.100.0/24", "2001:db8::/32"] } }),
    )
    .await;
    assert_eq!(
        saved["data"]["updateTenantSettings"]["tenant"]["settings"]["allowedIpRanges"],
        json!(["198.51.100.0/24", "2001:db8::/32"]),
        "{saved}"
    );

    // The socket outside the ranges is closed at once; the one inside stays.
    let (code, why) = ws_close_frame(&mut outside_ws, 10)
        .await
        .expect("the outside socket is closed");
    assert_eq!(code, 4403, "{why}");
    assert!(why.starts_with("IP_NOT_ALLOWED"), "{why}");
    ws_send(&mut inside_ws, json!({ "type": "ping" })).await;
    assert_eq!(
        ws_next_of_type(&mut inside_ws, "pong").await["type"],
        "pong"
    );

    // Every HTTP request with the tenant's credentials: access token and API key.
    for credential in [&owner, &key] {
        let (status, body) = gql_from(
            &app,
            OUTSIDE,
            Some(credential),
            "{ me { email } }",
            json!({}),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_ip_refused(status, &body);
        let (status, body) = gql_from(
            &app,
            INSIDE,
            Some(credential),
            "{ tenant { slug } }",
            json!({}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["tenant"]["slug"], "acme", "{body}");
    }
    // IPv6 inside the ranges, and an IPv4-mapped IPv6 address judged as IPv4.
    for ip in ["2001:db8::42", "::ffff:198.51.100.9"] {
        let (_, body) = gql_from(&app, ip, Some(&owner), "{ tenant { slug } }", json!({})).await;
        assert_eq!(body["data"]["tenant"]["slug"], "acme", "{ip}: {body}");
    }

    // Sign-in with the right password, and refresh, from outside: refused; the refresh
    // token is not spent by the refusal and works from inside.
    let (status, body) = login_from(&app, OUTSIDE, "owner@acme.example").await;
    assert_ip_refused(status, &body);
    assert!(body["data"]["login"].is_null(), "{body}");
    // A wrong password from outside gets the same answer: no password is tried there.
    let (status, body) = gql_from(
        &app,
        OUTSIDE,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        json!({ "i": { "email": "owner@acme.example", "password": "not-the-password" } }),
    )
    .await;
    assert_ip_refused(status, &body);
    let refresh_query =
        "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }";
    let (status, body) = gql_from(
        &app,
        OUTSIDE,
        None,
        refresh_query,
        json!({ "i": { "refreshToken": refresh } }),
    )
    .await;
    assert_ip_refused(status, &body);
    let (_, body) = gql_from(
        &app,
        INSIDE,
        None,
        refresh_query,
        json!({ "i": { "refreshToken": refresh } }),
    )
    .await;
    assert!(
        body["data"]["refreshSession"]["accessToken"].is_string(),
        "{body}"
    );
    let (_, body) = login_from(&app, INSIDE, "owner@acme.example").await;
    assert!(body["data"]["login"]["accessToken"].is_string(), "{body}");

    // A new websocket from outside: connection_init refused with 4403.
    let mut ws = ws_from(&app, OUTSIDE, &key).await;
    let (code, why) = ws_close_frame(&mut ws, 10).await.expect("closed");
    assert_eq!(code, 4403, "{why}");
    assert!(why.contains("IP_NOT_ALLOWED"), "{why}");

    // Another tenant is untouched by acme's list.
    let (_, body) = gql_from(
        &app,
        OUTSIDE,
        Some(&other_owner),
        "{ tenant { slug } }",
        json!({}),
    )
    .await;
    assert_eq!(body["data"]["tenant"]["slug"], "globex", "{body}");

    // Refusals are in acme's trail, with the refused address.
    let (_, log) = gql_from(
        &app,
        INSIDE,
        Some(&owner),
        "{ auditLog(filter: { actionPrefix: \"auth.ip_denied\" }, first: 50) { edges { node { ip outcome } } } }",
        json!({}),
    )
    .await;
    let edges = log["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{log}"));
    assert!(!edges.is_empty(), "{log}");
    assert!(
        edges
            .iter()
            .all(|e| e["node"]["ip"] == OUTSIDE && e["node"]["outcome"] == "FAILURE"),
        "{log}"
    );

    // Emptying the list allows any address again.
    let (_, cleared) = gql_from(
        &app,
        INSIDE,
        Some(&owner),
        SETTINGS,
        json!({ "i": { "allowedIpRanges": [] } }),
    )
    .await;
    assert!(cleared["errors"].is_null(), "{cleared}");
    let (_, body) = gql_from(&app, OUTSIDE, Some(&key), "{ tenant { slug } }", json!({})).await;
    assert_eq!(body["data"]["tenant"]["slug"], "acme", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_admins_are_held_to_the_system_list_unless_exempted() {
    for exempt in [false, true] {
        let app = TestApp::spawn_with(&[
            ("AGENTPLANE_TRUSTED_PROXIES", "127.0.0.1/32"),
            (
                "AGENTPLANE_PLATFORM_ADMINS_BYPASS_IP_ALLOWLIST",
                if exempt { "true" } else { "false" },
            ),
        ])
        .await;
        let admin = app.admin_token().await;
        let (_, saved) = gql_from(
            &app,
            INSIDE,
            Some(&admin),
            SETTINGS,
            json!({ "i": { "allowedIpRanges": ["198.51.100.0/24"] } }),
        )
        .await;
        assert!(saved["errors"].is_null(), "{saved}");
        let (status, body) = gql_from(
            &app,
            OUTSIDE,
            Some(&admin),
            "{ tenants(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await;
        if exempt {
            assert_eq!(status, 200);
            assert!(body["data"]["tenants"]["edges"].is_array(), "{body}");
        } else {
            assert_ip_refused(status, &body);
        }
    }
}
