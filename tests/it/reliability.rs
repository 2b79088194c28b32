//! Reliability under faults: fenced leases, schedules that survive failed enqueues,
//! events across processes and without holes, database outages seen by websockets and
//! HTTP clients, truthful readiness, idempotency keys per workflow.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::executions::{
    exec_uuid, finished, published, start, step, step_status, tenant_uuid, wait_for,
};
use crate::helpers::{TestApp, TestDb, bin, first_error_code};

/// Requests seen by a slow loopback server, and how many ran at once.
#[derive(Default)]
struct Calls {
    hits: AtomicUsize,
    now: AtomicUsize,
    max: AtomicUsize,
}

/// Counts a request as running until dropped (also when the client goes away and the
/// server drops the handler).
struct Running(Arc<Calls>);

impl Running {
    fn enter(calls: &Arc<Calls>) -> Self {
        let n = calls.now.fetch_add(1, Ordering::SeqCst) + 1;
        calls.max.fetch_max(n, Ordering::SeqCst);
        Self(calls.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loopback server that holds every request for `hold` before answering 200.
async fn slow_server(hold: Duration) -> (String, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let router = axum::Router::new().fallback(move || {
        let c = c.clone();
        async move {
            c.hits.fetch_add(1, Ordering::SeqCst);
            let _running = Running::enter(&c);
            tokio::time::sleep(hold).await;
            (
                [("content-type", "application/json")],
                "{\"ok\":true}".to_owned(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), calls)
}

/// Runs one SQL statement on the test's database, behind the server's back.
async fn exec_sql(app: &TestApp, sql: &str) {
    use diesel_async::RunQueryDsl as _;
    let run = async {
        agentplane::db_run!(&app.state.app.db, |conn| {
            diesel::sql_query(sql).execute(conn).await?;
        });
        Ok::<_, anyhow::Error>(())
    };
    run.await.unwrap_or_else(|e| panic!("{sql}: {e:#}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lease_claimed_again_fences_the_stale_driver_of_the_same_process() {
    // Two claim loops in one process: when the lease lapses (here: the clock jumps past
    // it, as after a database stall or a paused process), the second loop claims the
    // execution again. The first driver must stop, and none of its writes may land.
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_EGRESS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("AGENTPLANE_WORKERS", "2"),
        ("AGENTPLANE_POLL_MS", "50"),
    ])
    .await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let (base, calls) = slow_server(Duration::from_millis(1500)).await;
    let wf = published(
        &app,
        &owner,
        "fenced",
        json!({ "steps": [
            { "id": "call", "kind": "http", "config": { "method": "GET", "url": format!("{base}/hook") } },
        ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 20, step_status("call", "RUNNING")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while calls.hits.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never called"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The 30 s lease lapses while the first attempt is in flight.
    app.clock.advance(chrono::Duration::seconds(31));
    let e = wait_for(&app, &owner, &id, 30, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["claims"], 2, "claimed twice: {e}");
    assert_eq!(step(&e, "call")["attempt"], 2, "{e}");
    assert_eq!(calls.hits.load(Ordering::SeqCst), 2, "once per claim");
    assert_eq!(
        calls.max.load(Ordering::SeqCst),
        1,
        "two attempts of the step ran at the same time"
    );
    // Once the second claim's attempt started, nothing of the first attempt was written.
    let events = agentplane::executions::store::events_after(
        &app.state.app.db,
        tenant_uuid(&tenant),
        exec_uuid(&id),
        0,
    )
    .await
    .expect("events");
    let second = events
        .iter()
        .position(|ev| ev.step_id.as_deref() == Some("call") && ev.attempt == Some(2))
        .expect("attempt 2 recorded");
    assert!(
        events[second..].iter().all(|ev| ev.attempt != Some(1)),
        "the stale driver's write landed: {events:?}"
    );
    // Renewing a lapsed lease is refused, even for the claim that held it.
    let row = agentplane::executions::store::find(
        &app.state.app.db,
        tenant_uuid(&tenant),
        exec_uuid(&id),
    )
    .await
    .expect("find")
    .expect("row");
    assert!(
        row.lease_owner.is_none(),
        "a finished execution holds no lease"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renewing_an_expired_lease_is_refused() {
    let app =
        TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "1"), ("AGENTPLANE_POLL_MS", "50")]).await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "slow",
        json!({ "steps": [ { "id": "w", "kind": "delay", "config": { "ms": 3000 } } ]}),
    )
    .await;
    let started = start(&app, &owner, json!({ "workflowId": wf })).await;
    let id = started["execution"]["id"].as_str().expect("id").to_owned();
    wait_for(&app, &owner, &id, 20, step_status("w", "RUNNING")).await;
    let db = &app.state.app.db;
    let row = agentplane::executions::store::find(db, tenant_uuid(&tenant), exec_uuid(&id))
        .await
        .expect("find")
        .expect("row");
    let claim = row.lease_owner.clone().expect("leased");
    let expires = row.lease_expires_at.expect("expiry");
    let store = agentplane::executions::store::renew;
    assert!(
        store(
            db,
            row.id,
            &claim,
            expires - chrono::Duration::seconds(1),
            expires
        )
        .await
        .expect("renew"),
        "a live lease renews"
    );
    assert!(
        !store(
            db,
            row.id,
            &claim,
            expires + chrono::Duration::seconds(1),
            expires
        )
        .await
        .expect("renew"),
        "an expired lease is never revived"
    );
    assert!(
        !store(db, row.id, "someone-else", expires, expires)
            .await
            .expect("renew"),
        "another claim cannot renew it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_tick_whose_enqueue_fails_stays_due_and_fires_exactly_once() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_SCHEDULER_TICK_MS", "20")]).await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let wf = published(
        &app,
        &owner,
        "cron",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{\"at\": \"tick\"}" } } ]}),
    )
    .await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { schedule { id nextRunAt } } }",
            json!({ "i": { "workflowId": wf, "cron": "*/5 * * * *", "timezone": "UTC" } }),
        )
        .await;
    let due = out["data"]["createSchedule"]["schedule"]["nextRunAt"].clone();
    assert!(due.is_string(), "{out}");
    let schedule = || async {
        let out = app
            .gql_as(
                &owner,
                "query($w: ID!) { workflow(id: $w) { schedules { nextRunAt lastError lastExecutionId } } executions(filter: { workflowId: $w }) { totalCount } }",
                json!({ "w": wf }),
            )
            .await;
        (
            out["data"]["workflow"]["schedules"][0].clone(),
            out["data"]["executions"]["totalCount"]
                .as_i64()
                .unwrap_or_else(|| panic!("{out}")),
        )
    };
    // Every enqueue fails (as when the database fails between the two writes, or the
    // process dies): the tick must stay due rather than be lost.
    let inject = if TestDb::is_postgres() {
        vec![
            "CREATE FUNCTION inject_enqueue_failure() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected enqueue failure'; END $$",
            "CREATE TRIGGER inject_enqueue_failure BEFORE INSERT ON executions \
             FOR EACH ROW EXECUTE FUNCTION inject_enqueue_failure()",
        ]
    } else {
        vec![
            "CREATE TRIGGER inject_enqueue_failure BEFORE INSERT ON executions \
             BEGIN SELECT RAISE(ABORT, 'injected enqueue failure'); END",
        ]
    };
    for sql in inject {
        exec_sql(&app, sql).await;
    }
    app.clock.advance(chrono::Duration::minutes(5));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, count) = schedule().await;
    assert_eq!(count, 0);
    assert_eq!(s["nextRunAt"], due, "the failed tick stays due: {s}");
    exec_sql(
        &app,
        if TestDb::is_postgres() {
            "DROP TRIGGER inject_enqueue_failure ON executions"
        } else {
            "DROP TRIGGER inject_enqueue_failure"
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, count) = schedule().await;
        if count == 1 && s["nextRunAt"] != due {
            assert!(s["lastError"].is_null(), "{s}");
            assert!(s["lastExecutionId"].is_string(), "{s}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tick never fired: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(schedule().await.1, 1, "the tick fired exactly once");

    // A final refusal (monthly quota used up) is recorded and the schedule moves on.
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": tenant, "plan": "CUSTOM", "quotas": { "maxExecutionsPerMonth": 1 } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let (before, _) = schedule().await;
    app.clock.advance(chrono::Duration::minutes(5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        let (s, _) = schedule().await;
        if s["nextRunAt"] != before["nextRunAt"] {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused tick never recorded: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("executions per month")),
        "{s}"
    );
    assert_eq!(schedule().await.1, 1);
    let out = app
        .gql_as(
            &owner,
            "{ auditLog(filter: { actionPrefix: \"schedule.tick_failed\" }) { edges { node { action outcome reason } } } }",
            json!({}),
        )
        .await;
    let edges = out["data"]["auditLog"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{out}");
    assert_eq!(edges[0]["node"]["outcome"], "FAILURE");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_belongs_to_one_workflow() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let def =
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ]});
    let a = published(&app, &owner, "a", def.clone()).await;
    let b = published(&app, &owner, "b", def).await;
    let first = start(
        &app,
        &owner,
        json!({ "workflowId": a, "idempotencyKey": "order-1" }),
    )
    .await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: StartExecutionInput!) { startExecution(input: $i) { deduplicated execution { id } } }",
            json!({ "i": { "workflowId": b, "idempotencyKey": "order-1" } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("CONFLICT"), "{out}");
    assert_eq!(out["errors"][0]["extensions"]["field"], "idempotencyKey");
    let again = start(
        &app,
        &owner,
        json!({ "workflowId": a, "idempotencyKey": "order-1" }),
    )
    .await;
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["execution"]["id"], first["execution"]["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_migrate_check_refuse_a_database_newer_than_the_binary() {
    let app = TestApp::spawn().await;
    let ready = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    exec_sql(
        &app,
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000099')",
    )
    .await;
    let ready = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("newer than this binary") && r.contains("29991231000099")),
        "{body}"
    );
    let out = tokio::process::Command::new(bin())
        .args(["migrate", "--check"])
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("migrate --check runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("newer than this binary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_a_full_disk_refuses_sqlite_writes() {
    if TestDb::is_postgres() {
        return; // a property of the embedded file; PostgreSQL reports its own disk
    }
    // A small filesystem of our own (tests run as root, as CI does).
    let dir = tempfile::tempdir().expect("dir");
    let mnt = dir.path().to_str().expect("path").to_owned();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs", &mnt])
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a tmpfs needs root (CI runs as root)");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-l", &self.0])
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let db_path = format!("{mnt}/agentplane.db");
    let url = format!("sqlite://{db_path}");
    let mut server = crate::helpers::ServerProcess::start(&[
        ("DATABASE_URL", url.as_str()),
        ("AGENTPLANE_WORKERS", "0"),
    ])
    .await;
    let ready = || async {
        let r = reqwest::get(format!("{}/readyz", server.base))
            .await
            .expect("readyz");
        let status = r.status();
        (status, r.json::<Value>().await.expect("json"))
    };
    assert_eq!(ready().await.0, 200);
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{}/graphql", server.base))
        .json(&json!({ "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                       "variables": { "i": { "email": crate::helpers::ADMIN_EMAIL, "password": crate::helpers::ADMIN_PASSWORD } } }))
        .send()
        .await
        .expect("login")
        .json::<Value>()
        .await
        .expect("json");
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    // Fill the disk.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={mnt}/filler"), "bs=64k"])
        .stderr(std::process::Stdio::null())
        .status();
    // A write through the API says what happened and when to retry. (A write that fits
    // in WAL space already on disk still succeeds: the background checkpoint lets the
    // WAL start over without growing. Grow it until one is refused.)
    let mut refused = None;
    for n in 0..50 {
        let resp = http
            .post(format!("{}/graphql", server.base))
            .bearer_auth(&token)
            .json(&json!({ "query": "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } } }",
                           "variables": { "i": { "slug": format!("full-{n}"), "name": "Full", "plan": "FREE",
                                                 "owner": { "email": format!("o{n}@full.example"), "displayName": "O" } } } }))
            .send()
            .await
            .expect("createTenant");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        if body["errors"].is_array() {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("every write succeeded on a full disk");
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("UNAVAILABLE"),
        "{body}"
    );
    assert_eq!(status, 503, "{body}");
    // Once writes fail, readiness must say so.
    let mut refused = None;
    for _ in 0..50 {
        let (status, body) = ready().await;
        if status == 503 {
            refused = Some(body);
            break;
        }
        // Each probe writes a page.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = refused.expect("readiness still 200 on a full disk");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("takes no writes")),
        "{body}"
    );

    // Space comes back: ready again.
    std::fs::remove_file(format!("{mnt}/filler")).expect("rm filler");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ready().await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.child.kill().await.expect("kill");
}
