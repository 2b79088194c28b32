//! Scale-out on PostgreSQL + Redis: two API replicas and a worker process behave as one.
//! Events cross processes through a Redis Stream; when Redis goes away they fall back to
//! PostgreSQL NOTIFY without losing any, `/readyz` says `redis: degraded`, and when it
//! returns they go through Redis again.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::event_streams::{assert_in_order, collect, first_live, watch};
use crate::executions::{published, worker_process_with};
use crate::helpers::{TestApp, TestDb, bin};

/// A private `redis-server` on a free loopback port, so the test can stop and restart it.
struct RedisServer {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    async fn start_on(port: u16) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        let me = Self {
            port,
            child: Some(child),
        };
        for _ in 0..100 {
            if me.xlen("ping-probe").await.is_some() {
                return me;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {port} did not answer");
    }

    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(port).await
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// `XLEN key`, or `None` when Redis does not answer.
    async fn xlen(&self, key: &str) -> Option<i64> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .ok()
    }
}

/// `agentplane serve --workers 0` on `db_url`; returns the child and its base URL.
async fn replica(db_url: &str, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["serve", "--workers", "0", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("replica starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("listen line within 30 s")
            .expect("read")
            .expect("a line");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let base = rest.split_whitespace().next().expect("url").to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, base);
        }
    }
}

