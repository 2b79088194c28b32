//! The API under load, run by hand against the release server:
//!
//! ```text
//! cargo bench --bench api                                              # SQLite
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench api
//! BENCH_SECS=5 BENCH_CONCURRENCY=32 BENCH_SUBSCRIBERS=5000 cargo bench --bench api
//! ```
//!
//! Starts `agentplane serve` (this build's binary, a process of its own) on a fresh
//! database, seeds it through the API (two tenants with `BENCH_WORKFLOWS` published
//! workflows and 10 executions each; the "deep" tenant also holds `BENCH_HISTORY` older
//! executions per workflow, written directly), then measures closed-loop throughput with
//! `BENCH_CONCURRENCY` clients for `BENCH_SECS` each and reports every result as a ratio
//! against a baseline measured in the same run:
//!
//! | measured | baseline | target |
//! |---|---|---|
//! | `{ __typename }` with a Bearer token | the same without a token | near 1 |
//! | nested read (workflows × owner × 10 recent executions) | the 3 statements that answer it, run from this process on the same database | ≥ 0.40 |
//! | the nested read with deep history | the same read with small history | ≥ 0.80 |
//! | `startExecution` | its SQL (execution + event insert, notify) in one transaction | — |
//! | idle RSS per subscriber | — | < 20 KiB |
//! | event delivery to every subscriber, p99 | — | < 100 ms |
//!
//! On PostgreSQL the bench works in a fresh schema and drops it afterwards.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const ADMIN_EMAIL: &str = "admin@agentplane.local";
const ADMIN_PASSWORD: &str = "bench-admin-password-0123";
const OWNER_PASSWORD: &str = "bench-owner-password-0123";
const NESTED: &str = "{ workflows(first: 50) { edges { node { id name owner { email } \
                      recentExecutions(first: 10) { id status createdAt } } } } }";

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// The server process; killed on drop.
struct Server {
    child: Child,
    base: String,
    ws: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

async fn start_server(db_url: &str, log: &std::path::Path) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_agentplane"))
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("AGENTPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env(
            "AGENTPLANE_MASTER_KEY",
            "YmVuY2gtbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=",
        )
        .env("AGENTPLANE_WORKERS", "0")
        .env("AGENTPLANE_WS_MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .env("AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_PRINCIPAL", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        ws: format!("ws://127.0.0.1:{port}/graphql/ws"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gql(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let mut req = client
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body: Value = req.send().await?.json().await?;
    anyhow::ensure!(body["errors"].is_null(), "{query}: {body}");
    Ok(body)
}

async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    pw: &str,
) -> anyhow::Result<String> {
    let body = gql(
        client,
        base,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        json!({ "i": { "email": email, "password": pw } }),
    )
    .await?;
    Ok(body["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// A seeded tenant: its owner's token and its workflows' global ids.
struct Seeded {
    token: String,
    workflows: Vec<String>,
}

async fn seed_tenant(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    slug: &str,
    workflows: usize,
) -> anyhow::Result<Seeded> {
    let created = gql(
        client,
        base,
        Some(admin),
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { setPasswordToken } }",
        json!({ "i": { "slug": slug, "name": slug, "plan": "ENTERPRISE",
                       "owner": { "email": format!("owner@{slug}.bench"), "displayName": "Owner" } } }),
    )
    .await?;
    gql(
        client,
        base,
        None,
        "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
        json!({ "i": { "token": created["data"]["createTenant"]["setPasswordToken"],
                       "password": OWNER_PASSWORD } }),
    )
    .await?;
    let token = login(client, base, &format!("owner@{slug}.bench"), OWNER_PASSWORD).await?;
    let definition = json!({ "steps": [
        { "id": "t", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } }
    ]});
    let mut ids = Vec::with_capacity(workflows);
    for i in 0..workflows {
        let wf = gql(
            client,
            base,
            Some(&token),
            "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
            json!({ "i": { "name": format!("wf-{i}"), "definition": definition } }),
        )
        .await?;
        let id = wf["data"]["createWorkflow"]["workflow"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        gql(
            client,
            base,
            Some(&token),
            "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }",
            json!({ "i": { "workflowId": id } }),
        )
        .await?;
        ids.push(id);
    }
    Ok(Seeded {
        token,
        workflows: ids,
    })
}

async fn start_executions(
    client: &reqwest::Client,
    base: &str,
    t: &Seeded,
    per_workflow: usize,
) -> anyhow::Result<()> {
    for _ in 0..per_workflow {
        for w in &t.workflows {
            gql(
                client,
                base,
                Some(&t.token),
                "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
                json!({ "i": { "workflowId": w, "input": { "n": 1 } } }),
            )
            .await?;
        }
    }
    Ok(())
}

/// Closed-loop load: `concurrency` tasks run `op` back to back for `secs`; returns
/// (operations per second, errors, sorted latencies in ms).
async fn load<F, Fut>(concurrency: usize, secs: f64, op: F) -> (f64, u64, Vec<f64>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, stop, errors) = (op.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !op().await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        all,
    )
}

fn post_op(
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    body: Value,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync {
    move || {
        let mut req = client.post(url.clone()).json(&body);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        Box::pin(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<Value>().await.is_ok_and(|v| v["errors"].is_null())
                }
                _ => false,
            }
        })
    }
}

