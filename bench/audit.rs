#![recursion_limit = "256"]
//! Audit-log query latency at scale, run by hand:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench audit   # 1M records
//! BENCH_AUDIT_RECORDS=200000 cargo bench --bench audit                             # SQLite
//! ```
//!
//! Seeds one tenant's chain with `BENCH_AUDIT_RECORDS` (default 1,000,000) records, sealed
//! and linked like real ones (200 users and 20 API keys as actors, 24 actions, 0.1 %
//! CRITICAL, 2 % failures, spread over 90 days), plus a second tenant with a tenth as
//! many. Then runs each `auditLog` shape `BENCH_SAMPLES` times (default 50) through the
//! real GraphQL schema as the tenant's owner and reports p50/p95 against a baseline
//! measured in the same run: the trivial query `{ serverInfo { version } }`. On
//! PostgreSQL the bench works in a fresh schema it drops.

#[path = "common.rs"]
mod common;

use common::{env_num, exec_pg, percentile};
use std::time::Instant;

use agentplane::audit::{Entry, Origin, Outcome, Severity};
use agentplane::auth::{Actor, Principal};
use agentplane::config::{CliOverrides, Config};
use agentplane::server::AppState;
use agentplane::tenancy::model::UserId;
use chrono::{Duration, Utc};

const ACTIONS: [&str; 24] = [
    "workflow.created",
    "workflow.updated",
    "workflow.published",
    "workflow.deleted",
    "execution.started",
    "execution.cancelled",
    "execution.retried",
    "schedule.created",
    "schedule.updated",
    "secret.set",
    "secret.deleted",
    "apikey.created",
    "apikey.revoked",
    "auth.login",
    "auth.logout",
    "auth.session_refreshed",
    "auth.login_failed",
    "access.denied",
    "user.created",
    "user.role_changed",
    "team.created",
    "team.member_added",
    "tenant.settings_changed",
    "role.updated",
];

/// Deterministic pseudo-random numbers (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

