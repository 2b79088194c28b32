//! Authentication off the database hot path (#15): statement counts of an authenticated
//! request and of idle authenticated websockets, and the change feed that keeps cached
//! principals honest when another process writes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use crate::helpers::*;

/// Background work slowed down, so the statements counted are the requests'.
const QUIET: &[(&str, &str)] = &[
    ("AGENTPLANE_WORKERS", "0"),
    ("AGENTPLANE_SCHEDULER_TICK_MS", "60000"),
    ("AGENTPLANE_HEARTBEAT_MS", "60000"),
    ("AGENTPLANE_NODE_OFFLINE_AFTER_MS", "120000"),
    // The old per-socket polling, at its most eager: a socket that polls shows up.
    ("AGENTPLANE_WS_RECHECK_SECS", "1"),
];

async fn cache_live(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.state.app.auth_cache.is_live() {
        assert!(
            Instant::now() < deadline,
            "the auth change follower never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statements(app: &TestApp) -> u64 {
    app.state.app.statements.load(Ordering::SeqCst)
}

/// Runs `sql` on a connection of its own, as another process would.
async fn write_elsewhere(db: &TestDb, sql: &str) {
    if TestDb::is_postgres() {
        use diesel_async::RunQueryDsl;
        let mut c = AsyncPgConnection::establish(&db.url)
            .await
            .expect("connect");
        diesel::sql_query(sql).execute(&mut c).await.expect("write");
    } else {
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            use diesel::{Connection, RunQueryDsl};
            let mut c = diesel::SqliteConnection::establish(&path).expect("open");
            diesel::sql_query("PRAGMA busy_timeout = 5000")
                .execute(&mut c)
                .expect("pragma");
            diesel::sql_query(sql).execute(&mut c).expect("write");
        })
        .await
        .expect("join");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_request_costs_one_statement_on_a_miss_and_none_on_a_hit() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_tenant, owner) = app.tenant_with_owner("hotpath").await;
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
        )
        .await;
    let key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("createApiKey: {key}"))
        .to_owned();
    cache_live(&app).await;
    for (what, credential) in [("access token", &owner), ("API key", &key)] {
        // A change in the tenant empties its cache entries: the next request misses.
        app.state
            .app
            .auth_cache
            .invalidate(agentplane::auth::cache::AuthChange::All);
        let before = statements(&app);
        let out = app.gql_as(credential, "{ __typename }", json!({})).await;
        assert_eq!(out["data"]["__typename"], "Query", "{out}");
        let miss = statements(&app) - before;
        let before = statements(&app);
        for _ in 0..20 {
            let out = app.gql_as(credential, "{ __typename }", json!({})).await;
            assert_eq!(out["data"]["__typename"], "Query", "{out}");
        }
        let hits = statements(&app) - before;
        eprintln!("{what}: {miss} statements on a miss, {hits} on 20 hits");
        // An API key's first use also records `lastUsedAt` (once a minute).
        let allowed_miss = if what == "API key" { 3 } else { 1 };
        assert!(miss <= allowed_miss, "{what}: {miss} statements on a miss");
        assert_eq!(hits, 0, "{what}: {hits} statements on 20 cached requests");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_written_by_another_process_refuses_a_cached_principal_within_a_second() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_tenant, owner) = app.tenant_with_owner("elsewhere").await;
    cache_live(&app).await;
    // Cached now.
    for _ in 0..2 {
        let out = app.gql_as(&owner, "{ me { email } }", json!({})).await;
        assert!(out["errors"].is_null(), "{out}");
    }
    assert!(!app.state.app.auth_cache.is_empty());
    // Another process (here: a connection of the test's own) disables the user.
    write_elsewhere(
        &app.db,
        "UPDATE users SET status = 'DISABLED' WHERE email = 'owner@elsewhere.example'",
    )
    .await;
    let started = Instant::now();
    loop {
        let (status, _, body) = app
            .post_raw(&json!({ "query": "{ me { email } }" }), Some(&owner))
            .await;
        if status == 401 {
            break;
        }
        assert!(body["errors"].is_null(), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a disabled user was still served from the cache after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "refused {} ms after the write",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_authenticated_websockets_cost_no_statements_and_close_at_once_on_sign_out() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_tenant, owner) = app.tenant_with_owner("idlews").await;
    let (_other, other_owner) = app.tenant_with_owner("idlews-other").await;
    cache_live(&app).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await);
    }
    // Idle for several re-check periods of the old polling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = statements(&app);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = statements(&app) - before;
    assert_eq!(idle, 0, "20 idle sockets ran {idle} statements in 3 s");

    // A change in another tenant does not make these sockets re-check.
    let before = statements(&app);
    let out = app
        .gql_as(&other_owner, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    let logout_cost = statements(&app) - before;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_other = statements(&app) - before - logout_cost;
    assert_eq!(
        after_other, 0,
        "another tenant's sign-out made these sockets run {after_other} statements"
    );

    // Signing out closes every socket of the token at once.
    let out = app
        .gql_as(&owner, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    for ws in &mut sockets {
        assert_eq!(ws_close_code(ws, 2).await, Some(4401));
    }
}

/// An event of a new execution reaches every live `executionEvents` subscriber without
/// a statement per subscriber: its first event (sequence 1) starts its history, so there
/// is no gap to read, and an owner sees every workflow, so there is none to look up.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_reaches_every_subscriber_without_a_statement_per_subscriber() {
    let app = TestApp::spawn_with(QUIET).await;
    let (_tenant, owner) = app.tenant_with_owner("fanout").await;
    cache_live(&app).await;
    let wf = crate::executions::published(
        &app,
        &owner,
        "fanout",
        json!({ "steps": [{ "id": "a", "kind": "transform", "config": { "template": "1" } }] }),
    )
    .await;
    let start = json!({ "workflowId": wf, "input": {} });
    crate::executions::start(&app, &owner, start.clone()).await;
    // What one start costs with nobody listening.
    let before = statements(&app);
    crate::executions::start(&app, &owner, start.clone()).await;
    let alone = statements(&app) - before;

    let subscribers = 20;
    let mut sockets = Vec::new();
    for _ in 0..subscribers {
        let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
        ws_send(
            &mut ws,
            json!({ "id": "e", "type": "subscribe", "payload": {
                "query": "subscription { executionEvents { executionId sequence kind } }" } }),
        )
        .await;
        // The snapshot of the two queued executions: the stream is live.
        for _ in 0..2 {
            let msg = ws_next_of_type(&mut ws, "next").await;
            assert_eq!(
                msg["payload"]["data"]["executionEvents"]["kind"], "SNAPSHOT",
                "{msg}"
            );
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = statements(&app);
    let started = crate::executions::start(&app, &owner, start).await;
    let id = started["execution"]["id"].clone();
    for ws in &mut sockets {
        let msg = ws_next_of_type(ws, "next").await;
        let ev = &msg["payload"]["data"]["executionEvents"];
        assert_eq!(ev["executionId"], id, "{msg}");
        assert_eq!(ev["sequence"], 1, "{msg}");
    }
    let with = statements(&app) - before;
    eprintln!("start alone: {alone} statements; with {subscribers} subscribers: {with}");
    assert!(
        with <= alone + 2,
        "delivering one event to {subscribers} subscribers ran {} statements beyond the start's {alone}",
        with - alone
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_answered_at_once_with_503_and_retry_after_and_a_waiting_request_is_served() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_MAX_IN_FLIGHT", "1"),
        ("AGENTPLANE_QUEUE_TIMEOUT_MS", "300"),
    ])
    .await;
    let body = json!({ "query": "{ __typename }" });
    // Every admission slot is taken (as by a long request).
    let slot = app
        .state
        .in_flight
        .clone()
        .acquire_owned()
        .await
        .expect("slot");
    let started = Instant::now();
    let (status, headers, out) = app.post_raw(&body, None).await;
    assert_eq!(status, 503, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("UNAVAILABLE"),
        "{out}"
    );
    // Health checks are not behind the line.
    let ready = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(ready.status(), 200);

    // A request that waits less than the queue timeout is served once a slot frees.
    let waiting = {
        let (http, base) = (app.http.clone(), app.base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/graphql"))
                .json(&json!({ "query": "{ __typename }" }))
                .send()
                .await
                .expect("sent")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(slot);
    assert_eq!(waiting.await.expect("joined"), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_cancelled_mid_transaction_rolls_back_and_returns_its_connection() {
    if !TestDb::is_postgres() {
        return;
    }
    use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
    let app = TestApp::spawn_with(&[("AGENTPLANE_REQUEST_TIMEOUT_SECS", "1")]).await;
    let (_tenant, owner) = app.tenant_with_owner("cancelled").await;
    let agentplane::db::DbPool::Postgres(pool) = &app.state.app.db else {
        unreachable!("PostgreSQL run");
    };
    let broken_before = pool.state().statistics.connections_closed_broken;
    // Another session holds the tenant's audit chain head: the next audited write waits
    // inside its transaction until the request times out and is dropped.
    let mut blocker = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    blocker
        .batch_execute(
            "BEGIN; SELECT 1 FROM audit_heads WHERE tenant_id = \
             (SELECT id FROM tenants WHERE slug = 'cancelled') FOR UPDATE",
        )
        .await
        .expect("lock the chain head");
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&owner)
        .json(&json!({ "query": "mutation { createTeam(input: { name: \"never\" }) { team { id } } }" }))
        .send()
        .await
        .expect("sent");
    let (status, out) = (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    );
    assert_eq!(status, 408, "{out}");
    blocker.batch_execute("COMMIT").await.expect("release");
    // The server's connection finishes its statement, rolls back and goes back to the
    // pool: not discarded, and nothing of the write is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pool.state().statistics.connections_closed_broken,
        broken_before,
        "a cancelled request's connection was discarded instead of rolled back"
    );
    let teams = app.gql_as(&owner, "{ teams { name } }", json!({})).await;
    assert!(!teams.to_string().contains("never"), "{teams}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_transaction_dropped_before_its_commit_rolls_back() {
    if !TestDb::is_postgres() {
        return;
    }
    use diesel::sql_types::Bool;
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Got {
        #[diesel(sql_type = Bool)]
        got: bool,
    }
    let app = TestApp::spawn().await;
    // A pool of its own: the server's background work would reuse the connection and
    // end the transaction by accident (running its own statements inside it).
    let db = agentplane::db::DbPool::connect(
        &agentplane::config::DatabaseUrl::parse(&app.db.url).expect("url"),
    )
    .await
    .expect("pool");
    let agentplane::db::DbPool::Postgres(pool) = &db else {
        unreachable!("PostgreSQL run");
    };
    // The engine's claim is such a transaction. Begun, a lock taken, and then the caller
    // is gone before its COMMIT was sent (cancelled, or a statement still being prepared).
    let tx = agentplane::db::conn::PipelinedTx::checkout(pool)
        .await
        .expect("checkout");
    tx.begin().await.expect("BEGIN");
    let got: Got = diesel::sql_query("SELECT pg_try_advisory_xact_lock(424242) AS got")
        .get_result(&mut tx.conn())
        .await
        .expect("lock");
    assert!(got.got);
    drop(tx);
    // The connection is back in the pool; its transaction must have ended, or it would
    // hold the lock (and whatever it wrote) for the next user of the connection.
    let mut other = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Got = diesel::sql_query("SELECT pg_try_advisory_xact_lock(424242) AS got")
            .get_result(&mut other)
            .await
            .expect("try the lock");
        if got.got {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a pipelined transaction dropped before its COMMIT is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_credential_says_whether_to_refresh_or_sign_in_again() {
    let app = TestApp::spawn().await;
    let (_tenant, owner) = app.tenant_with_owner("reasons").await;
    let reason = |body: &serde_json::Value| {
        body["errors"][0]["extensions"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let ask = |token: String| {
        let app = &app;
        async move {
            let (status, _, body) = app
                .post_raw(&json!({ "query": "{ __typename }" }), Some(&token))
                .await;
            assert_eq!(status, 401, "{body}");
            assert_eq!(
                first_error_code(&body).as_deref(),
                Some("UNAUTHENTICATED"),
                "{body}"
            );
            body
        }
    };
    // Not ours.
    let body = ask("eyJhbGciOiJFZERTQSJ9.e30.c2ln".into()).await;
    assert_eq!(reason(&body), "TOKEN_INVALID", "{body}");

    // An API key revoked.
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret apiKey { id } } }",
            json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
        )
        .await;
    let secret = key["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let out = app
        .gql_as(
            &owner,
            "mutation($i: RevokeApiKeyInput!) { revokeApiKey(input: $i) { apiKey { id } } }",
            json!({ "i": { "apiKeyId": key["data"]["createApiKey"]["apiKey"]["id"] } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let body = ask(secret).await;
    assert_eq!(reason(&body), "TOKEN_REVOKED", "{body}");

    // Expired (past the access-token lifetime and the clock leeway): refresh.
    let (other, _) = app.login("owner@reasons.example", OWNER_PASSWORD).await;
    app.clock.advance(chrono::Duration::minutes(17));
    let body = ask(other).await;
    assert_eq!(reason(&body), "TOKEN_EXPIRED", "{body}");

    // Signed out: revoked.
    let (fresh, _) = app.login("owner@reasons.example", OWNER_PASSWORD).await;
    let out = app
        .gql_as(&fresh, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    let body = ask(fresh).await;
    assert_eq!(reason(&body), "TOKEN_REVOKED", "{body}");
    drop(owner);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_mutations_ignore_a_stale_authorization_header() {
    let app = TestApp::spawn().await;
    let (_tenant, owner) = app.tenant_with_owner("stale").await;
    let (_, refresh) = app.login("owner@stale.example", OWNER_PASSWORD).await;
    let out = app
        .gql_as(&owner, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    // `owner` is now revoked: sign-in still works with it in the header…
    let (status, _, body) = app
        .post_raw(
            &json!({
                "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                "variables": { "i": { "email": "owner@stale.example", "password": OWNER_PASSWORD } }
            }),
            Some(&owner),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["login"]["accessToken"].is_string(), "{body}");
    let (status, _, body) = app
        .post_raw(
            &json!({
                "query": "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }",
                "variables": { "i": { "refreshToken": refresh } }
            }),
            Some("not-even-a-jwt"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]["refreshSession"]["accessToken"].is_string(),
        "{body}"
    );
    // …and anything else is refused with the reason.
    for query in [
        "{ me { email } }",
        "mutation { logout { ok } }",
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } } ",
    ] {
        let q = if query.contains("login") {
            // A sign-in next to another field is not a sign-in only.
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } logout { ok } }"
        } else {
            query
        };
        let (status, _, body) = app
            .post_raw(
                &json!({ "query": q, "variables": { "i": { "email": "x@y.z", "password": "p" } } }),
                Some(&owner),
            )
            .await;
        assert_eq!(status, 401, "{q}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["reason"], "TOKEN_REVOKED",
            "{body}"
        );
    }
}