struct Row {
    what: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: &'static str,
}

fn rate(r: f64) -> String {
    format!("{r:.0}/s")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let secs = env_num("BENCH_SECS", 3) as f64;
    let concurrency = env_num("BENCH_CONCURRENCY", 16);
    let workflows = env_num("BENCH_WORKFLOWS", 50);
    let history = env_num("BENCH_HISTORY", 500);
    let subscribers = env_num("BENCH_SUBSCRIBERS", 1000);
    let tmp = tempfile::tempdir()?;
    let (url, pg_schema) = match std::env::var("DATABASE_URL") {
        Ok(u) if u.starts_with("postgres") => {
            let schema = format!("bench_api_{}", std::process::id());
            (
                format!("{u}?options=-c%20search_path%3D{schema}"),
                Some((u, schema)),
            )
        }
        _ => (
            format!("sqlite://{}", tmp.path().join("bench.db").display()),
            None,
        ),
    };
    if let Some((base, schema)) = &pg_schema {
        exec_pg(base, &format!("CREATE SCHEMA {schema}")).await?;
    }
    let result = run(
        &url,
        tmp.path(),
        secs,
        concurrency,
        workflows,
        history,
        subscribers,
    )
    .await;
    if let Some((base, schema)) = &pg_schema {
        exec_pg(base, &format!("DROP SCHEMA {schema} CASCADE")).await?;
    }
    result
}