async fn gql_at(base: &str, token: &str, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until `base`'s `/readyz` reports `redis` as `want` (it stays 200 either way).
async fn wait_redis(base: &str, want: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = readyz(base).await;
        assert_eq!(status, 200, "{body}");
        if body["redis"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an execution through replica B and checks a subscriber on replica A receives
/// every event of it, in order, to SUCCEEDED.
async fn run_across(a: &TestApp, b_base: &str, token: &str, wf: &str) {
    let out = gql_at(
        b_base,
        token,
        "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
        json!({ "i": { "workflowId": wf } }),
    )
    .await;
    let id = out["data"]["startExecution"]["execution"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let mut ws = watch(a, token, &id, wf).await;
    let (updated, events) = collect(&mut ws, &id, 30).await;
    assert_eq!(
        updated.last().expect("events")["status"],
        "SUCCEEDED",
        "{updated:?}"
    );
    assert_in_order(&updated, first_live(&updated));
    assert_in_order(&events, first_live(&events));
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_and_a_worker_share_events_through_redis_and_survive_its_outage() {
    if !TestDb::is_postgres() {
        // The Redis fan-out serves PostgreSQL deployments; on SQLite the stored log
        // carries events between processes.
        return;
    }
    let mut redis = RedisServer::start().await;
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let stream = format!("{prefix}:events");
    let url = redis.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let a = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("REDIS_URL", url.as_str()),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
    ])
    .await;
    let (_b, b_base) = replica(&a.db.url, &env).await;
    // A long poll interval: the worker must be woken through Redis, not find work by
    // polling.
    let mut worker_env = env.to_vec();
    worker_env.push(("AGENTPLANE_POLL_MS", "30000"));
    let mut worker = worker_process_with(&a.db.url, &worker_env).await;
    wait_redis(&a.base, "ok", 10).await;
    wait_redis(&b_base, "ok", 10).await;

    let (_, owner) = a.tenant_with_owner("scale").await;
    let wf = published(
        &a,
        &owner,
        "across",
        json!({ "steps": [
            { "id": "a", "kind": "transform", "config": { "template": "{\"v\": 1}" } },
            { "id": "b", "kind": "delay", "dependsOn": ["a"], "config": { "ms": 200 } },
            { "id": "c", "kind": "transform", "dependsOn": ["b"], "config": { "template": "{\"v\": 2}" } },
        ]}),
    )
    .await;

    // 1. Through Redis: started on B, run by the worker, watched on A.
    run_across(&a, &b_base, &owner, &wf).await;
    let carried = redis.xlen(&stream).await.expect("redis answers");
    assert!(carried >= 8, "the stream carried {carried} events");

    // 2. An API key revoked through A is refused by B within a second.
    let out = a
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }",
            json!({ "i": { "name": "svc", "roleId": "VIEWER" } }),
        )
        .await;
    let key = out["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let key_id = out["data"]["createApiKey"]["apiKey"]["id"].clone();
    let me = gql_at(&b_base, &key, "{ workflows { totalCount } }", json!({})).await;
    assert_eq!(me["data"]["workflows"]["totalCount"], 1, "{me}");
    let out = a
        .gql_as(
            &owner,
            "mutation($i: RevokeApiKeyInput!) { revokeApiKey(input: $i) { apiKey { id } } }",
            json!({ "i": { "apiKeyId": key_id } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let revoked_at = tokio::time::Instant::now();
    loop {
        let r = gql_at(&b_base, &key, "{ workflows { totalCount } }", json!({})).await;
        if crate::helpers::first_error_code(&r).as_deref() == Some("UNAUTHENTICATED") {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still accepts the revoked key: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Redis goes away: requests keep working, events go by NOTIFY, none is lost, and
    //    /readyz stays 200 saying redis is degraded.
    redis.stop().await;
    run_across(&a, &b_base, &owner, &wf).await;
    wait_redis(&a.base, "degraded", 10).await;
    wait_redis(&b_base, "degraded", 10).await;
    run_across(&a, &b_base, &owner, &wf).await;

    // 4. It comes back (empty, on the same port): everything returns to Redis by itself.
    let redis = RedisServer::start_on(redis.port).await;
    wait_redis(&a.base, "ok", 15).await;
    wait_redis(&b_base, "ok", 15).await;
    // The worker's follower reconnects too (its wake-ups come through Redis again).
    tokio::time::sleep(Duration::from_millis(500)).await;
    run_across(&a, &b_base, &owner, &wf).await;
    let carried = redis.xlen(&stream).await.expect("redis answers");
    assert!(
        carried >= 8,
        "after the outage the stream carried {carried} events"
    );
    worker.kill().await.expect("kill worker");
}

/// A rate limit is one budget across replicas: requests of one principal split across A
/// and B are counted together in Redis.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_is_one_budget_across_replicas() {
    if !TestDb::is_postgres() {
        return;
    }
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "6"),
        ("AGENTPLANE_RATE_LIMIT_BURST", "4"),
    ];
    let a = TestApp::spawn_with(&env).await;
    let (_b, b_base) = replica(&a.db.url, &env).await;
    let admin = a.admin_token().await;
    let mut allowed = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 {
            a.base.as_str()
        } else {
            b_base.as_str()
        };
        let resp = reqwest::Client::new()
            .post(format!("{base}/graphql"))
            .bearer_auth(&admin)
            .json(&json!({ "query": "{ me { email } }" }))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body: Value = resp.json().await.expect("json");
        if status == 200 {
            allowed.push(i);
        } else {
            assert_eq!(status, 429, "{body}");
            assert!(retry_after.is_some(), "429 without Retry-After");
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
                "{body}"
            );
            assert!(
                body["errors"][0]["extensions"]["retryAfterSeconds"]
                    .as_u64()
                    .is_some(),
                "{body}"
            );
        }
    }
    // A burst of 4 in all, not 4 per replica.
    assert_eq!(allowed, [0, 1, 2, 3], "allowed requests: {allowed:?}");
}

/// A tenant's request budget and its query-cost budget are shared by its principals
/// across replicas (#19 item 4/5): counted in Redis, not per process.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_budget_is_one_budget_across_replicas() {
    if !TestDb::is_postgres() {
        return;
    }
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0"),
    ];
    let a = TestApp::spawn_with(&env).await;
    let (_b, b_base) = replica(&a.db.url, &env).await;
    let admin = a.admin_token().await;
    let (tenant, owner) = a.tenant_with_owner("shared").await;
    let plan =
        "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }";
    let run = async |limits: Value| {
        let out = a
            .gql_as(
                &admin,
                plan,
                json!({ "i": { "tenantId": tenant, "plan": "PRO", "quotas": limits } }),
            )
            .await;
        assert!(out["errors"].is_null(), "{out}");
        // B hears the change through the database's notification.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut allowed = Vec::new();
        let mut limits_seen = Vec::new();
        for i in 0..8 {
            let base = if i % 2 == 0 {
                a.base.as_str()
            } else {
                b_base.as_str()
            };
            let resp = reqwest::Client::new()
                .post(format!("{base}/graphql"))
                .bearer_auth(&owner)
                .json(&json!({ "query": "{ me { id } }" }))
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            if status == 200 {
                allowed.push(i);
            } else {
                assert_eq!(status, 429, "{body}");
                limits_seen.push(body["errors"][0]["extensions"]["limit"].clone());
            }
        }
        (allowed, limits_seen)
    };
    // 12 requests a minute: a burst of 2 for the whole tenant, not 2 per replica.
    let (allowed, seen) = run(json!({ "requestsPerMinute": 12 })).await;
    assert_eq!(allowed, [0, 1], "allowed requests: {allowed:?}");
    assert!(seen.iter().all(|l| *l == "requests_per_tenant"), "{seen:?}");
    // A query-cost budget of 10 a minute: `{ me { id } }` costs 2, so 5 in all.
    let (allowed, seen) = run(json!({ "requestsPerMinute": 0, "queryCostPerMinute": 10 })).await;
    assert_eq!(allowed, [0, 1, 2, 3, 4], "allowed requests: {allowed:?}");
    assert!(
        seen.iter().all(|l| *l == "query_cost_per_tenant"),
        "{seen:?}"
    );
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rediss://` with a private CA (`AGENTPLANE_REDIS_CA_FILE`): the replica talks TLS to a
/// `redis-server` whose certificate that CA signed, and refuses one it did not.
#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_a_private_ca() {
    if !TestDb::is_postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=agentplane-test-ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    // Another CA, which signed nothing the server shows.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "1",
            "-subj",
            "/CN=someone-else",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let path = |f: &str| d.join(f).display().to_string();
    let _redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &path("srv.pem"),
            "--tls-key-file",
            &path("srv.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");
    let url = format!("rediss://127.0.0.1:{port}/0");
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let ca = path("ca.pem");
    let trusted = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("REDIS_URL", url.as_str()),
        ("AGENTPLANE_REDIS_CA_FILE", ca.as_str()),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
    ])
    .await;
    wait_redis(&trusted.base, "ok", 15).await;
    // The wrong CA: the certificate is refused, so Redis stays degraded (requests work).
    let other = path("other.pem");
    let refused = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("REDIS_URL", url.as_str()),
        ("AGENTPLANE_REDIS_CA_FILE", other.as_str()),
        ("AGENTPLANE_REDIS_KEY_PREFIX", prefix.as_str()),
    ])
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = readyz(&refused.base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"], "degraded", "{body}");
    let me = refused
        .gql_as(&refused.admin_token().await, "{ me { email } }", json!({}))
        .await;
    assert!(me["errors"].is_null(), "{me}");
}
