//! The client address behind proxies (#19): `Forwarded` / `X-Forwarded-For` are believed
//! only from `AGENTPLANE_TRUSTED_PROXIES`, and then the right-most address that is not a
//! trusted proxy is the client, for audit records, lockout and per-address limits.

use serde_json::json;

use crate::helpers::*;

const LOG: &str = "query { auditLog(filter: { actionPrefix: \"auth.login_failed\" }, first: 20) { edges { node { ip } } } }";

/// Fails a sign-in of `owner@acme.example` with extra headers; returns nothing.
async fn failed_sign_in(app: &TestApp, headers: &[(&str, &str)]) {
    let mut req = app.http.post(format!("{}/graphql", app.base)).json(&json!({
        "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        "variables": { "i": { "email": "owner@acme.example", "password": "not-the-password" } },
    }));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body: serde_json::Value = req.send().await.expect("send").json().await.expect("json");
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
}

async fn recorded_ips(app: &TestApp, owner: &str) -> Vec<String> {
    let body = app.gql_as(owner, LOG, json!({})).await;
    let mut ips: Vec<String> = body["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| e["node"]["ip"].as_str().unwrap_or("").to_owned())
        .collect();
    ips.sort();
    ips
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // This test's server sees every request from 127.0.0.1: trusted here.
    let app =
        TestApp::spawn_with(&[("AGENTPLANE_TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/8")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    // A client-written left part cannot decide: the right-most untrusted hop is the client.
    failed_sign_in(
        &app,
        &[("x-forwarded-for", "198.51.100.66, 203.0.113.9, 10.1.2.3")],
    )
    .await;
    // By default only X-Forwarded-For counts: a `Forwarded` the client wrote (and the
    // proxy passed through) is ignored.
    failed_sign_in(
        &app,
        &[
            ("forwarded", "for=10.9.9.9"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    )
    .await;
    // Garbage the client put on the left is never reached: the walk stops at the first
    // untrusted hop from the right.
    failed_sign_in(&app, &[("x-forwarded-for", "not-an-address, 192.0.2.44")]).await;
    failed_sign_in(&app, &[("x-forwarded-for", "unknown, ,192.0.2.45")]).await;
    // A header that does not parse at its right end names nobody: the peer is the client.
    failed_sign_in(&app, &[("x-forwarded-for", "not-an-address")]).await;
    // Two header lines are one list.
    failed_sign_in(
        &app,
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "192.0.2.46"),
        ],
    )
    .await;
    assert_eq!(
        recorded_ips(&app, &owner).await,
        [
            "127.0.0.1",
            "192.0.2.44",
            "192.0.2.45",
            "192.0.2.46",
            "198.51.100.1",
            "203.0.113.9"
        ],
    );

    // Proxies that append RFC 7239 `Forwarded`: that header counts (IPv6 with a port),
    // X-Forwarded-For is ignored.
    let rfc = TestApp::spawn_with(&[
        ("AGENTPLANE_TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/8"),
        ("AGENTPLANE_FORWARDED_HEADER", "forwarded"),
    ])
    .await;
    let (_, rfc_owner) = rfc.tenant_with_owner("acme").await;
    failed_sign_in(
        &rfc,
        &[
            (
                "forwarded",
                "for=\"[2001:db8::17]:4711\";proto=https, for=10.0.0.5",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    )
    .await;
    failed_sign_in(&rfc, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(
        recorded_ips(&rfc, &rfc_owner).await,
        ["127.0.0.1", "2001:db8::17"]
    );

    // The same headers from a peer that is not a trusted proxy are ignored.
    let direct = TestApp::spawn().await;
    let (_, owner) = direct.tenant_with_owner("acme").await;
    failed_sign_in(&direct, &[("x-forwarded-for", "203.0.113.9")]).await;
    failed_sign_in(&direct, &[("forwarded", "for=198.51.100.20")]).await;
    assert_eq!(
        recorded_ips(&direct, &owner).await,
        ["127.0.0.1", "127.0.0.1"]
    );
}