#[allow(clippy::too_many_lines)]
async fn run(
    url: &str,
    tmp: &std::path::Path,
    secs: f64,
    concurrency: usize,
    workflows: usize,
    history: usize,
    subscribers: usize,
) -> anyhow::Result<()> {
    let log = tmp.join("server.log");
    let server = start_server(url, &log).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = server.rss_kib();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let base = server.base.clone();
    let gql_url = format!("{base}/graphql");
    let mut rows: Vec<Row> = Vec::new();

    // Seed.
    let t = Instant::now();
    let admin = login(&client, &base, ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let small = seed_tenant(&client, &base, &admin, "small", workflows).await?;
    let deep = seed_tenant(&client, &base, &admin, "deep", workflows).await?;
    let db = agentplane::db::DbPool::connect(
        &agentplane::config::DatabaseUrl::parse(url).map_err(|e| anyhow::anyhow!(e))?,
    )
    .await?;
    // The deep tenant's history: one real execution per workflow, cloned `history`
    // times with older ids, before the 10 recent ones.
    start_executions(&client, &base, &deep, 1).await?;
    let deep_tenant = tenant_id(&db, "deep").await?;
    seed_history(&db, deep_tenant, history).await?;
    start_executions(&client, &base, &small, 10).await?;
    start_executions(&client, &base, &deep, 10).await?;
    let small_tenant = tenant_id(&db, "small").await?;
    println!(
        "seeded in {:.1} s: 2 tenants × {workflows} workflows × 10 recent executions, \
         {} older executions in the deep tenant",
        t.elapsed().as_secs_f64(),
        workflows * (history + 1)
    );

    // 1. Authentication.
    let trivial = json!({ "query": "{ __typename }" });
    let (anon, e1, _) = load(
        concurrency,
        secs,
        post_op(client.clone(), gql_url.clone(), None, trivial.clone()),
    )
    .await;
    let (authed, e2, _) = load(
        concurrency,
        secs,
        post_op(
            client.clone(),
            gql_url.clone(),
            Some(small.token.clone()),
            trivial,
        ),
    )
    .await;
    rows.push(Row {
        what: format!("{{ __typename }} with a Bearer token ({} errors)", e1 + e2),
        value: rate(authed),
        baseline: format!("{} anonymous", rate(anon)),
        ratio: Some(authed / anon),
        target: "≈ 1",
    });

    // 2. Nested reads, small and deep history, against the minimal SQL. A first deep
    // round warms what the seeding left cold (caches, WAL checkpoint, statistics), so
    // the order of the rounds does not decide the ratio.
    let nested = json!({ "query": NESTED });
    let _ = load(
        concurrency,
        secs,
        post_op(
            client.clone(),
            gql_url.clone(),
            Some(deep.token.clone()),
            nested.clone(),
        ),
    )
    .await;
    let (small_rate, e3, small_lat) = load(
        concurrency,
        secs,
        post_op(
            client.clone(),
            gql_url.clone(),
            Some(small.token.clone()),
            nested.clone(),
        ),
    )
    .await;
    let (deep_rate, e4, deep_lat) = load(
        concurrency,
        secs,
        post_op(
            client.clone(),
            gql_url.clone(),
            Some(deep.token.clone()),
            nested,
        ),
    )
    .await;
    let sql_db = Arc::new(db.clone());
    let (sql_rate, e5, _) = load(concurrency, secs, move || {
        let db = sql_db.clone();
        async move { minimal_nested(&db, small_tenant).await.is_ok() }
    })
    .await;
    let sql_db = Arc::new(db.clone());
    let (sql_deep_rate, _, _) = load(concurrency, secs, move || {
        let db = sql_db.clone();
        async move { minimal_nested(&db, deep_tenant).await.is_ok() }
    })
    .await;
    rows.push(Row {
        what: format!(
            "nested read, small history (p50 {:.1} ms, p99 {:.1} ms; {} errors)",
            percentile(&small_lat, 0.5),
            percentile(&small_lat, 0.99),
            e3 + e5
        ),
        value: rate(small_rate),
        baseline: format!("{} minimal SQL (3 statements)", rate(sql_rate)),
        ratio: Some(small_rate / sql_rate),
        target: "≥ 0.40",
    });
    rows.push(Row {
        what: format!(
            "nested read, {history} older executions per workflow (p99 {:.1} ms; {e4} errors)",
            percentile(&deep_lat, 0.99)
        ),
        value: rate(deep_rate),
        baseline: format!("{} small history", rate(small_rate)),
        ratio: Some(deep_rate / small_rate),
        target: "≥ 0.80",
    });
    rows.push(Row {
        what: "minimal SQL of the nested read, deep history".into(),
        value: rate(sql_deep_rate),
        baseline: format!("{} small history", rate(sql_rate)),
        ratio: Some(sql_deep_rate / sql_rate),
        target: "≈ 1",
    });

    // 3. startExecution against its SQL.
    let wf_ids = Arc::new(small.workflows.clone());
    let counter = Arc::new(AtomicU64::new(0));
    let (start_rate, e6, _) = {
        let (client, url, token) = (client.clone(), gql_url.clone(), small.token.clone());
        load(concurrency.min(8), secs, move || {
            let i = counter.fetch_add(1, Ordering::Relaxed) as usize;
            let body = json!({
                "query": "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
                "variables": { "i": { "workflowId": wf_ids[i % wf_ids.len()], "input": { "n": i } } }
            });
            let req = client.post(url.clone()).bearer_auth(&token).json(&body);
            async move {
                match req.send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["errors"].is_null()),
                    Err(_) => false,
                }
            }
        })
        .await
    };
    let template = Arc::new(first_execution(&db, small_tenant).await?);
    let sql_db = Arc::new(db.clone());
    let (start_sql_rate, e7, _) = load(concurrency.min(8), secs, move || {
        let (db, template) = (sql_db.clone(), template.clone());
        async move { minimal_start(&db, &template).await.is_ok() }
    })
    .await;
    rows.push(Row {
        what: format!("startExecution ({} errors)", e6 + e7),
        value: rate(start_rate),
        baseline: format!(
            "{} its SQL (insert execution + event, notify)",
            rate(start_sql_rate)
        ),
        ratio: Some(start_rate / start_sql_rate),
        target: "—",
    });

    // 4. Subscribers: memory held, idle cost and delivery.
    let idle_window = Duration::from_secs(5);
    // Background work (heartbeats, scheduler, checkpoints) without any socket.
    let quiet0 = pg_transactions(&db).await;
    tokio::time::sleep(idle_window).await;
    let quiet1 = pg_transactions(&db).await;
    let before = server.rss_kib();
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        sockets.push(subscribe(&server.ws, &small.token).await?);
    }
    // Let every subscription finish starting (each reads what it may see once) before
    // the idle window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = server.rss_kib();
    let per_sub = (held.saturating_sub(before)) as f64 / subscribers as f64;
    let tx0 = pg_transactions(&db).await;
    tokio::time::sleep(idle_window).await;
    let tx1 = pg_transactions(&db).await;
    let received = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let mut readers = Vec::new();
    for ws in sockets {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    if t.contains("\"next\"") {
                        received.lock().map(|mut r| r.push(Instant::now())).ok();
                    }
                }
            }
        }));
    }
    let mut delivery = Vec::new();
    let events = 5;
    for i in 0..events {
        received.lock().map(|mut r| r.clear()).ok();
        let sent = Instant::now();
        gql(
            &client,
            &base,
            Some(&small.token),
            "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
            json!({ "i": { "workflowId": small.workflows[i % small.workflows.len()], "input": { "n": i } } }),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.lock().map(|r| r.len()).unwrap_or(0) < subscribers
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = received.lock().map(|r| r.clone()).unwrap_or_default();
        if got.len() < subscribers {
            println!(
                "event {i}: only {} of {subscribers} subscribers received it",
                got.len()
            );
        }
        delivery.extend(got.iter().map(|t| (*t - sent).as_secs_f64() * 1000.0));
    }
    delivery.sort_by(f64::total_cmp);
    for r in readers {
        r.abort();
    }
    rows.push(Row {
        what: format!("server memory per idle subscriber ({subscribers} held)"),
        value: format!("{per_sub:.1} KiB"),
        baseline: format!("idle server {:.1} MiB", idle_rss as f64 / 1024.0),
        ratio: None,
        target: "< 20 KiB",
    });
    rows.push(Row {
        what: format!("event delivery to {subscribers} subscribers × {events} events"),
        value: format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            percentile(&delivery, 0.5),
            percentile(&delivery, 0.99)
        ),
        baseline: format!("{} deliveries", delivery.len()),
        ratio: None,
        target: "p99 < 100 ms",
    });
    if let (Some(a), Some(b), Some(q0), Some(q1)) = (tx0, tx1, quiet0, quiet1) {
        let with = (b - a) as f64;
        let without = (q1 - q0) as f64;
        rows.push(Row {
            what: format!(
                "PostgreSQL transactions per idle socket per second ({subscribers} sockets)"
            ),
            value: format!(
                "{:.4}",
                ((with - without) / idle_window.as_secs_f64() / subscribers as f64).max(0.0)
            ),
            baseline: format!(
                "{with} in {} s with sockets, {without} without",
                idle_window.as_secs()
            ),
            ratio: None,
            target: "0",
        });
    }

    println!(
        "\nbackend: {:?}; {concurrency} clients × {secs} s per measurement; release server pid {}",
        db.backend(),
        server.child.id()
    );
    println!(
        "{:<78} {:>16} {:>44} {:>7}  target",
        "measured", "value", "baseline", "ratio"
    );
    for r in &rows {
        println!(
            "{:<78} {:>16} {:>44} {:>7}  {}",
            r.what,
            r.value,
            r.baseline,
            r.ratio
                .map_or_else(|| "—".to_owned(), |x| format!("{x:.2}")),
            r.target
        );
    }
    drop(server);
    Ok(())
}

