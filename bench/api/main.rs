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
//! | SQL statements per idle socket per second (the server's own counter) | the same window without sockets | 0 |
//!
//! On PostgreSQL the bench works in a fresh schema and drops it afterwards.

#[path = "../common.rs"]
mod common;
mod load;
mod seed;
mod server;
mod sql;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{env_num, percentile};
use load::{load, post_op};
use seed::{first_execution, seed_history, seed_tenant, start_executions, tenant_id};
use server::{gql, login, start_server, statements_run, subscribe};
use sql::{minimal_nested, minimal_start};

const ADMIN_EMAIL: &str = "admin@agentplane.local";
const ADMIN_PASSWORD: &str = "bench-admin-password-0123";
const OWNER_PASSWORD: &str = "bench-owner-password-0123";
const NESTED: &str = "{ workflows(first: 50) { edges { node { id name owner { email } \
                      recentExecutions(first: 10) { id status createdAt } } } } }";

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
    let db = common::BenchDb::create("bench_api").await?;
    let result = run(
        &db.url,
        db.tmp.path(),
        secs,
        concurrency,
        workflows,
        history,
        subscribers,
    )
    .await;
    db.drop_schema().await?;
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
    // The load clients only check that each answer is well-formed and without errors;
    // one answer per tenant is checked in full first.
    for (who, token) in [("small", &small.token), ("deep", &deep.token)] {
        let body = gql(&client, &base, Some(token), NESTED, json!({})).await?;
        let edges = body["data"]["workflows"]["edges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let complete = edges.iter().all(|e| {
            e["node"]["owner"]["email"].is_string()
                && e["node"]["recentExecutions"].as_array().map(Vec::len) == Some(10)
        });
        anyhow::ensure!(
            edges.len() == workflows.min(50) && complete,
            "the nested read of {who} is not the seeded answer: {body}"
        );
    }
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
    let http = reqwest::Client::new();
    let quiet0 = statements_run(&http, &server.base).await;
    tokio::time::sleep(idle_window).await;
    let quiet1 = statements_run(&http, &server.base).await;
    // Memory per subscriber, on a second server process started now on the same
    // database: the first one's heap grew under the load phases, and subscribers placed
    // in memory it had freed would look free.
    let per_sub = {
        let fresh = start_server(url, &tmp.join("server-memory.log")).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = fresh.rss_kib();
        let mut sockets = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            sockets.push(subscribe(&fresh.ws, &small.token).await?);
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let held = fresh.rss_kib();
        drop(sockets);
        (held.saturating_sub(before)) as f64 / subscribers as f64
    };
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        sockets.push(subscribe(&server.ws, &small.token).await?);
    }
    // Let every subscription finish starting (each reads what it may see once) before
    // the idle window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tx0 = statements_run(&http, &server.base).await;
    tokio::time::sleep(idle_window).await;
    let tx1 = statements_run(&http, &server.base).await;
    let received = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let snapshots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for ws in sockets {
        let received = received.clone();
        let snapshots = snapshots.clone();
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    // A subscription starts with a SNAPSHOT of each active execution (the
                    // start phase left many QUEUED): not a delivery.
                    if t.contains("SNAPSHOT") {
                        snapshots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else if t.contains("\"next\"") {
                        received.lock().map(|mut r| r.push(Instant::now())).ok();
                    }
                }
            }
        }));
    }
    // Let the readers drain what the sockets hold (the snapshots) before timing.
    let mut quiet_since = Instant::now();
    let mut last = snapshots.load(std::sync::atomic::Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while quiet_since.elapsed() < Duration::from_millis(500) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = snapshots.load(std::sync::atomic::Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let mut delivery = Vec::new();
    let events = 5;
    mark("delivery-start");
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
    mark("delivery-end");
    delivery.sort_by(f64::total_cmp);
    for r in readers {
        r.abort();
    }
    rows.push(Row {
        what: format!(
            "server memory per idle subscriber ({subscribers} held, each following the {} \
             active executions of its snapshot)",
            last / subscribers.max(1) as u64
        ),
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
        let with = b - a;
        let without = q1 - q0;
        rows.push(Row {
            what: format!("SQL statements per idle socket per second ({subscribers} sockets)"),
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

/// With `BENCH_MARKS=1`, prints a phase's wall-clock time (seconds since the epoch) to
/// stderr, to line up a profile recorded beside the bench (`perf record -k realtime`)
/// with the phase.
fn mark(label: &str) {
    if std::env::var("BENCH_MARKS").is_ok_and(|v| v == "1") {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!("mark {label} {:.6}", t.as_secs_f64());
    }
}