async fn seed(
    db: &agentplane::db::DbPool,
    tenant: agentplane::db::ids::TenantId,
    n: usize,
    users: &[UserId],
    rng: &mut Rng,
) -> anyhow::Result<f64> {
    let keys: Vec<String> = (0..20).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let start = Utc::now() - Duration::days(90);
    let step_us = (90 * 86_400_000_000i64) / n.max(1) as i64;
    let t = Instant::now();
    let mut done = 0usize;
    while done < n {
        let m = (n - done).min(10_000);
        let entries: Vec<Entry> = (0..m)
            .map(|i| {
                let k = done + i;
                let action = ACTIONS[rng.below(ACTIONS.len())];
                let mut origin = Origin::system(tenant);
                if rng.below(10) == 0 {
                    origin.actor_type = agentplane::audit::ActorType::ApiKey;
                    origin.actor_ref = Some(format!("apikey:{}", keys[rng.below(keys.len())]));
                } else {
                    origin.actor_type = agentplane::audit::ActorType::User;
                    origin.actor_ref = Some(format!("user:{}", users[rng.below(users.len())]));
                }
                origin.ip = Some(format!("10.0.{}.{}", rng.below(256), rng.below(256)));
                origin.user_agent = Some("bench-client/1.0".into());
                origin.request_id = Some(uuid::Uuid::now_v7().to_string());
                let at = agentplane::db::ids::db_time(
                    start + Duration::microseconds(step_us * k as i64),
                );
                let resource = action.split('.').next().unwrap_or("thing");
                let mut e = Entry::change(
                    &origin,
                    action,
                    resource,
                    format!("{resource}-{}", rng.below(50_000)),
                    Some(serde_json::json!({ "name": { "before": "a", "after": "b" } })),
                    at,
                );
                if rng.below(1000) == 0 {
                    e.severity = Severity::Critical;
                }
                if rng.below(50) == 0 {
                    e.outcome = Outcome::Failure;
                    e.reason = Some("refused".into());
                }
                e
            })
            .collect();
        agentplane::audit::append_many(db, tenant, &entries)
            .await
            .map_err(agentplane::error::AppError::into_anyhow)?;
        done += m;
        if done % 100_000 == 0 {
            eprintln!("  seeded {done}/{n}");
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n = env_num("BENCH_AUDIT_RECORDS", 1_000_000);
    let samples = env_num("BENCH_SAMPLES", 50);
    let bench_db = common::BenchDb::create("bench_audit").await?;
    let url = bench_db.url.clone();
    let vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), url.clone()),
        ("AGENTPLANE_WORKERS".into(), "0".into()),
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE".into(), "0".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let config = Config::load_with(&CliOverrides::default(), &|k| {
        vars.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    agentplane::db::migrate::run_pending(&config.database_url).await?;
    let state = AppState::new(config).await?;
    let app = state.app.clone();
    let backend = format!("{:?}", app.db.backend());

    let now = agentplane::db::ids::db_time(Utc::now());
    let mut tenants = Vec::new();
    for slug in ["bench", "noise"] {
        let t = agentplane::tenancy::model::new_tenant_row(
            slug,
            slug,
            agentplane::tenancy::model::Plan::Enterprise,
            false,
            now,
        );
        app.db
            .tx("", async |c| {
                agentplane::tenancy::store::insert(c, &t).await
            })
            .await
            .map_err(agentplane::error::AppError::into_anyhow)?;
        tenants.push(t);
    }
    let users: Vec<UserId> = (0..200).map(|_| UserId::new()).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    eprintln!("seeding {n} records into the bench tenant …");
    let secs = seed(&app.db, tenants[0].id, n, &users, &mut rng).await?;
    eprintln!("seeding {} records into a second tenant …", n / 10);
    seed(&app.db, tenants[1].id, n / 10, &users, &mut rng).await?;
    if bench_db.pg.is_some() {
        exec_pg(&url, "ANALYZE").await?;
    }

    let principal = Principal {
        actor: Actor::User(users[0]),
        tenant_id: tenants[0].id,
        role: "OWNER".into(),
        permissions: agentplane::rbac::BuiltinRole::Owner.permissions(),
        platform_admin: false,
        token: None,
        allowed_ips: std::sync::Arc::new([]),
        second_factor_missing: false,
        limits: Default::default(),
    };
    let user_gid = agentplane::graphql::relay::to_global_id(
        agentplane::graphql::relay::NodeKind::User,
        users[7].0,
    );
    let day = (Utc::now() - Duration::days(45)).date_naive();
    let day_from = format!("{day}T00:00:00Z");
    let day_to = format!("{day}T23:59:59Z");
    let week_from = (Utc::now() - Duration::days(7)).to_rfc3339();
    let now_s = Utc::now().to_rfc3339();
    let run = |query: String, vars: serde_json::Value| {
        let schema = state.schema.clone();
        let p = principal.clone();
        let db = app.db.clone();
        let clock = app.clock.clone();
        async move {
            let req = async_graphql::Request::new(query)
                .variables(async_graphql::Variables::from_json(vars))
                .data(agentplane::graphql::loaders::Loaders::for_principal(
                    &db, &clock, &p,
                ))
                .data(p);
            let t = Instant::now();
            let resp = schema.execute(req).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(resp.errors.is_empty(), "{:?}", resp.errors);
            (ms, resp.data.into_json().unwrap_or_default())
        }
    };
    let page = "edges { cursor node { sequence action actorId resourceId createdAt } }";
    // The cursor 50 pages (1000 records) deep, for the keyset-page shape.
    let mut cursor = serde_json::Value::Null;
    for _ in 0..50 {
        let (_, d) = run(
            "query($a: String) { auditLog(first: 20, after: $a) { pageInfo { endCursor } } }"
                .to_owned(),
            serde_json::json!({ "a": cursor }),
        )
        .await;
        cursor = d["auditLog"]["pageInfo"]["endCursor"].clone();
    }
    let shapes: Vec<(&str, String, serde_json::Value)> = vec![
        ("baseline { serverInfo { version } }", "{ serverInfo { version } }".into(), serde_json::json!({})),
        ("newest 20", format!("{{ auditLog(first: 20) {{ {page} }} }}"), serde_json::json!({})),
        ("page 51 (keyset cursor)", format!("query($a: String) {{ auditLog(first: 20, after: $a) {{ {page} }} }}"), serde_json::json!({ "a": cursor })),
        ("actionPrefix \"workflow.\"", format!("{{ auditLog(first: 20, filter: {{actionPrefix: \"workflow.\"}}) {{ {page} }} }}"), serde_json::json!({})),
        ("actorId (one of 200 users)", format!("query($u: ID) {{ auditLog(first: 20, filter: {{actorId: $u}}) {{ {page} }} }}"), serde_json::json!({ "u": user_gid })),
        ("resourceType + resourceId", format!("{{ auditLog(first: 20, filter: {{resourceType: \"workflow\", resourceId: \"workflow-123\"}}) {{ {page} }} }}"), serde_json::json!({})),
        ("severity CRITICAL (0.1 %)", format!("{{ auditLog(first: 20, filter: {{severity: CRITICAL}}) {{ {page} }} }}"), serde_json::json!({})),
        ("outcome FAILURE (2 %)", format!("{{ auditLog(first: 20, filter: {{outcome: FAILURE}}) {{ {page} }} }}"), serde_json::json!({})),
        ("one day, 45 days ago", format!("query($f: DateTime, $t: DateTime) {{ auditLog(first: 20, filter: {{from: $f, to: $t}}) {{ {page} }} }}"), serde_json::json!({ "f": day_from, "t": day_to })),
        ("newest 20 + totalCount", format!("{{ auditLog(first: 20) {{ totalCount {page} }} }}"), serde_json::json!({})),
        ("complianceReport, last 7 days", "query($f: DateTime!, $t: DateTime!) { complianceReport(from: $f, to: $t) { totalEvents uniqueActors failedLogins } }".into(), serde_json::json!({ "f": week_from, "t": now_s })),
    ];
    println!(
        "backend: {backend}, records: {n} in the queried tenant (+{} in another), seeded at {:.0} records/s",
        n / 10,
        n as f64 / secs
    );
    println!(
        "{:<34} {:>10} {:>10} {:>12}",
        "auditLog shape", "p50 ms", "p95 ms", "p50/baseline"
    );
    let mut base = f64::NAN;
    for (name, q, vars) in shapes {
        // Report runs are audited; fewer samples keep the trail from growing much.
        let k = if name.starts_with("complianceReport") || name.contains("totalCount") {
            samples.min(10)
        } else {
            samples
        };
        let mut ms = Vec::with_capacity(k);
        run(q.clone(), vars.clone()).await; // warm-up
        for _ in 0..k {
            ms.push(run(q.clone(), vars.clone()).await.0);
        }
        ms.sort_by(f64::total_cmp);
        let p50 = percentile(&ms, 0.5);
        if base.is_nan() {
            base = p50;
        }
        println!(
            "{name:<34} {p50:>10.2} {:>10.2} {:>12.1}",
            percentile(&ms, 0.95),
            p50 / base
        );
    }
    app.shutdown.cancel();
    drop(state);
    bench_db.drop_schema().await?;
    Ok(())
}