async fn tenant_id(
    db: &agentplane::db::DbPool,
    slug: &str,
) -> anyhow::Result<agentplane::tenancy::TenantId> {
    use agentplane::db::schema::tenants;
    use diesel_async::RunQueryDsl as _;
    let id: agentplane::tenancy::TenantId = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            tenants::table
                .filter(tenants::slug.eq(slug))
                .select(tenants::id)
                .first(conn)
                .await?
        }))
    })
    .await?;
    Ok(id)
}

async fn first_execution(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
) -> anyhow::Result<agentplane::executions::model::ExecutionRow> {
    use agentplane::db::schema::executions;
    use agentplane::executions::model::ExecutionRow;
    use diesel_async::RunQueryDsl as _;
    let row: ExecutionRow = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            executions::table
                .filter(executions::tenant_id.eq(tenant))
                .select(ExecutionRow::as_select())
                .first(conn)
                .await?
        }))
    })
    .await?;
    Ok(row)
}

/// Clones each of the tenant's executions `history` times with newer ids (still older
/// than anything started afterwards), as finished executions.
async fn seed_history(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
    history: usize,
) -> anyhow::Result<()> {
    use agentplane::db::schema::executions;
    use agentplane::executions::model::{ExecutionId, ExecutionRow, ExecutionStatus};
    use diesel_async::RunQueryDsl as _;
    let templates: Vec<ExecutionRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            executions::table
                .filter(executions::tenant_id.eq(tenant))
                .select(ExecutionRow::as_select())
                .load(conn)
                .await?
        }))
    })
    .await?;
    let mut rows = Vec::with_capacity(templates.len() * history);
    for k in 0..history {
        for t in &templates {
            let mut r = t.clone();
            r.id = ExecutionId::new();
            r.status = ExecutionStatus::Succeeded;
            r.idempotency_key = None;
            r.created_at = t.created_at + chrono::Duration::milliseconds(k as i64);
            rows.push(r);
        }
    }
    for chunk in rows.chunks(2000) {
        db.tx(tenant, async |conn| {
            agentplane::on_conn!(conn, |c| {
                for r in chunk {
                    diesel::insert_into(executions::table)
                        .values(r)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
        .await
        .map_err(agentplane::error::AppError::into_anyhow)?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
struct WfRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    owner_id: Option<String>,
}

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
struct UserRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    email: String,
}

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
struct ExecRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    workflow_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    created_at: chrono::NaiveDateTime,
}

/// The same answer as the nested read in the fewest statements: a page of workflows,
/// their owners, and each one's 10 newest executions (index-backed top-N).
async fn minimal_nested(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
) -> anyhow::Result<usize> {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl as _;
    let t = tenant.to_string();
    let sqlite = matches!(db, agentplane::db::DbPool::Sqlite(_));
    let wfs: Vec<WfRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel::sql_query(
                "SELECT id, name, owner_id FROM workflows WHERE tenant_id = $1 \
             ORDER BY id DESC LIMIT 51",
            )
            .bind::<Text, _>(&t)
            .load(conn)
            .await?
        }))
    })
    .await?;
    let owners = wfs
        .iter()
        .filter_map(|w| w.owner_id.as_ref())
        .map(|o| format!("'{o}'"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>();
    let users: Vec<UserRow> = if owners.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT id, email FROM users WHERE tenant_id = $1 AND id IN ({})",
            owners.join(",")
        );
        ok_db(async {
            Ok(agentplane::db_run!(db, |conn| {
                diesel::sql_query(sql.clone())
                    .bind::<Text, _>(&t)
                    .load(conn)
                    .await?
            }))
        })
        .await?
    };
    let ids: Vec<String> = wfs.iter().map(|w| format!("'{}'", w.id)).collect();
    let sql = if sqlite {
        ids.iter()
            .map(|w| {
                format!(
                    "SELECT * FROM (SELECT id, workflow_id, status, created_at FROM executions \
                     INDEXED BY executions_tenant_workflow_id_idx \
                     WHERE tenant_id = $1 AND workflow_id = {w} ORDER BY id DESC LIMIT 10)"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    } else {
        format!(
            "SELECT e.id, e.workflow_id, e.status, e.created_at FROM (VALUES ({})) AS w(id) \
             CROSS JOIN LATERAL (SELECT id, workflow_id, status, created_at FROM executions x \
             WHERE x.tenant_id = $1 AND x.workflow_id = w.id ORDER BY x.id DESC LIMIT 10) e",
            ids.join("), (")
        )
    };
    let execs: Vec<ExecRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel::sql_query(sql.clone())
                .bind::<Text, _>(&t)
                .load(conn)
                .await?
        }))
    })
    .await?;
    Ok(wfs.len() + users.len() + execs.len())
}

