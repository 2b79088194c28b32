//! Resource limits an attacker from outside must not get around: query shapes that cost
//! CPU before any limit sees them, and password hashing that costs memory per request.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    ServerProcess, TestApp, first_error_code, vm_hwm_kib, ws_authed, ws_next_json, ws_send,
};

/// An anonymous document of `depth` fragments, each spreading the next one twice.
pub fn fragment_bomb(depth: usize) -> String {
    let mut q = String::from("query { ...F0 }\n");
    for i in 0..depth {
        q.push_str(&format!(
            "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    q.push_str(&format!(
        "fragment F{depth} on Query {{ serverInfo {{ version }} }}\n"
    ));
    q
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fragment_spread_explosion_is_refused_before_validation() {
    // Hundreds of anonymous requests from one address: the document limits are under
    // test here, not the rate limit (which would refuse the bombers first).
    let app = TestApp::spawn_with(&[("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0")]).await;
    let bomb = fragment_bomb(22);
    assert!(bomb.len() < 1100, "{} bytes", bomb.len());
    let t = Instant::now();
    let out = app.gql(&bomb, json!({})).await;
    let took = t.elapsed();
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("BAD_USER_INPUT"),
        "{out}"
    );
    assert_eq!(
        out["errors"][0]["extensions"]["limit"], "maxSelections",
        "{out}"
    );
    // Unbounded, validation alone took seconds of CPU (exponential in the depth).
    assert!(took < Duration::from_secs(2), "refusing took {took:?}");

    // Four bombers in parallel do not slow a probe down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut bombers = Vec::new();
    for _ in 0..4 {
        let (http, url, bomb, stop) = (
            app.http.clone(),
            format!("{}/graphql", app.base),
            bomb.clone(),
            stop.clone(),
        );
        bombers.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 200 {
                let _ = http.post(&url).json(&json!({ "query": bomb })).send().await;
                sent += 1;
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let out = app.gql("{ serverInfo { version } }", json!({})).await;
        slowest = slowest.max(t.elapsed());
        assert!(out["data"]["serverInfo"]["version"].is_string(), "{out}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for b in bombers {
        b.await.expect("bomber");
    }
    // Generous: other tests share these two cores; unbounded, each bomb held a runtime
    // thread for seconds and probes waited behind them.
    assert!(slowest < Duration::from_secs(5), "a probe took {slowest:?}");

    // The other document bounds, each named.
    let many_fragments: String = std::iter::once("query { serverInfo { version } }\n".to_owned())
        .chain((0..101).map(|i| format!("fragment X{i} on Query {{ serverInfo {{ version }} }}\n")))
        .collect();
    let out = app.gql(&many_fragments, json!({})).await;
    assert_eq!(
        out["errors"][0]["extensions"]["limit"], "maxFragments",
        "{out}"
    );
    let many_spreads = format!(
        "query {{ {} }} fragment S on Query {{ serverInfo {{ version }} }}",
        "...S ".repeat(501)
    );
    let out = app.gql(&many_spreads, json!({})).await;
    assert_eq!(
        out["errors"][0]["extensions"]["limit"], "maxSpreads",
        "{out}"
    );

    // Over a websocket too.
    let (_, owner) = app.tenant_with_owner("acme").await;
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "b", "type": "subscribe", "payload": { "query": bomb } }),
    )
    .await;
    let msg = ws_next_json(&mut ws).await;
    let errors = if msg["type"] == "error" {
        &msg["payload"]
    } else {
        &msg["payload"]["errors"]
    };
    assert_eq!(errors[0]["extensions"]["limit"], "maxSelections", "{msg}");

    // Ordinary documents with fragments still work, introspection included.
    let out = app
        .gql(
            "query { ...A } fragment A on Query { serverInfo { ...B } } fragment B on ServerInfo { version }",
            json!({}),
        )
        .await;
    assert!(out["data"]["serverInfo"]["version"].is_string(), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sign_ins_hash_within_a_memory_bound() {
    // One hash at a time and a short queue, so the bound is visible at any core count.
    let server = ServerProcess::start(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_AUTH_MAX_CONCURRENT_HASHES", "2"),
        ("AGENTPLANE_AUTH_HASH_QUEUE", "4"),
        ("AGENTPLANE_AUTH_MAX_HASHES_PER_ADDRESS", "100"),
    ])
    .await;
    let pid = server.child.id().expect("pid");
    let http = reqwest::Client::new();
    let login = |i: usize| {
        let (http, url) = (http.clone(), format!("{}/graphql", server.base));
        async move {
            let body: Value = http
                .post(url)
                .json(&json!({
                    "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                    "variables": { "i": { "email": format!("nobody{i}@example.com"), "password": "wrong-password-123" } }
                }))
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("json");
            first_error_code(&body).unwrap_or_default()
        }
    };
    // Warm up (first allocations, thread pool).
    login(0).await;
    let before = vm_hwm_kib(pid);
    let codes = futures_util::future::join_all((1..=250).map(login)).await;
    let after = vm_hwm_kib(pid);
    let limited = codes.iter().filter(|c| *c == "RATE_LIMITED").count();
    assert!(
        codes
            .iter()
            .all(|c| c == "UNAUTHENTICATED" || c == "RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(limited > 0, "nothing was refused: {codes:?}");
    let grew_mib = after.saturating_sub(before) / 1024;
    // Two 19 MiB hashes at a time, plus 250 requests' worth of connections, threads and
    // buffers; unbounded, every sign-in hashed at once (250 × 19 MiB, 4.7 GB seen).
    assert!(grew_mib < 400, "peak memory grew by {grew_mib} MiB");
    eprintln!("250 concurrent sign-ins: {limited} refused, peak RSS +{grew_mib} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_from_one_address_are_capped() {
    let server = ServerProcess::start(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_AUTH_MAX_HASHES_PER_ADDRESS", "2"),
        ("AGENTPLANE_AUTH_HASH_QUEUE", "1000"),
    ])
    .await;
    let http = reqwest::Client::new();
    let codes = futures_util::future::join_all((0..30).map(|i| {
        let (http, url) = (http.clone(), format!("{}/graphql", server.base));
        async move {
            let body: Value = http
                .post(url)
                .json(&json!({
                    "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                    "variables": { "i": { "email": format!("x{i}@example.com"), "password": "wrong-password-123" } }
                }))
                .send()
                .await
                .expect("sent")
                .json::<Value>()
                .await
                .expect("json");
            (
                first_error_code(&body).unwrap_or_default(),
                body["errors"][0]["message"].as_str().unwrap_or_default().to_owned(),
            )
        }
    }))
    .await;
    assert!(
        codes
            .iter()
            .any(|(c, m)| c == "RATE_LIMITED" && m.contains("from your address")),
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_writes_one_denial_record_however_often_it_repeats_the_field() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let denials = || async {
        let out = app
            .gql_as(
                &owner,
                "{ auditLog(first: 100, filter: { actionPrefix: \"access.denied\" }) { totalCount } }",
                json!({}),
            )
            .await;
        out["data"]["auditLog"]["totalCount"]
            .as_i64()
            .unwrap_or_else(|| panic!("{out}"))
    };
    assert_eq!(denials().await, 0);
    // 40 aliases of a field the owner may not use, in one request.
    let fields: String = (0..40)
        .map(|i| {
            format!(
                "t{i}: createTenant(input: {{ slug: \"s{i}\", name: \"n\", plan: FREE, \
                 owner: {{ email: \"o{i}@x.example\", displayName: \"O\" }} }}) {{ tenant {{ id }} }} "
            )
        })
        .collect();
    let out = app
        .gql_as(&owner, &format!("mutation {{ {fields} }}"), json!({}))
        .await;
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(40), "{out}");
    assert_eq!(first_error_code(&out).as_deref(), Some("FORBIDDEN"));
    assert_eq!(denials().await, 1, "one record for the request");
    // A batch of ten such operations is one request too.
    let batch: Vec<Value> = (0..10)
        .map(|_| json!({ "query": format!("mutation {{ {fields} }}") }))
        .collect();
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&owner)
        .json(&batch)
        .send()
        .await
        .expect("batch");
    assert_eq!(resp.status(), 200);
    assert_eq!(denials().await, 2);
}

/// Signs in from a given loopback address; returns the error code ("" on success).
async fn login_from(app: &TestApp, from: [u8; 4], email: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .expect("client");
    let body: Value = http
        .post(format!("{}/graphql", app.base))
        .json(&json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "email": email, "password": password } }
        }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    first_error_code(&body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_guesses_are_counted_before_the_password_is_checked() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_AUTH_MAX_HASHES_PER_ADDRESS", "100")]).await;
    let codes = futures_util::future::join_all((0..40).map(|_| {
        login_from(
            &app,
            [127, 0, 0, 1],
            crate::helpers::ADMIN_EMAIL,
            "wrong-password-123",
        )
    }))
    .await;
    let checked = codes.iter().filter(|c| *c == "UNAUTHENTICATED").count();
    assert!(
        codes
            .iter()
            .all(|c| c == "UNAUTHENTICATED" || c == "RATE_LIMITED"),
        "{codes:?}"
    );
    // At most the threshold (5) were checked against the real password.
    assert!(
        checked <= 5,
        "{checked} of 40 guesses were checked: {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_elsewhere_do_not_lock_out_a_client_that_knows_the_password() {
    let app = TestApp::spawn().await;
    let admin = crate::helpers::ADMIN_EMAIL;
    let attacker = [127, 0, 0, 2];
    for _ in 0..5 {
        assert_eq!(
            login_from(&app, attacker, admin, "wrong-password-123").await,
            "UNAUTHENTICATED"
        );
    }
    // The attacker's address is locked out of this account...
    assert_eq!(
        login_from(&app, attacker, admin, crate::helpers::ADMIN_PASSWORD).await,
        "RATE_LIMITED"
    );
    // ...the admin's own address is not.
    assert_eq!(
        login_from(&app, [127, 0, 0, 3], admin, crate::helpers::ADMIN_PASSWORD).await,
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_is_throttled_in_a_sliding_window_not_for_life() {
    let app = TestApp::spawn().await;
    let from = [127, 0, 0, 4];
    // 19 failures (one below the address threshold), then a quiet 16 minutes, then 19
    // more: never locked, because old failures are forgotten.
    for round in 0..2 {
        for n in 0..19 {
            let code = login_from(
                &app,
                from,
                &format!("g{round}-{n}@x.io"),
                "wrong-password-123",
            )
            .await;
            assert_eq!(code, "UNAUTHENTICATED", "round {round}, attempt {n}");
        }
        app.clock.advance(chrono::Duration::minutes(16));
    }
    assert_eq!(
        login_from(
            &app,
            from,
            crate::helpers::ADMIN_EMAIL,
            crate::helpers::ADMIN_PASSWORD
        )
        .await,
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_requests_honour_operation_name() {
    let app = TestApp::spawn().await;
    let query = "query A { serverInfo { version } } query B { __typename }";
    let url = reqwest::Url::parse_with_params(
        &format!("{}/graphql", app.base),
        &[("query", query), ("operationName", "B")],
    )
    .expect("url");
    let body: Value = app
        .http
        .get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["data"], json!({ "__typename": "Query" }), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_tokens_typed_as_access_tokens_are_accepted() {
    use base64::Engine as _;
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = diesel::sql_types::Text)]
        kid: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        private_pem: String,
    }
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let keys: anyhow::Result<Vec<Key>> = async {
        Ok(agentplane::db_run!(&app.state.app.db, |conn| {
            diesel::sql_query("SELECT kid, private_pem FROM signing_keys WHERE active")
                .load::<Key>(conn)
                .await?
        }))
    }
    .await;
    let key = keys.expect("keys").remove(0);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("claims");
    let sign = |typ: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(key.kid.clone());
        h.typ = Some(typ.to_owned());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(key.private_pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    };
    // The same claims and the server's own key: only the access-token type is accepted.
    let (ok, _, _) = app
        .post_raw(
            &json!({ "query": "{ me { email } }" }),
            Some(&sign("at+jwt")),
        )
        .await;
    assert_eq!(ok, 200);
    let (refused, _, body) = app
        .post_raw(&json!({ "query": "{ me { email } }" }), Some(&sign("JWT")))
        .await;
    assert_eq!(refused, 401, "{body}");
}