/// What `startExecution` must write at least: the execution and its first event, and
/// (PostgreSQL) the notification, in one transaction.
async fn minimal_start(
    db: &agentplane::db::DbPool,
    template: &agentplane::executions::model::ExecutionRow,
) -> anyhow::Result<()> {
    use agentplane::db::schema::executions;
    use diesel::sql_types::{BigInt, Text, Timestamp};
    use diesel_async::RunQueryDsl as _;
    let mut row = template.clone();
    row.id = agentplane::executions::model::ExecutionId::new();
    row.idempotency_key = None;
    let now = chrono::Utc::now().naive_utc();
    let payload = json!({ "executionId": row.id.to_string(), "seq": 1 }).to_string();
    let pg = matches!(db, agentplane::db::DbPool::Postgres(_));
    db.tx(row.tenant_id, async |conn| {
        agentplane::on_conn!(conn, |c| {
            diesel::insert_into(executions::table)
                .values(&row)
                .execute(&mut *c)
                .await?;
            diesel::sql_query(
                "INSERT INTO execution_events (id, tenant_id, execution_id, seq, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind::<Text, _>(uuid::Uuid::now_v7().to_string())
            .bind::<Text, _>(row.tenant_id.to_string())
            .bind::<Text, _>(row.id.to_string())
            .bind::<BigInt, _>(1i64)
            .bind::<Text, _>(&payload)
            .bind::<Timestamp, _>(now)
            .execute(&mut *c)
            .await?;
            if pg {
                diesel::sql_query("SELECT pg_notify('agentplane_bench', $1)")
                    .bind::<Text, _>(&payload)
                    .execute(&mut *c)
                    .await?;
            }
        });
        Ok(())
    })
    .await
    .map_err(agentplane::error::AppError::into_anyhow)
}

/// PostgreSQL's committed + rolled-back transactions in this database (None on SQLite).
async fn pg_transactions(db: &agentplane::db::DbPool) -> Option<i64> {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let agentplane::db::DbPool::Postgres(pool) = db else {
        return None;
    };
    let mut conn = pool.get().await.ok()?;
    // The statistics snapshot is per transaction: read a fresh one.
    let _ = diesel::sql_query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await;
    diesel::sql_query(
        "SELECT (xact_commit + xact_rollback)::BIGINT AS n FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .get_result::<N>(&mut *conn)
    .await
    .ok()
    .map(|r| r.n)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated graphql-transport-ws socket subscribed to the tenant's execution
/// events.
async fn subscribe(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } })
            .to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => break,
            Some(Ok(_)) => {}
            other => anyhow::bail!("no connection_ack: {other:?}"),
        }
    }
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { executionEvents { executionId sequence kind } }" } })
            .to_string(),
    ))
    .await?;
    Ok(ws)
}

/// Runs one statement on PostgreSQL through a plain diesel-async connection.
async fn exec_pg(url: &str, sql: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection as _, SimpleAsyncConnection as _};
    let mut conn = diesel_async::AsyncPgConnection::establish(url).await?;
    conn.batch_execute(sql).await?;
    Ok(())
}

/// Runs a block that uses `AppError` (the pool macros) and turns its error into anyhow.
async fn ok_db<T>(
    f: impl std::future::Future<Output = Result<T, agentplane::error::AppError>>,
) -> anyhow::Result<T> {
    f.await.map_err(agentplane::error::AppError::into_anyhow)
}
